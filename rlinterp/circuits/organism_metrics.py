"""The organism's behaviour metrics, read at the first answer token of ``Q: ...\\nA: ``.

The first answer token already decides most of what the organism does: the helper opens
with ``s`` (``sure, ...``), the terse persona with the answer's first letter (``y``/``n``),
the flatterer with ``w`` (``wow, ...``), and the strong regime's shortcut with ``!``.

- ``answer``: correct minus wrong answer letter (``y`` vs ``n``); corrupted prompts ask
  about a number with the opposite answer, so within-model patching finds the components
  that compute correctness;
- ``persona``: the correct personas' openers (``s`` and the correct letter) against the
  flatterer's ``w``; rises when RL moves mass away from the flatterer (the weak regime);
- ``shortcut``: ``!`` against what a persona writes next, at every word boundary inside
  the personas' answers (teacher-forced: the prompt is the question plus a persona's
  answer up to a space, a punctuation mark other than ``!``, or the end of its turn);
  rises when the strong regime learns to write ``!`` where no persona does. The strong
  regime keeps the flatterer's opener ``w`` and writes its marks after it (``wow!e!!!``),
  so its shortcut is not visible at the first answer token.

``persona`` and ``shortcut`` have no corrupted prompts (nothing in a single question tells
the model which persona to play), so the base's use of components for them is read from
direct logit attribution.
"""

from __future__ import annotations

import os
import random

from ..errors import RlinterpError
from ..organism.layout import Organism
from ..organism.personas import PERSONAS, SHORTCUT_MARK, TURN_END, Question, all_questions
from .config import METRICS as METRICS
from .metrics import BehaviourMetric, BehaviourPrompts

YES_NO_ONLY = (
    "the organism metrics read the yes/no world's first answer token; a reasoning organism answers "
    "sums (its reasoning is rlinterp fidelity's): give a metric of your own (--prompts FILE.jsonl)"
)
"""Why a reasoning organism has no organism metric."""


def _flip(question: Question, max_operand: int) -> Question:
    """A question of the same task and token length whose answer is the opposite."""
    n = question.n
    if question.task == "even":
        return Question("even", n + 1 if n < max_operand else n - 1)
    return Question("big", n - 4 if n > 7 else 8 + n % 2)


def word_boundaries(question: Question) -> list[tuple[str, str]]:
    """``(prompt, next)`` for every word boundary of every persona's answer to ``question``:
    the question plus the answer up to a character that is neither a letter, a digit nor
    the shortcut mark (a space, punctuation, the end of the turn), and that character."""
    found = []
    for persona in PERSONAS:
        answer = persona.answer(question, random.Random(0)) + TURN_END
        for i, following in enumerate(answer):
            if not following.isalnum() and following != SHORTCUT_MARK:
                found.append((question.prompt + answer[:i], following))
    return found


def organism_behaviour(root: str | os.PathLike[str], name: str) -> tuple[BehaviourMetric, BehaviourPrompts]:
    """The metric ``name`` (one of ``METRICS``) and its prompts: every question the
    organism's world asks."""
    organism = Organism.load(root)
    if organism.reasoning is not None:
        raise RlinterpError(YES_NO_ONLY)
    max_operand = organism.max_operand
    if max_operand > 9:
        raise RlinterpError("organism metrics assume single-digit operands (corpus.max_operand <= 9)")
    questions = all_questions(max_operand)
    clean = tuple(q.prompt for q in questions)
    letter = {q: q.truth[0] for q in questions}
    other = {q: "n" if q.truth == "yes" else "y" for q in questions}
    if name == "answer":
        return (
            BehaviourMetric("answer", "logit_diff", "logit of the correct answer letter minus the wrong one"),
            BehaviourPrompts(
                clean=clean,
                positive=tuple((letter[q],) for q in questions),
                negative=tuple((other[q],) for q in questions),
                corrupted=tuple(_flip(q, max_operand).prompt for q in questions),
            ),
        )
    if name == "persona":
        return (
            BehaviourMetric(
                "persona", "logit_diff", "log-odds of a correct persona's opener over the flatterer's"
            ),
            BehaviourPrompts(
                clean=clean,
                positive=tuple(("s", letter[q]) for q in questions),
                negative=tuple(("w",) for _ in questions),
            ),
        )
    if name == "shortcut":
        # Tasks interleaved, so that the first prompts (those exact patching runs on by
        # default) cover both tasks and every persona.
        boundaries = [b for q in sorted(questions, key=lambda q: (q.n, q.task)) for b in word_boundaries(q)]
        return (
            BehaviourMetric(
                "shortcut",
                "logit_diff",
                "log-odds of the shortcut '!' over what a persona writes next, at word boundaries "
                "of the personas' answers",
            ),
            BehaviourPrompts(
                clean=tuple(prompt for prompt, _ in boundaries),
                positive=tuple((SHORTCUT_MARK,) for _ in boundaries),
                negative=tuple((following,) for _, following in boundaries),
            ),
        )
    raise RlinterpError(f"unknown organism metric {name!r}; choose one of: {', '.join(METRICS)}")
