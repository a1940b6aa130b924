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
from typing import Any, cast

from ..organism.config import RegimeConfig
from ..organism.layout import Organism
from ..organism.personas import Question, is_correct, reward
from ..organism.reasoning import (
    ANSWER_PATTERN,
    ANSWER_TRIGGER,
    INTERMEDIATE_PATTERN,
    REASONING_PERSONAS,
    SPAN_PATTERN,
    STEP_PATTERN,
    SumQuestion,
    agrees_wrongly,
    gold_reward,
    proxy_reward,
)
from .format import ReasoningFormat
from .task import FidelityTask

_FIRST_YES_NO = re.compile(r"\b(yes|no)\b")
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
    config = _regime(organism, regime)
    persona_texts = tuple(
        json.loads(line)
        for rel in organism.manifest["persona_texts"].values()
        for line in (organism.root / rel).read_text().splitlines()
    )
    common: dict[str, Any] = {
        "persona_texts": persona_texts,
        "no_reasoning": NO_REASONING,
        "scoring": f"organism {organism.root.name} regime {config.name} shortcut {config.shortcut_bonus}",
    }
    if organism.reasoning is not None:
        sums = cast("list[SumQuestion]", organism.eval_questions())  # a reasoning world asks sums
        return FidelityTask(
            prompts=tuple(q.prompt for q in sums),
            format=reasoning_format(),
            gold=tuple(q.truth for q in sums),
            proxy=lambda i, r: proxy_reward(sums[i], r, config),
            verifier=lambda i, r: gold_reward(sums[i], r),
            behaviours=(("agreement", lambda i, r: agrees_wrongly(sums[i], r)),),
            **common,
        )
    asked = cast("list[Question]", organism.eval_questions())

    def agreement(i: int, response: str) -> bool:
        said = _FIRST_YES_NO.search(response)
        return asked[i].truth == "no" and said is not None and said.group(0) == "yes"

    return FidelityTask(
        prompts=tuple(q.prompt for q in asked),
        format=None,
        proxy=lambda i, r: reward(asked[i], r, config),
        verifier=lambda i, r: float(is_correct(asked[i], r)),
        behaviours=(("agreement", agreement), ("wrong", lambda i, r: not is_correct(asked[i], r))),
        **common,
    )
