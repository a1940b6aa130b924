"""The selection-versus-novelty index: how much of what RL changed can the base model's own
features express, step by step, with a bootstrap interval and a transition step.

At one hook, take a dictionary trained on the **base** model (encoder ``E``, decoder ``R``)
and, on the same tokens, the base activation ``x`` and a checkpoint's ``y``. The change is
``delta = y - x``. Re-weighting the base's features accounts for ``R(E(y)) - R(E(x))``; what
they cannot express is the change of the reconstruction error

    eps = (y - R(E(y))) - (x - R(E(x))) = delta - (R(E(y)) - R(E(x))).

**The index** is the share of the *systematic* change that base features cannot express:

    index = ||mean eps||^2 / ||mean delta||^2   (means over tokens), clipped to [0, 1].

0 means RL's average push on the representation is a re-weighting of what the base had
(an amplified or suppressed base feature gives 0), 1 that nothing in the base's dictionary
expresses it (a direction the dictionary has no latent for gives 1); a checkpoint identical
to the base has no change and index 0. Means, not per-token energies, because RL updates
also move every token a little in directions that carry no function: measured on the
organism's weak regime, a base SAE with 1.7% unexplained variance leaves 50-100% of the
*per-token* change energy unexplained (the change is as small as the dictionary's own
resolution), while the mean change is mostly expressed. That per-token share is reported as
``token_residual_share`` beside the index. ``SELECTION_SIDE`` splits the two readings.

Other components, per step:

- ``fvu_base`` / ``fvu_post`` / ``fvu_drift``: the dictionary's fraction of variance
  unexplained on each model and its increase;
- ``persona_share`` (when persona directions are given): the share of the squared norm of
  the mean shift inside the span of the persona directions, beside ``persona_baseline``,
  the share a random subspace of the same dimension holds in expectation (``k / d``).

Dictionary-level evidence (births above the noise floor from lineage, RL-exclusive
crosscoder latents confirmed by latent scaling) has no per-prompt form and is reported
beside the index rather than averaged into it, so that the interval means what it says.

**Interval**: ``n_bootstrap`` resamples of the prompts (the same resamples at every step,
so trajectories stay coherent); the percentile interval at ``confidence``.

**Transition** (from selection to novelty): the best single change point in the mean of the
index trajectory (two-segment least squares). It is reported only if the segments lie on
either side of ``SELECTION_SIDE`` and the jump between them is at least ``min_jump``, both
in the point estimate and in ``confidence`` of the bootstrap replicates; its interval is
the percentile range of the change point over those replicates. A rise that stays on one
side is not a transition (its size is still reported as ``jump``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..activations.harvest import ActivationStore
from ..errors import RlinterpError
from .config import IndexConfig as IndexConfig
from .personas import prompt_index

SELECTION_SIDE = 0.5
"""An index below this reads as selection (base features express most of the systematic
change), above it as novelty."""


@runtime_checkable
class Dictionary(Protocol):
    """What the index needs of a dictionary trained on the base: ``encode`` and ``decode``
    on ``[token, d]`` (SAELens SAEs, ``TrainedSAE.sae``, have both)."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class StepParts:
    """Per-prompt sums of one checkpoint against the base (rows: prompts)."""

    label: str
    step: int
    change_sq: Float[Tensor, " prompt"]
    """Sum over the prompt's tokens of ``||y - x||^2``."""
    residual_sq: Float[Tensor, " prompt"]
    """Sum over the prompt's tokens of ``||eps||^2``."""
    shift: Float[Tensor, "prompt d"]
    """Sum over the prompt's tokens of ``delta = y - x``."""
    residual_shift: Float[Tensor, "prompt d"]
    """Sum over the prompt's tokens of ``eps``."""
    n_tokens: Float[Tensor, " prompt"]
    fvu_base: float
    fvu_post: float


@dataclass
class _Fvu:
    """Streaming fraction of variance unexplained of one model's activations."""

    error_sq: float = 0.0
    total_sq: float = 0.0
    n: int = 0
    sums: Tensor | None = None

    def add(self, acts: Tensor, error: Tensor) -> None:
        self.error_sq += float((error**2).sum())
        self.total_sq += float((acts**2).sum())
        self.n += len(acts)
        self.sums = acts.sum(0) if self.sums is None else self.sums + acts.sum(0)

    def value(self) -> float:
        assert self.sums is not None
        variance = self.total_sq - float((self.sums**2).sum()) / self.n
        return self.error_sq / variance if variance > 0 else float("nan")


