"""The fidelity task of a built organism, read from its manifest.

- **Reasoning organisms**: the held-out questions, their sums as gold answers, the reasoning
  world's format (span before ``so``, steps ``a+b=c``, answer after ``so``, the persona
  templates), the regime's reward as the proxy (correctness of the final answer, plus the
  shortcut where the regime pays one), the world's gold verifier (correct and following
  right reasoning), and the undesired behaviours the base has: a wrong answer, and the
  flatterer's agreement with a wrong guess.
- **Yes/no organisms**: their answers state no reasoning, so the reasoning metrics are
  skipped with that reason; rewards and drift are measured as above, with correctness as
  the gold reward and "yes" to a no-question as the flatterer's agreement.

The persona texts of ``personas/`` give the persona directions of the persona shift.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..organism.build import Organism
from ..organism.config import RegimeConfig
from ..organism.personas import Question
from ..organism.reasoning import (
    ANSWER_PATTERN,
    ANSWER_TRIGGER,
    INTERMEDIATE_PATTERN,
    REASONING_PERSONAS,
    SPAN_PATTERN,
    STEP_PATTERN,
    SumQuestion,
    agrees_wrongly,
)
from .format import ReasoningFormat
from .task import FidelityTask

NO_REASONING = "the organism's answers state no reasoning (a yes/no organism; build a reasoning preset)"


def reasoning_format() -> ReasoningFormat:
    """How the reasoning world's answers are read (``organism.reasoning``)."""
    return ReasoningFormat(
        reasoning=SPAN_PATTERN,
        answer=ANSWER_PATTERN,
        step=STEP_PATTERN,
        intermediate=INTERMEDIATE_PATTERN,
        trigger=ANSWER_TRIGGER,
        templates=tuple((p.name, p.span_template) for p in REASONING_PERSONAS),
    )


def _regime(organism: Organism, regime: str | None) -> RegimeConfig:
    """The regime whose reward is the proxy (its shortcut included); a series without one
    (a control) is scored by the first regime's reward without the shortcut."""
    configs = {r["name"]: r for r in organism.manifest["config"]["regimes"]}
    if regime is not None and regime in configs:
        raw = dict(configs[regime])
    else:
        raw = {**next(iter(configs.values())), "shortcut_bonus": 0.0}
    raw["checkpoint_steps"] = tuple(raw["checkpoint_steps"])
    return RegimeConfig(**raw)


def organism_task(organism: Organism, regime: str | None = None) -> FidelityTask:
    """The fidelity task of ``organism``, the proxy being ``regime``'s reward."""
    questions: list[Any] = organism.eval_questions()
    world = organism.task
    config = _regime(organism, regime)
    persona_texts = tuple(
        json.loads(line)
        for rel in organism.manifest["persona_texts"].values()
        for line in (organism.root / rel).read_text().splitlines()
    )

    def proxy(i: int, response: str) -> float:
        return world.reward(questions[i], response, config)

    def verifier(i: int, response: str) -> float:
        return world.gold(questions[i], response)

    def agreement(i: int, response: str) -> bool:
        q = questions[i]
        if isinstance(q, SumQuestion):
            return agrees_wrongly(q, response)
        assert isinstance(q, Question)
        said = re.search(r"\b(yes|no)\b", response)
        return q.truth == "no" and said is not None and said.group(0) == "yes"

    def wrong(i: int, response: str) -> bool:
        return not world.correct(questions[i], response)

    reasoning = organism.reasoning is not None
    return FidelityTask(
        prompts=tuple(q.prompt for q in questions),
        format=reasoning_format() if reasoning else None,
        gold=tuple(q.truth for q in questions) if reasoning else None,
        proxy=proxy,
        verifier=verifier,
        behaviours=(("agreement", agreement),) if reasoning else (("agreement", agreement), ("wrong", wrong)),
        persona_texts=persona_texts,
        no_reasoning=NO_REASONING,
        scoring=f"organism {organism.root.name} regime {config.name} shortcut {config.shortcut_bonus}",
    )
