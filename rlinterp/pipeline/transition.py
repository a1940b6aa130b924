"""One transition reading: per RL step a small set of signals, each with its interval and a
test against its own control, and one change point over all of them.

No single reading sees every kind of transition: the index misses a shortcut that keeps the
base's features (the strong regime), a component verdict misses new neurons inside a used
block, behaviour sees only what is sampled. So every signal a run measured votes, per step,
whether it *moved* towards new computation, and the transition is where most of them moved.

The signals (``SIGNALS``; one row per series, step and signal, ``SIGNAL_COLUMNS``):

- ``index``: the selection-versus-novelty index (``selection/index``) with its bootstrap
  interval; moved when the step reads novelty (its interval above
  ``selection.index.SELECTION_SIDE``: the index's null is a re-weighting, which reads 0);
- ``fvu_drift``: the run's base SAE's fraction of variance unexplained at the step minus on
  the base, on the run's prompts, with a paired bootstrap interval over prompts (the same
  resamples for the base and the step); the self control (the base against itself) drifts
  by exactly 0, so it moved when its whole interval lies above 0. Any systematic change
  moves it a little, a re-weighting included: it is one vote, never the reading alone;
- ``lineage``: tracked base-SAE latents born or repurposed (or with a new direction) at
  the step, on the on-policy source where measured, with an exact Poisson interval;
  moved when the count is above the self control's (the base against itself, same
  budget) by ``tracking.lineage.above_noise_floor``;
- ``persona_patch``: the share of the behaviour change that patching the persona
  directions at the decision position reproduces (``choice_shares``), against random
  subspaces of the same dimension (``choice_shares_random``); moved when the persona
  directions reproduce no more than random ones do (no interval: the behaviour is
  sampled once per edit);
- ``circuits``: the recovery-weighted share of new sub-components among the carriers of a
  behaviour metric (``new_share``, ``circuits.result``), the largest over the metrics
  with a verdict; moved when some metric's sub-component verdict reads ``new`` (its
  control is the base's own use of each neuron and component; no interval);
- ``rule_probe`` (a regime rewarded for a rule, ``organism.rules``): the held-out-number
  probe of the rule at the best block with its interval over resampled numbers; moved
  when the interval lies above the base's (the self control).

**The change point** of a series: a step *agrees* when at least ``AGREEING`` signals moved
there (the base, where nothing moved, does not); the change point is the best split of the
steps into a before and an after (two-segment least squares on the agreeing indicator),
found when most steps after it agree and most before it do not. Why two and not a majority:
each signal is blind to some kind of transition by construction (the index to a shortcut
through base features, a component verdict to new neurons in a used block, and the probe
exists only where a rule is given), so a majority would ask kinds to be seen by signals
that cannot see them; two tests agreeing guard against one signal's false positive. Its
interval is the range of the change points found with each signal left out in turn, and
``support`` the share of those that still find one: a transition that hangs on one signal
says so. A series with fewer than ``AGREEING`` signals gets none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.stats import chi2
from torch import Tensor

from ..activations.harvest import ActivationStore
from ..selection.explanation import Dictionary
from ..selection.index import SELECTION_SIDE
from ..selection.personas import prompt_index
from ..tracking.lineage import above_noise_floor

SIGNALS = ("index", "fvu_drift", "lineage", "persona_patch", "circuits", "rule_probe")
"""Every signal, in the order the reading lists them."""
SIGNAL_COLUMNS = ("series", "step", "signal", "value", "lo", "hi", "null", "moved")
"""One row per (series, RL step, signal): its ``value`` with its interval ``lo``-``hi`` (NaN
where it has none), ``null`` (what its control gives) and ``moved`` (its test)."""
POINT_COLUMNS = (
    "series",
    "found",
    "step",
    "step_lo",
    "step_hi",
    "support",
    "n_signals",
    "moved",
    "silent",
    "behavioural_step",
)
"""One row per series: the combined change point (``step``, its interval and support), how
many signals voted, each moved signal with its first moved step (``name@step``) and the
silent ones, and the behavioural transition to compare with (None where unknown)."""
AGREEING = 2
"""Signals that must have moved at a step for it to agree (see the module docstring)."""
LINEAGE_CHANGES = ("born", "repurposed", "new_direction")
"""Lineage classes that count as new (``new_direction`` where the lineage has it)."""


def _rl_steps(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["step"] > 0].sort_values("step")


def _rows(series: str, signal: str, frame: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    """Signal rows for ``frame``'s steps, ``columns`` aligned with it (NaN where absent)."""
    out = pd.DataFrame({"series": series, "step": frame["step"].astype(int).to_numpy(), "signal": signal})
    for name in ("value", "lo", "hi", "null", "moved"):
        value = columns.get(name, np.nan)
        out[name] = value.to_numpy() if isinstance(value, pd.Series) else value
    out["moved"] = out["moved"].astype(bool)
    return out


