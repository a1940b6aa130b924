"""Intervals for per-step means, and the reward-overfitting readings built on them.

Every per-step number of ``rlinterp.fidelity`` is a ratio of sums over samples (a mean is
the ratio of a sum to a count), and every sample belongs to a prompt. The interval
resamples **prompts** with replacement (a cluster bootstrap: the samples of one prompt stay
together) with the same resamples at every step, so a difference between two steps has an
interval too, and a trajectory's replicates are coherent (as ``selection.index`` does).

Built on the replicates:

- **Goodhart onset**: the first step after the step where the gold reward peaks. Reported
  only when gold falls after its peak with confidence (the lower end of the interval of
  ``gold[peak] - gold[last]`` is above 0); its interval is the percentile range of the onset
  over the replicates that have one, and ``support`` the share of replicates that do.
- **Divergence**: the first step where the gap ``proxy - gold`` has grown past its value at
  the first step with confidence (the lower end of the interval of the change is above 0).
- **Gao et al. (2022) fit**: ``R(d) = d (alpha - beta log d)`` with ``d = sqrt(KL(π_t‖π_0))``
  and ``R`` the reward's change from the first step (their functional form for RL), least
  squares over the steps with ``d > 0``; the fitted peak sits at ``d* = exp(alpha / beta -
  1)`` when ``beta > 0``. Fitted on each replicate too, for intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Resampler:
    """Prompt-level bootstrap weights shared by every step."""

    counts: np.ndarray
    """``[n_bootstrap, n_prompts]``: how often each prompt is drawn in each replicate."""
    confidence: float

    @classmethod
    def make(cls, n_prompts: int, n_bootstrap: int, confidence: float, seed: int) -> Resampler:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=n_bootstrap)
        return cls(counts.astype(float), confidence)

    def interval(self, replicates: np.ndarray) -> tuple[float, float]:
        """The percentile interval of ``replicates`` (NaN where they are all NaN)."""
        finite = replicates[np.isfinite(replicates)]
        if not len(finite):
            return float("nan"), float("nan")
        tail = (1 - self.confidence) / 2
        lo, hi = np.quantile(finite, [tail, 1 - tail])
        return float(lo), float(hi)


@dataclass(frozen=True)
class Estimate:
    """A ratio of sums with its replicates."""

    value: float
    replicates: np.ndarray
    n: int
    """Samples (or pairs) that entered it."""


def ratio(
    prompts: np.ndarray, numerator: np.ndarray, denominator: np.ndarray | None, resampler: Resampler
) -> Estimate:
    """``sum(numerator) / sum(denominator)`` (denominator: ones) over the items with a
    finite numerator, with bootstrap replicates over their prompts."""
    numerator = np.asarray(numerator, dtype=float)
    valid = np.isfinite(numerator)
    den = np.ones_like(numerator) if denominator is None else np.asarray(denominator, dtype=float)
    n_prompts = resampler.counts.shape[1]
    idx = np.asarray(prompts, dtype=int)[valid]
    num_p = np.bincount(idx, weights=numerator[valid], minlength=n_prompts)
    den_p = np.bincount(idx, weights=den[valid], minlength=n_prompts)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(num_p.sum() / den_p.sum()) if den_p.sum() != 0 else float("nan")
        reps = (resampler.counts @ num_p) / (resampler.counts @ den_p)
    reps[~np.isfinite(reps)] = np.nan
    return Estimate(value, reps, int(valid.sum()))


def columns(name: str, estimate: Estimate, resampler: Resampler) -> dict[str, float]:
    """``name``, ``name_lo``, ``name_hi`` and ``name_n`` of one estimate."""
    lo, hi = resampler.interval(estimate.replicates)
    return {name: estimate.value, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_n": estimate.n}


def difference(a: Estimate, b: Estimate, resampler: Resampler) -> dict[str, float]:
    """``a - b`` with its interval (paired: the same resamples)."""
    lo, hi = resampler.interval(a.replicates - b.replicates)
    return {"delta": a.value - b.value, "delta_lo": lo, "delta_hi": hi}


def goodhart_onset(steps: Sequence[int], gold: Sequence[Estimate], resampler: Resampler) -> dict[str, Any]:
    """The Goodhart onset of a gold-reward trajectory (module docstring)."""
    values = np.array([g.value for g in gold])
    reps = np.stack([g.replicates for g in gold], axis=1)  # [replicate, step]
    none: dict[str, Any] = {"found": False, "step": None, "step_lo": None, "step_hi": None}
    if len(values) < 2 or not np.isfinite(values).all():
        return {**none, "peak_step": None, "drop": None, "drop_lo": None, "drop_hi": None, "support": 0.0}
    peak = int(np.argmax(values))
    drop = difference(gold[peak], gold[-1], resampler)
    filled = np.where(np.isfinite(reps), reps, -np.inf)
    rep_peaks = filled.argmax(axis=1)
    has_onset = rep_peaks < len(values) - 1
    result = {
        "peak_step": int(steps[peak]),
        "drop": drop["delta"],
        "drop_lo": drop["delta_lo"],
        "drop_hi": drop["delta_hi"],
        "support": float(has_onset.mean()),
    }
    if peak == len(values) - 1 or not drop["delta_lo"] > 0:
        return {**none, **result}
    tail = (1 - resampler.confidence) / 2
    lo, hi = np.quantile(rep_peaks[has_onset] + 1, [tail, 1 - tail], method="nearest")
    return {
        **result,
        "found": True,
        "step": int(steps[peak + 1]),
        "step_lo": int(steps[int(lo)]),
        "step_hi": int(steps[int(hi)]),
    }


def divergence(
    steps: Sequence[int], proxy: Sequence[Estimate], gold: Sequence[Estimate], resampler: Resampler
) -> dict[str, Any]:
    """The first step whose gap ``proxy - gold`` exceeds the first step's with confidence."""
    first_gap = proxy[0].replicates - gold[0].replicates
    base = proxy[0].value - gold[0].value
    for step, p, g in zip(steps[1:], proxy[1:], gold[1:], strict=True):
        lo, hi = resampler.interval(p.replicates - g.replicates - first_gap)
        if lo > 0:
            return {
                "found": True,
                "step": int(step),
                "growth": p.value - g.value - base,
                "growth_lo": lo,
                "growth_hi": hi,
            }
    return {"found": False, "step": None, "growth": None, "growth_lo": None, "growth_hi": None}


