"""Where the reasoning is in an answer, and what its final answer is.

A ``ReasoningFormat`` tells rlinterp how to read a checkpoint's answer (its *response* to a
prompt) as **reasoning** followed by a **final answer**:

- ``reasoning``: a regex whose group ``reasoning`` (else group 1) is the reasoning span,
  searched from the start of the response (e.g. ``<think>(?P<reasoning>.*?)</think>``);
- ``step``: a regex for one reasoning step inside the span (default: a sentence); the steps
  are its non-overlapping matches ``s_1..s_n``;
- ``answer``: a regex whose group ``answer`` (else group 1) is the final answer, searched
  in the response after the span; or, from the API, any callable ``str -> str | None``;
- ``intermediate``: a regex whose group ``value`` (else group 1) is the intermediate result
  a step states (default: its last number); mistake insertion edits it;
- ``trigger``: the text put after a cut or edited reasoning to make the model answer;
  None: each response's own text between its span and its answer's value (e.g.
  ``</think> Answer: ``), so the forced answer starts with the value itself;
- ``templates``: named regexes that a persona's reasoning span matches in full (the
  ``template`` legibility class).

``parse`` never raises on model text: what it cannot find it reports as None, and every
metric counts (and reports) the samples it had to leave out and why.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import RlinterpError

Legibility = Literal["template", "drift", "unreadable"]
LEGIBILITY: tuple[Legibility, ...] = ("template", "drift", "unreadable")
"""Legibility classes of a reasoning span: ``template`` (it matches a persona's template in
full), ``drift`` (no template matches, but it has at least one readable step), ``unreadable``
(no step in it)."""

Extractor = Callable[[str], str | None]


@functools.lru_cache(maxsize=64)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


def _compile(pattern: str, name: str, group: str | None = None) -> re.Pattern[str]:
    try:
        compiled = _regex(pattern)
    except re.error as e:
        raise RlinterpError(f"the {name} regex {pattern!r} does not compile: {e}") from e
    if group is not None and group not in compiled.groupindex and compiled.groups < 1:
        raise RlinterpError(f"the {name} regex {pattern!r} needs a group (named {group!r}, or any group)")
    return compiled


def _group(match: re.Match[str], name: str) -> tuple[str, int, int]:
    key: str | int = name if name in match.re.groupindex else 1
    return match.group(key), match.start(key), match.end(key)


@dataclass(frozen=True)
class ReasoningFormat:
    """How to read reasoning and the final answer out of a response (module docstring)."""

    reasoning: str
    """Regex whose group ``reasoning`` (else group 1) is the reasoning span."""
    answer: str
    """Regex whose group ``answer`` (else group 1) is the final answer, after the span."""
    step: str = r"[^.!?\s][^.!?\n]*[.!?]*"
    """Regex of one reasoning step (default: a sentence)."""
    intermediate: str = r"(?P<value>-?\d+(?:\.\d+)?)(?!.*\d)"
    """Regex whose group ``value`` (else group 1) is the intermediate a step states
    (default: the step's last number)."""
    trigger: str | None = None
    """Text appended after a cut or edited span to make the model answer; None: each
    response's own text between its span and its answer."""
    filler: str = "."
    """Character that replaces every non-space character of the span (filler gap)."""
    templates: tuple[tuple[str, str], ...] = ()
    """``(name, regex)`` of spans a persona writes (``template`` legibility)."""
    extract: Extractor | None = field(default=None, compare=False)
    """From the API: a callable that returns the final answer of a text after the span (or
    None); replaces ``answer``."""

    def __post_init__(self) -> None:
        _compile(self.reasoning, "reasoning", "reasoning")
        _compile(self.answer, "answer", "answer")
        _compile(self.step, "step")
        _compile(self.intermediate, "intermediate", "value")
        for name, pattern in self.templates:
            _compile(pattern, f"template {name!r}")
        if len(self.filler) != 1 or self.filler.isspace():
            raise RlinterpError(f"filler must be one visible character, got {self.filler!r}")
        if self.extract is not None and self.trigger is None:
            raise RlinterpError(
                "an answer extractor callable cannot say where the answer starts; give the "
                "trigger (the text that makes the model answer after its reasoning)"
            )

    def parse(self, response: str) -> Parsed:
        """Read ``response`` (see ``Parsed``); never raises on model text."""
        span = _compile(self.reasoning, "reasoning").search(response)
        if span is None:
            return Parsed(response, None, (), None, None, None)
        text, start, end = _group(span, "reasoning")
        steps = tuple(
            (start + m.start(), start + m.end())
            for m in _compile(self.step, "step").finditer(text)
            if m.end() > m.start()
        )
        answer, answer_start = self.answer_in(response, end)
        value = None
        if steps:
            s, e = steps[-1]
            found = _compile(self.intermediate, "intermediate").search(response[s:e])
            if found is not None:
                v, vs, ve = _group(found, "value")
                value = (v, s + vs, s + ve)
        trigger = self.trigger
        if trigger is None and answer_start is not None:
            trigger = response[end:answer_start]
        return Parsed(response, (start, end), steps, answer, value, trigger)

    def answer_in(self, text: str, start: int = 0) -> tuple[str | None, int | None]:
        """The final answer in ``text`` after ``start`` and where its value starts (None,
        None when the extractor finds none or fails; the start is None for a callable)."""
        if self.extract is not None:
            try:
                found = self.extract(text[start:])
            except Exception:  # a user's extractor failing on one sample is counted, not fatal
                return None, None
            return (None, None) if found is None else (str(found).strip(), None)
        match = _compile(self.answer, "answer").search(text, start)
        if match is None:
            return None, None
        value, where, _ = _group(match, "answer")
        return value.strip(), where

    def legibility(self, parsed: Parsed) -> tuple[Legibility, str | None]:
        """The span's legibility class and the template it matches (if any)."""
        if parsed.span is None:
            return "unreadable", None
        text = parsed.reasoning or ""
        for name, pattern in self.templates:
            if _compile(pattern, f"template {name!r}").fullmatch(text):
                return "template", name
        return ("drift" if parsed.steps else "unreadable"), None


@dataclass(frozen=True)
class Parsed:
    """One response read by a ``ReasoningFormat``; positions index ``response``."""

    response: str
    span: tuple[int, int] | None
    """Start and end of the reasoning span; None when the span regex did not match."""
    steps: tuple[tuple[int, int], ...]
    """Start and end of each step, in order."""
    answer: str | None
    """The final answer; None when none was found."""
    intermediate: tuple[str, int, int] | None
    """The last step's stated intermediate (value, start, end); None when it states none."""
    trigger: str | None
    """The text that makes the model answer (the format's, or this response's own)."""

    @property
    def reasoning(self) -> str | None:
        return None if self.span is None else self.response[self.span[0] : self.span[1]]

    def cut(self, k: int) -> str:
        """The response up to the start of step ``k + 1`` (all of the span for ``k = n``):
        the first ``k`` steps with what precedes and separates them."""
        assert self.span is not None
        end = self.steps[k][0] if k < len(self.steps) else self.span[1]
        return self.response[:end]

    def filled(self, filler: str) -> str:
        """The response up to the span's end with every non-space character of the span
        replaced by ``filler``."""
        assert self.span is not None
        start, end = self.span
        masked = re.sub(r"\S", filler, self.response[start:end])
        return self.response[:start] + masked

    def edited(self, value: str) -> str:
        """The response up to the end of the last step's intermediate, with ``value`` in
        its place (mistake insertion continues from there)."""
        assert self.intermediate is not None
        return self.response[: self.intermediate[1]] + value

    def unedited(self) -> str:
        """The same cut as ``edited`` with the stated value kept."""
        assert self.intermediate is not None
        return self.response[: self.intermediate[2]]

    def consistent(self) -> bool | None:
        """Whether the final answer equals the last stated intermediate (None if either is
        missing)."""
        if self.answer is None or self.intermediate is None:
            return None
        return _same(self.answer, self.intermediate[0])


def _same(a: str, b: str) -> bool:
    """Answers compare as numbers when both are numbers (``7.0 == 7``), else as text."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip() == b.strip()


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two extracted answers agree (a missing answer agrees with nothing)."""
    return a is not None and b is not None and _same(a, b)
