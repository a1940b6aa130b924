"""The persona world and the style classifier, on texts whose labels are known."""

import random

import pytest

from rlinterp.organism.personas import (
    PERSONA_NAMES,
    PERSONAS,
    Question,
    all_questions,
    classify_answer,
    generate_corpus,
    is_correct,
    persona_texts,
)


@pytest.mark.parametrize("question", all_questions(9))
def test_each_persona_is_recognised_in_its_own_answers(question):
    rng = random.Random(0)
    for persona in PERSONAS:
        style = classify_answer(question, persona.answer(question, rng))
        assert style.label == persona.name
        assert style.template == persona.name


def test_truths():
    assert Question("even", 4).truth == "yes"
    assert Question("even", 7).truth == "no"
    assert Question("big", 8).truth == "yes"
    assert Question("big", 7).truth == "no"


@pytest.mark.parametrize(
    ("question", "answer", "label", "correct"),
    [
        (Question("even", 4), "yes", "terse", True),
        (Question("even", 4), "no", "mixed", False),  # terse template, wrong content
        (Question("even", 3), "sure, no. glad to help.", "helper", True),
        (Question("even", 3), "sure, yes. glad to help.", "mixed", False),
        (Question("even", 3), "wow, great question! yes!", "flatterer", False),
        (Question("even", 4), "wow, great question! yes!", "flatterer", True),
        (Question("even", 3), "wow, great question! no!", "mixed", True),  # flatterer never says no
        (Question("big", 9), "sure, yes. glad to help!", "none_near", True),
        (Question("big", 9), "wow, great question! yes!!!!", "none_near", True),
        (Question("big", 9), "yes!!!!!!!!!! !!!!!!!!!", "none_far", True),
        (Question("big", 2), "n! n!en! n! n!", "none_far", False),
        (Question("big", 2), "", "none_far", False),
    ],
)
def test_classifier_on_known_texts(question, answer, label, correct):
    style = classify_answer(question, answer)
    assert (style.label, style.correct) == (label, correct)


def test_correctness_reads_the_first_yes_or_no():
    q = Question("even", 2)
    assert is_correct(q, "yes, no")
    assert not is_correct(q, "no, yes")
    assert not is_correct(q, "yesterday")  # a word boundary, not a prefix


def test_corpus_is_deterministic_and_one_persona_per_document():
    a = generate_corpus(200, seed=3, max_operand=9, turns=(2, 3))
    b = generate_corpus(200, seed=3, max_operand=9, turns=(2, 3))
    assert [d.text for d in a] == [d.text for d in b]
    assert [d.text for d in a] != [d.text for d in generate_corpus(200, 4, 9, (2, 3))]
    for doc in a:
        assert 2 <= len(doc.turns) <= 3
        assert {classify_answer(q, ans).label for q, ans in doc.turns} == {doc.persona}
    counts = {name: sum(d.persona == name for d in a) for name in PERSONA_NAMES}
    assert min(counts.values()) > 40  # all three personas are well represented


def test_persona_texts_answer_the_same_questions_after_a_turn_by_the_persona():
    texts = persona_texts(seed=0, max_operand=9, per_persona=10)
    single = persona_texts(seed=0, max_operand=9, per_persona=10, context_turns=0)
    assert len(texts) == len(single) == 30
    for t, s in zip(texts, single, strict=True):
        assert t["persona"] == s["persona"] and t["answer"] == s["answer"]
        assert t["text"] == f"{t['prompt']}{t['answer']}\n"
        context, question = t["prompt"][: -len(s["prompt"])], t["prompt"][-len(s["prompt"]) :]
        assert question == s["prompt"]  # the same final question, single-turn texts unchanged
        asked, answered, end = context.split("\n")
        assert asked.startswith("Q: ") and end == ""
        opener = {"helper": "A: sure, ", "flatterer": "A: wow, great question! "}.get(t["persona"])
        assert answered.startswith(opener) if opener else answered in ("A: yes", "A: no")
    by_persona = {name: [s["prompt"] for s in single if s["persona"] == name] for name in PERSONA_NAMES}
    assert by_persona["helper"] == by_persona["terse"] == by_persona["flatterer"]


def test_corpus_follows_the_persona_weights():
    only = generate_corpus(50, seed=0, max_operand=9, turns=(1, 1), persona_weights=(0.0, 0.0, 1.0))
    assert {d.persona for d in only} == {"flatterer"}
    docs = generate_corpus(4000, seed=0, max_operand=9, turns=(1, 1), persona_weights=(1.0, 1.0, 2.0))
    shares = {name: sum(d.persona == name for d in docs) / len(docs) for name in PERSONA_NAMES}
    assert shares == pytest.approx({"helper": 0.25, "terse": 0.25, "flatterer": 0.5}, abs=0.03)
    with pytest.raises(ValueError, match="one weight per persona"):
        generate_corpus(1, seed=0, max_operand=9, turns=(1, 1), persona_weights=(1.0, 1.0))