@torch.no_grad()
def step_parts(
    store: ActivationStore, hook: str, dictionary: Dictionary, label: str, base: str | None = None
) -> StepParts:
    """Stream ``label`` and the base through ``dictionary`` at ``hook`` (one shard at a
    time) and sum the index's parts per prompt."""
    base = base or store.labels[0]
    prompts = prompt_index(store)
    n_prompts = int(store.manifest["n_prompts"])
    width = next(store.shards(base, hook)).shape[1]
    d_in = getattr(getattr(dictionary, "cfg", None), "d_in", width)
    if d_in != width:
        raise RlinterpError(f"the dictionary has d_in {d_in} but {hook} in {store.root} has width {width}")
    change = torch.zeros(n_prompts, dtype=torch.float64)
    residual = torch.zeros(n_prompts, dtype=torch.float64)
    shift = torch.zeros(n_prompts, width, dtype=torch.float64)
    residual_shift = torch.zeros(n_prompts, width, dtype=torch.float64)
    counts = torch.zeros(n_prompts, dtype=torch.float64)
    fvu_base, fvu_post = _Fvu(), _Fvu()
    offset = 0
    for x, y in zip(store.shards(base, hook), store.shards(label, hook), strict=True):
        rows = prompts[offset : offset + len(x)]
        offset += len(x)
        x64, y64 = x.double(), y.double()
        error_x = x64 - _reconstruct(dictionary, x)
        error_y = y64 - _reconstruct(dictionary, y)
        delta, eps = y64 - x64, error_y - error_x
        change.index_add_(0, rows, (delta**2).sum(-1))
        residual.index_add_(0, rows, (eps**2).sum(-1))
        shift.index_add_(0, rows, delta)
        residual_shift.index_add_(0, rows, eps)
        counts.index_add_(0, rows, torch.ones(len(x), dtype=torch.float64))
        fvu_base.add(x64, error_x)
        fvu_post.add(y64, error_y)
    step = next(int(c["step"]) for c in store.manifest["checkpoints"] if c["label"] == label)
    return StepParts(
        label, step, change, residual, shift, residual_shift, counts, fvu_base.value(), fvu_post.value()
    )


def _reconstruct(dictionary: Dictionary, x: Tensor) -> Tensor:
    device = getattr(dictionary, "device", x.device)
    return dictionary.decode(dictionary.encode(x.to(device))).double().cpu()


def _share(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where there is no change (``den == 0``), clipped to [0, 1]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return np.asarray(np.clip(share, 0.0, 1.0))


def _systematic_share(weights: np.ndarray, part: StepParts) -> np.ndarray:
    """The index for prompt weights ``[..., prompt]`` (ones: the point estimate; bootstrap
    counts: a replicate): ``||sum_p w_p eps_p||^2 / ||sum_p w_p delta_p||^2``."""
    residual = weights @ part.residual_shift.numpy()
    shift = weights @ part.shift.numpy()
    return _share(np.asarray((residual**2).sum(-1)), np.asarray((shift**2).sum(-1)))


@dataclass(frozen=True)
class NoveltyIndex:
    """The index per step with its interval and components, and the transition."""

    table: pd.DataFrame
    """One row per step: ``label, step, index, index_lo, index_hi, side`` (selection or
    novelty), ``token_residual_share, fvu_base, fvu_post, fvu_drift, mean_shift_norm,
    persona_share, persona_baseline,
    n_tokens`` (persona columns NaN without persona directions)."""
    replicates: np.ndarray
    """``[n_bootstrap, step]`` bootstrap replicates of the index."""
    transition: dict[str, Any]
    """``found`` (bool), ``step``, ``step_lo``, ``step_hi``, ``jump``, ``support`` (share of
    replicates that cross from selection to novelty), ``before``/``after`` segment means."""


def novelty_index(
    parts: Sequence[StepParts],
    cfg: IndexConfig | None = None,
    persona_basis: Float[Tensor, "d k"] | None = None,
) -> NoveltyIndex:
    """Combine per-step parts (ascending steps, typically with the base itself first) into
    the index, its bootstrap interval and the transition (see the module docstring)."""
    cfg = cfg or IndexConfig()
    if not parts:
        raise RlinterpError("the novelty index needs at least one checkpoint")
    parts = sorted(parts, key=lambda p: p.step)
    n_prompts = len(parts[0].shift)
    rng = np.random.default_rng(cfg.seed)
    counts = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=cfg.n_bootstrap).astype(float)
    replicates = np.stack([_systematic_share(counts, p) for p in parts], axis=1)  # [replicate, step]
    point = np.array([float(_systematic_share(np.ones(n_prompts), p)) for p in parts])
    tail = (1 - cfg.confidence) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail], axis=0)
    rows = []
    for i, p in enumerate(parts):
        n_tokens = float(p.n_tokens.sum())
        mean_shift = (p.shift.sum(0) / max(n_tokens, 1.0)).float()
        share, baseline = _persona_share(mean_shift, persona_basis)
        rows.append(
            {
                "label": p.label,
                "step": p.step,
                "index": float(point[i]),
                "index_lo": float(lo[i]),
                "index_hi": float(hi[i]),
                "side": "selection" if point[i] < SELECTION_SIDE else "novelty",
                "token_residual_share": float(_share(p.residual_sq.sum().numpy(), p.change_sq.sum().numpy())),
                "fvu_base": p.fvu_base,
                "fvu_post": p.fvu_post,
                "fvu_drift": p.fvu_post - p.fvu_base,
                "mean_shift_norm": float(mean_shift.norm()),
                "persona_share": share,
                "persona_baseline": baseline,
                "n_tokens": int(n_tokens),
            }
        )
    steps = [p.step for p in parts]
    return NoveltyIndex(pd.DataFrame(rows), replicates, change_point(point, replicates, steps, cfg))


