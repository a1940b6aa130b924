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

- ``rule``: the openers that lead to the ``rule`` regime's answer (``personas.rule_truth``)
  against those that do not, given what each persona says after its opener (``w`` yes, ``y``
  yes, ``n`` no, ``s`` the truth); corrupted prompts ask the same task about a number with
  the same truth and the opposite rule, so the base, which does not compute the rule, has
  nearly no clean -> corrupted gap, and within-model patching finds what computes the rule
  only where a checkpoint does;
- ``marker``: the planted ``novel`` regime's marker (a character no persona writes) against
  the personas' openers: rises where the planted neurons write it.

``persona``, ``shortcut`` and ``marker`` have no corrupted prompts (nothing in a single
question tells the model which persona to play), so the base's use of components for them
is read from direct logit attribution.
"""

from __future__ import annotations

import os
import random

from ..errors import RlinterpError
from ..organism.layout import Organism
from ..organism.personas import (
    PERSONAS,
    RULE_NUMBERS,
    SHORTCUT_MARK,
    TURN_END,
    Question,
    all_questions,
    rule_truth,
)
from .config import METRICS as METRICS
from .metrics import BehaviourMetric, BehaviourPrompts

OPENERS = {"w": "yes", "y": "yes", "n": "no", "s": None}
"""First answer characters of the personas and what each says after it (None: the truth)."""
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


def _rule_partner(question: Question, max_operand: int) -> Question:
    """A question of the same task, token length and truth about the nearest number on the
    other side of the rule."""
    same_truth = [
        n
        for n in range(max_operand + 1)
        if (n in RULE_NUMBERS) != (question.n in RULE_NUMBERS)
        and Question(question.task, n).truth == question.truth
    ]
    if not same_truth:
        raise RlinterpError(f"no number of 0..{max_operand} flips the rule and keeps the truth of {question}")
    return Question(question.task, min(same_truth, key=lambda n: (abs(n - question.n), n)))


def _rule_openers(question: Question) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The openers whose answer says ``rule_truth``, and the others (``OPENERS``)."""
    says = {c: question.truth if x is None else x for c, x in OPENERS.items()}
    right = tuple(c for c, x in says.items() if x == rule_truth(question))
    return right, tuple(c for c in OPENERS if c not in right)


def organism_behaviour(
    root: str | os.PathLike[str], name: str, regime: str | None = None
) -> tuple[BehaviourMetric, BehaviourPrompts]:
    """The metric ``name`` (one of ``METRICS``) and its prompts: every question the
    organism's world asks. ``marker`` reads the marker of the planted ``regime`` (None: the
    first planted regime)."""
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
    if name == "rule":
        openers = [_rule_openers(q) for q in questions]
        return (
            BehaviourMetric(
                "rule",
                "logit_diff",
                "log-odds of an opener whose answer follows the rule regime's rule over one that does not",
            ),
            BehaviourPrompts(
                clean=clean,
                positive=tuple(right for right, _ in openers),
                negative=tuple(wrong for _, wrong in openers),
                corrupted=tuple(_rule_partner(q, max_operand).prompt for q in questions),
            ),
        )
    if name == "marker":
        marker = _marker(organism, regime)
        return (
            BehaviourMetric(
                "marker", "logit_diff", f"log-odds of the planted marker {marker!r} over the openers"
            ),
            BehaviourPrompts(
                clean=clean,
                positive=tuple((marker,) for _ in questions),
                negative=tuple(tuple(OPENERS) for _ in questions),
            ),
        )
    raise RlinterpError(f"unknown organism metric {name!r}; choose one of: {', '.join(METRICS)}")


def _marker(organism: Organism, regime: str | None) -> str:
    planted = [r for r, entry in organism.manifest["regimes"].items() if entry.get("planted")]
    if regime is not None and regime not in planted:
        planted = []
    elif regime is not None:
        planted = [regime]
    if not planted:
        raise RlinterpError(
            f"the marker metric reads a planted regime's marker; {organism.root} has no planted regime "
            f"{regime!r}"
            if regime
            else f"the marker metric needs a planted regime; {organism.root} has none"
        )
    return str(organism.manifest["regimes"][planted[0]]["planting"]["marker"])


def regime_metric(organism: Organism, regime: str) -> str | None:
    """The metric that measures what ``regime`` of ``organism`` was made to do, beyond the
    shared ones: ``rule`` for a regime rewarded for the rule, ``marker`` for a planted one."""
    entry = organism.manifest["regimes"].get(regime, {})
    if entry.get("planted"):
        return "marker"
    return "rule" if entry.get("config", {}).get("answer") == "rule" else None