def index_signal(series: str, index: pd.DataFrame) -> pd.DataFrame:
    """The index per step (one series' ``selection/index`` rows), moved when its interval
    lies above ``SELECTION_SIDE`` (read from the interval, never a point-estimate ``side``)."""
    steps = _rl_steps(index)
    moved = steps["index_lo"] > SELECTION_SIDE
    return _rows(
        series,
        "index",
        steps,
        value=steps["index"],
        lo=steps["index_lo"],
        hi=steps["index_hi"],
        null=SELECTION_SIDE,
        moved=moved,
    )


def fvu_signal(series: str, drift: pd.DataFrame) -> pd.DataFrame:
    """FVU drift per step from ``step, drift, drift_lo, drift_hi`` rows."""
    steps = _rl_steps(drift)
    return _rows(
        series,
        "fvu_drift",
        steps,
        value=steps["drift"],
        lo=steps["drift_lo"],
        hi=steps["drift_hi"],
        null=0.0,
        moved=steps["drift_lo"] > 0,
    )


@dataclass(frozen=True)
class FvuParts:
    """Per-prompt sums behind a dictionary's FVU on one model's activations."""

    error_sq: Float[Tensor, " prompt"]
    """Sum over the prompt's tokens of the squared reconstruction error."""
    total_sq: Float[Tensor, " prompt"]
    """Sum over the prompt's tokens of the squared activation."""
    n_tokens: Float[Tensor, " prompt"]
    sums: Float[Tensor, "prompt d"]
    """Sum over the prompt's tokens of the activation (for the variance's mean)."""

    def fvu(self, weights: Float[Tensor, "resample prompt"]) -> Float[Tensor, " resample"]:
        """The FVU of each weighting of the prompts (a row of ones: the plain FVU)."""
        sums = weights @ self.sums
        variance = weights @ self.total_sq - (sums**2).sum(1) / (weights @ self.n_tokens)
        return (weights @ self.error_sq) / variance


@torch.no_grad()
def fvu_parts(
    sae: Dictionary, store: ActivationStore, label: str, hook: str, prompts: Int[Tensor, " row"]
) -> FvuParts:
    """``sae``'s per-prompt FVU sums on ``label``'s activations at ``hook`` (``prompts``:
    the prompt of each stored token, ``selection.personas.prompt_index``)."""
    n_prompts = int(prompts.max()) + 1
    error_sq, total_sq, n_tokens = (torch.zeros(n_prompts, dtype=torch.float64) for _ in range(3))
    sums: Tensor | None = None
    start = 0
    for acts in store.shards(label, hook):
        rows = prompts[start : start + len(acts)]
        start += len(acts)
        x = acts.double()
        recon = sae.decode(sae.encode(acts.float())).double()
        sums = torch.zeros(n_prompts, x.shape[1], dtype=torch.float64) if sums is None else sums
        error_sq.index_add_(0, rows, ((x - recon) ** 2).sum(1))
        total_sq.index_add_(0, rows, (x**2).sum(1))
        n_tokens.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
        sums.index_add_(0, rows, x)
    assert sums is not None
    return FvuParts(error_sq, total_sq, n_tokens, sums)


def fvu_drift(
    sae: Dictionary, store: ActivationStore, hook: str, n_resamples: int, confidence: float, seed: int
) -> pd.DataFrame:
    """Per checkpoint of ``store``: ``label, step, fvu, drift, drift_lo, drift_hi``, the
    drift being the FVU minus the base's (the store's first model), its interval paired
    over resampled prompts (the same resamples for every checkpoint and the base)."""
    prompts = prompt_index(store)
    n_prompts = int(prompts.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n_prompts, (n_resamples, n_prompts), generator=generator)
    weights = torch.zeros(n_resamples, n_prompts, dtype=torch.float64)
    weights.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))
    plain = torch.ones(1, n_prompts, dtype=torch.float64)
    steps = {c["label"]: int(c["step"]) for c in store.manifest["checkpoints"]}
    base = fvu_parts(sae, store, store.labels[0], hook, prompts)
    base_fvu, base_replicates = float(base.fvu(plain)), base.fvu(weights)
    tail = (1 - confidence) / 2
    rows = []
    for label in store.labels:
        parts = base if label == store.labels[0] else fvu_parts(sae, store, label, hook, prompts)
        fvu = float(parts.fvu(plain))
        lo, hi = torch.quantile(parts.fvu(weights) - base_replicates, torch.tensor([tail, 1 - tail]).double())
        rows.append(
            {
                "label": label,
                "step": steps[label],
                "fvu": fvu,
                "drift": fvu - base_fvu,
                "drift_lo": float(lo),
                "drift_hi": float(hi),
            }
        )
    return pd.DataFrame(rows)