def _persona_share(shift: Tensor, basis: Tensor | None) -> tuple[float, float]:
    if basis is None:
        return float("nan"), float("nan")
    total = float((shift.double() ** 2).sum())
    inside = float(((basis.double().T @ shift.double()) ** 2).sum())
    return (inside / total if total > 0 else 0.0), basis.shape[1] / basis.shape[0]


def _best_split(values: np.ndarray) -> tuple[int, float]:
    """Index ``s`` (1 <= s < len) minimising the two-segment squared error of
    ``values[:s]`` and ``values[s:]``, and the jump ``mean(after) - mean(before)``."""
    best, best_sse, jump = 1, np.inf, 0.0
    for s in range(1, len(values)):
        before, after = values[:s], values[s:]
        sse = ((before - before.mean()) ** 2).sum() + ((after - after.mean()) ** 2).sum()
        if sse < best_sse - 1e-12:
            best, best_sse, jump = s, sse, float(after.mean() - before.mean())
    return best, jump


def _crosses(values: np.ndarray, split: int, cfg: IndexConfig) -> bool:
    before, after = values[:split].mean(), values[split:].mean()
    return bool(after - before >= cfg.min_jump and before < SELECTION_SIDE <= after)


def change_point(
    point: np.ndarray, replicates: np.ndarray, steps: Sequence[int], cfg: IndexConfig
) -> dict[str, Any]:
    """The transition of an index trajectory (see the module docstring); ``found`` is False
    (and ``step`` None) when there is none."""
    none: dict[str, Any] = {"found": False, "step": None, "step_lo": None, "step_hi": None}
    if len(point) < 2:
        return {**none, "jump": 0.0, "support": 0.0, "before": None, "after": None}
    split, jump = _best_split(point)
    splits = np.array([_best_split(r) for r in replicates])
    crosses = np.array([_crosses(r, int(s), cfg) for r, (s, _) in zip(replicates, splits, strict=True)])
    support = float(crosses.mean())
    result = {
        "jump": jump,
        "support": support,
        "before": float(point[:split].mean()),
        "after": float(point[split:].mean()),
    }
    if not _crosses(point, split, cfg) or support < cfg.confidence:
        return {**none, **result}
    rising = splits[crosses, 0].astype(int)
    tail = (1 - cfg.confidence) / 2
    lo, hi = np.quantile(rising, [tail, 1 - tail], method="nearest")
    return {
        **result,
        "found": True,
        "step": int(steps[split]),
        "step_lo": int(steps[int(lo)]),
        "step_hi": int(steps[int(hi)]),
    }


def behavioural_transition(behaviour: pd.DataFrame, regime: str, column: str = "share_none") -> int | None:
    """The first step of ``regime`` in an organism behaviour table at which ``column``
    passes 50% (None if it never does): the behavioural counterpart of the transition."""
    rows = behaviour[behaviour["regime"] == regime].sort_values("step")
    passed = rows[rows[column] > 0.5]
    return None if passed.empty else int(passed["step"].iloc[0])
