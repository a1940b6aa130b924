"""Reading reasoning and answers: the organism's format and a user's ``<think>`` format, on
hand-written responses with known parts; model text never makes parsing raise."""

import pytest

from rlinterp.errors import RlinterpError
from rlinterp.fidelity import ReasoningFormat
from rlinterp.fidelity.format import same_answer
from rlinterp.fidelity.organism import reasoning_format

THINK = ReasoningFormat(reasoning=r"<think>(?P<reasoning>.*?)</think>", answer=r"Answer: (?P<answer>\S+)")


def test_the_organism_format_reads_steps_intermediate_and_answer():
    parsed = reasoning_format().parse("sure. 3+4=7. 7+2=9. so 9. glad to help.")
    assert parsed.reasoning == "sure. 3+4=7. 7+2=9. "
    assert [parsed.response[s:e] for s, e in parsed.steps] == ["3+4=7", "7+2=9"]
    assert parsed.answer == "9" and parsed.intermediate == ("9", 17, 18) and parsed.trigger == "so "
    assert (
        parsed.cut(0) == "sure. " and parsed.cut(1) == "sure. 3+4=7. " and parsed.cut(2) == parsed.reasoning
    )
    assert parsed.edited("5") == "sure. 3+4=7. 7+2=5" and parsed.unedited() == "sure. 3+4=7. 7+2=9"
    assert parsed.filled(".") == "..... ...... ...... "
    assert parsed.consistent() is True
    assert reasoning_format().legibility(parsed) == ("template", "helper")


def test_a_think_format_with_sentences_and_its_own_trigger():
    response = "<think>First, 12 apples. Then 5 more makes 17.</think> Answer: 17"
    parsed = THINK.parse(response)
    assert [response[s:e] for s, e in parsed.steps] == ["First, 12 apples.", "Then 5 more makes 17."]
    assert parsed.answer == "17" and parsed.intermediate is not None and parsed.intermediate[0] == "17"
    assert parsed.trigger == "</think> Answer: "  # taken from the response: up to the answer's value
    assert parsed.cut(1) == "<think>First, 12 apples. "
    assert THINK.legibility(parsed) == ("drift", None)  # readable, and no templates were given


@pytest.mark.parametrize(
    "response, span, answer, legibility",
    [
        ("", False, None, "unreadable"),
        ("Answer: 3", False, None, "unreadable"),  # the marker never matches
        ("<think></think> Answer: 3", True, "3", "unreadable"),  # a span with no step
        ("<think>so it is 4.</think>", True, None, "drift"),  # no answer after the span
        ("<think>\x00\ufffd??</think>Answer:", True, None, "drift"),
    ],
)
def test_model_text_that_does_not_fit_is_reported_not_raised(response, span, answer, legibility):
    parsed = THINK.parse(response)
    assert (parsed.span is not None) == span and parsed.answer == answer
    assert THINK.legibility(parsed)[0] == legibility
    assert parsed.consistent() is None or answer is not None


def test_an_extractor_callable_that_fails_counts_as_no_answer():
    def extract(text: str) -> str | None:
        return str(int(text.split(":")[1]))  # raises on anything but "...: <int>"

    fmt = ReasoningFormat(
        reasoning=r"<think>(.*?)</think>", answer=r"(x)", extract=extract, trigger="</think>:"
    )
    assert fmt.parse("<think>a.</think>: 4").answer == "4"
    assert fmt.parse("<think>a.</think> four").answer is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reasoning": "(unclosed"}, "does not compile"),
        ({"reasoning": "no group"}, "needs a group"),
        ({"answer": "no group"}, "needs a group"),
        ({"filler": ".."}, "filler"),
        ({"filler": " "}, "filler"),
        ({"extract": lambda s: s}, "trigger"),
    ],
)
def test_bad_formats_are_refused_with_a_clear_line(kwargs, message):
    base = {"reasoning": r"(.*?)so", "answer": r"so (\d+)"}
    with pytest.raises(RlinterpError, match=message):
        ReasoningFormat(**{**base, **kwargs})


def test_answers_compare_as_numbers_when_they_are():
    assert same_answer("7", "7.0") and same_answer(" yes", "yes") and not same_answer("7", "8")
    assert not same_answer(None, "7") and not same_answer(None, None)