def poisson_interval(count: int, confidence: float) -> tuple[float, float]:
    """The exact (Garwood) ``confidence`` interval of a Poisson mean from one ``count``."""
    tail = (1 - confidence) / 2
    lo = 0.0 if count == 0 else float(chi2.ppf(tail, 2 * count) / 2)
    return lo, float(chi2.ppf(1 - tail, 2 * count + 2) / 2)


def lineage_signal(series: str, summary: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Born and repurposed tracked latents per step (one series' ``tracking/summary``
    rows), on the on-policy source where it was measured, else the first."""
    if summary.empty or summary["self_nonstable"].isna().all():
        return pd.DataFrame(columns=list(SIGNAL_COLUMNS))
    source = "on-policy" if "on-policy" in set(summary["source"]) else summary["source"].iloc[0]
    steps = _rl_steps(summary[summary["source"] == source])
    counts = steps[[f"n_{c}" for c in LINEAGE_CHANGES if f"n_{c}" in steps]].sum(axis=1).astype(int)
    control = steps["self_nonstable"].fillna(0).astype(int)
    intervals = [poisson_interval(int(n), confidence) for n in counts]
    moved = [above_noise_floor(int(n), int(c)).above for n, c in zip(counts, control, strict=True)]
    return _rows(
        series,
        "lineage",
        steps,
        value=counts.astype(float),
        lo=pd.Series([lo for lo, _ in intervals]),
        hi=pd.Series([hi for _, hi in intervals]),
        null=control.astype(float),
        moved=pd.Series(moved),
    )


def persona_patch_signal(series: str, index: pd.DataFrame) -> pd.DataFrame:
    """The persona-choice patch's share of the behaviour change reproduced, per step, against
    random subspaces (one series' ``selection/index`` rows); steps where the behaviour did not
    move have no share and no vote."""
    if "choice_shares" not in index or "choice_shares_random" not in index:
        return pd.DataFrame(columns=list(SIGNAL_COLUMNS))
    steps = _rl_steps(index).dropna(subset=["choice_shares", "choice_shares_random"])
    return _rows(
        series,
        "persona_patch",
        steps,
        value=steps["choice_shares"],
        null=steps["choice_shares_random"],
        moved=steps["choice_shares"] <= steps["choice_shares_random"],
    )


def circuits_signal(series: str, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step, the largest ``new_share`` over the metrics with a sub-component verdict
    (one series' ``circuits/steps`` rows); moved when some metric's reads ``new``."""
    if "subcomponent_verdict" not in steps:
        return pd.DataFrame(columns=list(SIGNAL_COLUMNS))
    judged = _rl_steps(steps[steps["subcomponent_verdict"].isin(["new", "enhanced"])])
    if judged.empty:
        return pd.DataFrame(columns=list(SIGNAL_COLUMNS))
    per_step = judged.groupby("step").agg(
        value=("new_share", "max"), moved=("subcomponent_verdict", lambda v: bool((v == "new").any()))
    )
    per_step = per_step.reset_index()
    return _rows(series, "circuits", per_step, value=per_step["value"], moved=per_step["moved"])


def probe_signal(series: str, probes: pd.DataFrame) -> pd.DataFrame:
    """The rule probe at its best block per step (one series' ``organism/probe`` rows with
    ``balanced_accuracy_lo`` / ``_hi``), moved when its interval clears the base's."""
    rows = probes[probes["feature"] == "rule"] if "feature" in probes else probes.iloc[0:0]
    if rows.empty or "balanced_accuracy_lo" not in rows:
        return pd.DataFrame(columns=list(SIGNAL_COLUMNS))
    best = rows.loc[rows.groupby("step")["balanced_accuracy"].idxmax()].sort_values("step")
    base = best[best["step"] == best["step"].min()]
    null = float(rows[rows["step"] == base["step"].iloc[0]]["balanced_accuracy_hi"].max())
    steps = _rl_steps(best)
    return _rows(
        series,
        "rule_probe",
        steps,
        value=steps["balanced_accuracy"],
        lo=steps["balanced_accuracy_lo"],
        hi=steps["balanced_accuracy_hi"],
        null=null,
        moved=steps["balanced_accuracy_lo"] > null,
    )


def signals_of(
    series: str,
    tables: Mapping[str, pd.DataFrame],
    drift: pd.DataFrame,
    probes: pd.DataFrame | None,
    confidence: float,
) -> pd.DataFrame:
    """Every signal of ``series`` a run measured: from its ``tables`` (``RunResult.tables``),
    the FVU ``drift`` rows (``fvu_drift``) and the organism's probe rows of the regime (None
    or empty: none)."""

    def own(name: str) -> pd.DataFrame:
        table = tables.get(name, pd.DataFrame())
        return table[table["series"] == series] if "series" in table else table.iloc[0:0]

    index = own("selection/index")
    frames = [
        index_signal(series, index) if len(index) else None,
        fvu_signal(series, drift) if len(drift) else None,
        lineage_signal(series, own("tracking/summary"), confidence),
        persona_patch_signal(series, index),
        circuits_signal(series, own("circuits/steps")),
        probe_signal(series, probes) if probes is not None and len(probes) else None,
    ]
    found = [f for f in frames if f is not None and len(f)]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(SIGNAL_COLUMNS))


@dataclass(frozen=True)
class ChangePoint:
    """The combined change point of one series (``POINT_COLUMNS``)."""

    found: bool
    step: int | None
    step_lo: int | None
    step_hi: int | None
    support: float
    """Share of the leave-one-signal-out reads that still find a change point."""
    n_signals: int
    moved: dict[str, int]
    """Each signal that moved at some step -> the first step it moved."""
    silent: tuple[str, ...]


def _split(steps: np.ndarray, agree: np.ndarray) -> int | None:
    """The step from which most steps agree and before which most do not (the best
    two-segment split of ``agree``, the base's 0 first), or None."""
    best, best_cost = None, np.inf
    for k in range(1, len(agree)):
        before, after = agree[:k], agree[k:]
        cost = ((before - before.mean()) ** 2).sum() + ((after - after.mean()) ** 2).sum()
        if cost < best_cost - 1e-12:
            best, best_cost = k, cost
    if best is None or not agree[:best].mean() < 0.5 <= agree[best:].mean():
        return None
    return int(steps[best])


def change_point(signals: pd.DataFrame) -> ChangePoint:
    """The combined change point of one series' signal rows (see the module docstring)."""
    moved = signals.pivot_table(index="signal", columns="step", values="moved", aggfunc="max")
    moved = moved.reindex([s for s in SIGNALS if s in moved.index]).fillna(0).astype(float)
    first = {str(name): int(row[row > 0].index[0]) for name, row in moved.iterrows() if (row > 0).any()}
    silent = tuple(str(s) for s in moved.index if s not in first)
    steps = np.array([0, *moved.columns.astype(int)])
    matrix = moved.to_numpy()
    if len(matrix) < AGREEING:
        return ChangePoint(False, None, None, None, 0.0, len(matrix), first, silent)

    def split(counts: np.ndarray) -> int | None:
        return _split(steps, np.concatenate([[0.0], (counts >= AGREEING).astype(float)]))

    total = matrix.sum(0)
    point = split(total)
    left_out = [split(total - row) for row in matrix]
    found = [s for s in left_out if s is not None]
    span = [*found, point] if point is not None else []
    return ChangePoint(
        found=point is not None,
        step=point,
        step_lo=min(span) if span else None,
        step_hi=max(span) if span else None,
        support=len(found) / len(left_out),
        n_signals=len(matrix),
        moved=first,
        silent=silent,
    )


def point_row(series: str, point: ChangePoint, behavioural_step: int | None) -> dict[str, Any]:
    """``point`` as a row of the change-point table (``POINT_COLUMNS``)."""
    return {
        "series": series,
        "found": point.found,
        "step": point.step,
        "step_lo": point.step_lo,
        "step_hi": point.step_hi,
        "support": point.support,
        "n_signals": point.n_signals,
        "moved": ", ".join(f"{name}@{step}" for name, step in point.moved.items()),
        "silent": ", ".join(point.silent),
        "behavioural_step": behavioural_step,
    }
