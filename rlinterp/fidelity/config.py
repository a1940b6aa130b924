"""Configuration of the fidelity measurements: which metrics, on how many samples, with what
intervals (``FidelityConfig``), and what a series is measured on when it is not an organism's
(``TaskConfig``: the prompts file, the regexes that read the answers, the reward script).

Torch-free, so ``rlinterp fidelity --help`` and ``rlinterp run``'s ``[fidelity]`` options
are generated without importing torch (``core.options``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ..activations.config import SamplingConfig
from ..errors import RlinterpError
from .format import ReasoningFormat

MetricName = Literal["early", "mistake", "filler", "patching", "consistency", "rewards", "drift", "persona"]
METRICS: tuple[MetricName, ...] = get_args(MetricName)
REASONING_METRICS: tuple[MetricName, ...] = ("early", "mistake", "filler", "patching", "consistency")
"""The metrics that read the reasoning span (skipped when answers state no reasoning)."""


@dataclass(frozen=True)
class FidelityConfig:
    """What ``run_fidelity`` measures on every checkpoint, and its budgets."""

    metrics: tuple[MetricName, ...] = METRICS
    """Metrics to compute: ``early`` answering, ``mistake`` insertion, ``filler`` gap,
    ``patching`` (reasoning-mediated share), ``consistency`` and legibility, ``rewards``
    (proxy, gold, Goodhart onset, Gao fit), ``drift`` (KL to the base, undesired and new
    behaviours), ``persona`` (persona shift; needs persona texts)."""
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(samples_per_prompt=2, max_new_tokens=64, seed=0)
    )
    """How each checkpoint samples its own answers (the on-policy samples every metric is
    computed on; the same random numbers at every checkpoint)."""
    max_prompts: int | None = None
    """Analyse at most this many prompts, evenly spaced (None: all)."""
    answer_tokens: int = 8
    """Tokens generated (greedily) after the trigger for a forced answer."""
    continue_tokens: int = 48
    """Tokens generated (greedily) after an edited intermediate (mistake insertion)."""
    max_pairs: int = 64
    """Most clean/corrupted pairs patched per checkpoint."""
    new_quantile: float = 0.01
    """A sample is *new* when its mean per-token log-likelihood under the base is below this
    quantile of the base's own samples (a separate draw): the base's rate of new samples is
    then this quantile by construction, the definition's false-positive rate."""
    persona_hook: str | None = None
    """Hook of the persona shift (None: the last block's ``hook_resid_post``)."""
    n_bootstrap: int = 500
    """Bootstrap resamples of the prompts (the same resamples at every step)."""
    confidence: float = 0.9
    """Coverage of the percentile intervals."""
    seed: int = 0
    """Seeds the resampling and the edits of mistake insertion."""
    batch_size: int = 32
    """Sequences per forward pass (log-probabilities, patching, persona shift)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            raise RlinterpError(
                f"unknown metrics {unknown or '(none given)'}; choose from {', '.join(METRICS)}"
            )
        for name in ("answer_tokens", "continue_tokens", "max_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise RlinterpError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_prompts is not None and self.max_prompts < 2:
            raise RlinterpError(f"max_prompts must be at least 2 (or None), got {self.max_prompts}")
        if not 0 < self.new_quantile < 0.5:
            raise RlinterpError(f"new_quantile must lie in (0, 0.5), got {self.new_quantile}")
        if self.n_bootstrap < 10:
            raise RlinterpError(f"n_bootstrap must be at least 10, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1 or not math.isfinite(self.confidence):
            raise RlinterpError(f"confidence must lie in (0, 1), got {self.confidence}")

    def wants(self, metric: MetricName) -> bool:
        return metric in self.metrics


@dataclass(frozen=True)
class TaskConfig:
    """What the checkpoints are asked and how their answers are read and scored, as files and
    regexes (``source.series_task`` makes the ``FidelityTask``). Without ``prompts`` an
    organism series is measured on the organism's own held-out questions, format and
    rewards."""

    prompts: str | None = None
    """A ``.jsonl`` of ``{"prompt": ..., "gold": ...}`` rows (``gold`` optional, on every row
    or none); None: the organism's questions (an organism series)."""
    reasoning: str | None = None
    """Regex whose group ``reasoning`` (else group 1) is the reasoning span, searched from the
    start of each answer, e.g. ``<think>(?P<reasoning>.*?)</think>``; None: the answers
    state no reasoning (only rewards and drift are measured)."""
    answer: str | None = None
    """Regex whose group ``answer`` (else group 1) is the final answer, searched after the
    span, e.g. ``Answer: (?P<answer>\\S+)``; given with ``reasoning``."""
    step: str = field(default=ReasoningFormat.step, metadata={"flag": "step_pattern"})
    """Regex of one reasoning step inside the span (the default reads sentences)."""
    intermediate: str = ReasoningFormat.intermediate
    """Regex whose group ``value`` (else group 1) is the intermediate result a step states
    (the default reads its last number); mistake insertion edits it."""
    trigger: str | None = None
    """Text put after a cut or edited reasoning to make the model answer; None: each
    answer's own text between its span and its final answer."""
    filler: str = ReasoningFormat.filler
    """The character that replaces every visible character of the span (filler gap)."""
    reward_script: str | None = None
    """A ``.py`` file defining ``reward(prompt, response) -> float``: the reward the RL
    optimised (the proxy). None: with gold answers, whether the final answer is the gold
    one; the organism's regime reward for an organism."""

    def __post_init__(self) -> None:
        if (self.reasoning is None) != (self.answer is None):
            raise RlinterpError(
                "give the reasoning regex and the answer regex together (--reasoning and --answer): "
                "one reads the span, the other the final answer after it"
            )
        self.format()  # every regex compiles and has its group: one line if not
        for name, suffix in (("prompts", ".jsonl"), ("reward_script", ".py")):
            path = getattr(self, name)
            if path is not None and (Path(path).suffix != suffix or not Path(path).is_file()):
                raise RlinterpError(f"{name} {path!r} is not a {suffix} file")

    def format(self) -> ReasoningFormat | None:
        """The ``ReasoningFormat`` these regexes describe (None without a reasoning regex)."""
        if self.reasoning is None or self.answer is None:
            return None
        return ReasoningFormat(
            reasoning=self.reasoning,
            answer=self.answer,
            step=self.step,
            intermediate=self.intermediate,
            trigger=self.trigger,
            filler=self.filler,
        )