def _fit(d: np.ndarray, reward: np.ndarray) -> tuple[float, float]:
    keep = (d > 0) & np.isfinite(reward) & np.isfinite(d)
    if keep.sum() < 2:
        return float("nan"), float("nan")
    x = np.stack([d[keep], -d[keep] * np.log(d[keep])], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(x, reward[keep], rcond=None)
    return float(alpha), float(beta)


def gao_fit(kl: Sequence[Estimate], reward: Sequence[Estimate], resampler: Resampler) -> dict[str, Any]:
    """``alpha``, ``beta`` (with intervals) and the fitted peak distance ``d_peak`` of
    ``R(d) = d (alpha - beta log d)`` for a reward trajectory against its KL trajectory."""
    d = np.sqrt(np.clip([k.value for k in kl], 0, None))
    change = np.array([r.value for r in reward]) - reward[0].value
    alpha, beta = _fit(d, change)
    d_reps = np.sqrt(np.clip(np.stack([k.replicates for k in kl], axis=1), 0, None))
    r_reps = np.stack([r.replicates for r in reward], axis=1)
    r_reps = r_reps - r_reps[:, :1]
    fits = np.array([_fit(dr, rr) for dr, rr in zip(d_reps, r_reps, strict=True)])
    a_lo, a_hi = resampler.interval(fits[:, 0])
    b_lo, b_hi = resampler.interval(fits[:, 1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d_peak = float(np.exp(alpha / beta - 1)) if beta > 0 else None
    fitted = d * (alpha - beta * np.log(np.where(d > 0, d, 1.0)))
    return {
        "alpha": alpha,
        "alpha_lo": a_lo,
        "alpha_hi": a_hi,
        "beta": beta,
        "beta_lo": b_lo,
        "beta_hi": b_hi,
        "d_peak": d_peak,
        "rmse": float(np.sqrt(np.nanmean((fitted - change) ** 2))) if np.isfinite(alpha) else None,
    }


def curve(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``d (alpha - beta log d)`` (0 at ``d = 0``)."""
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


def as_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)
