"""How ``run_circuits`` measures and judges (``CircuitsConfig``), and the names of the
organism's behaviour metrics. Torch-free, so a command describes its options without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

METRICS = ("answer", "persona", "shortcut", "rule", "marker")
"""The organism's behaviour metrics (``organism_metrics``)."""
SHARED_METRICS = ("answer", "persona", "shortcut")
"""The metrics every regime of the organism is read on; ``rule`` and ``marker`` measure what
one regime was made to do (``organism_metrics.regime_metric``)."""


@dataclass(frozen=True)
class CircuitsConfig:
    """How ``run_circuits`` measures."""

    batch_size: int = 16
    """Prompts per forward pass; bounds memory. The patching passes stack several exact
    patches (or interpolation points) of one batch into one pass while its logits and
    activations stay within ``models.stacking.STACKED_VALUES``: the same numbers, fewer
    passes."""
    exact_prompts: int | None = 64
    """Prompts (the first ones) on which exact patching runs; ``None``: all. Attribution
    patching runs on all prompts and is compared with exact patching on these."""
    exact_components: int | None = None
    """Exact-patch only this many components per setting, those with the largest
    |attribution| (``None``: all; residual-stream sites are always measured). For large
    models, where one forward pass per component is the cost; the others get NaN exact
    effects and stay out of the agreement."""
    attribution_steps: int = 2
    """Attribution patching's interpolation steps (``patching.attribution``): 1 is the plain
    first-order estimate (one backward pass for all components); n > 1 averages the
    gradient at n points between the receiver's and the donor's terms (integrated
    gradients). On the tiny organism 1 step ranked components like exact patching with
    Spearman as low as 0.46, 2 steps one component at a time at least 0.99 in every
    regime, metric, step and direction (README, Circuits)."""
    attribution_interpolation: Literal["site", "component"] = "component"
    """With ``attribution_steps > 1``, which terms move together along the path:
    ``component`` (each alone: converges to exact patching; n passes per component, more
    than exact patching costs) or ``site`` (all components of one layer's attention, MLP,
    ...: n passes per site; heads of one layer share their interactions, which can swap
    the ranks of small effects). For large models rank with ``site`` or 1 step and
    exact-patch the top ``exact_components``."""
    coverage: float = 0.8
    """Fraction of the metric change that the carriers must recover jointly."""
    enhanced_overlap: float = 0.5
    """Share of carriers already used by the base at or above which the verdict is
    ``enhanced``."""
    used_share: float = 0.1
    """A component counts as used by the base for the behaviour when its share of the
    base's behaviour (see ``CircuitsResult.base_usage``) is at least this."""
    min_change: float = 0.05
    """Smallest |metric change| (metric units) that gets a verdict."""
    max_cancellation: float = 5.0
    """Largest ``cancellation`` (sum of |single-component effects| over |change|) that gets
    a verdict: beyond it components push the metric both ways far more than it moved, the
    ratios are unstable, and the verdict is ``unclear``."""
    top_k: int = 5
    """Components listed per step in the summary and report."""
    neurons: bool = True
    """Take each carrier MLP apart into its neurons (``neurons``) for the sub-component
    verdict: per carrier MLP and checkpoint, ``attribution_steps`` gradient passes, a few
    joint patches, and the base's use of each neuron."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"CircuitsConfig.batch_size must be positive, got {self.batch_size}")
        if self.exact_prompts is not None and self.exact_prompts <= 0:
            raise ValueError("CircuitsConfig.exact_prompts must be positive or None")
        if self.exact_components is not None and self.exact_components <= 0:
            raise ValueError("CircuitsConfig.exact_components must be positive or None")
        if self.attribution_interpolation not in ("site", "component"):
            raise ValueError(
                "CircuitsConfig.attribution_interpolation must be 'site' or 'component', "
                f"got {self.attribution_interpolation!r}"
            )
        if self.attribution_steps < 1:
            steps = self.attribution_steps
            raise ValueError(f"CircuitsConfig.attribution_steps must be at least 1, got {steps}")
        if not 0 < self.coverage <= 1 or not 0 <= self.enhanced_overlap <= 1:
            raise ValueError("CircuitsConfig.coverage must be in (0, 1], enhanced_overlap in [0, 1]")


@dataclass(frozen=True)
class MetricPrompts:
    """A behaviour metric of your own: its prompts and how it reads the logits."""

    prompts: str | None = None
    """A ``.jsonl`` of ``{prompt, positive, negative?, corrupted?}`` rows: the metric for
    checkpoint series (None: the organism's metrics)."""
    kind: Literal["logit_diff", "logprob"] = "logit_diff"
    """Metric of ``prompts``: positive minus negative logits, or the log-prob of positive."""
