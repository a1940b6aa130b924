"""The selection-versus-novelty index: per step and per block, how much of what RL changed the
base model's own computation cannot express, with an interval over every source of variance
we can name, a verdict per step that names its block, and the transition.

**Definition** (``selection.readout`` has it in full, with its failure modes): at each block,
the *local change* is what the checkpoint's block computes differently from the base's block
on the same (the checkpoint's) input. It is **selection** when a linear read-out of the base
block's own computation (its head outputs and neurons on that input) predicts it on held-out
texts, and **novelty** when the base predicts it no better than a seed control, an unrelated
computation of the same size. A block's **novelty** is the read-out's held-out residual
energy over the control's: 0 for a re-weighting of what the base computes (including one
whose sign depends on the context, so that its mean shift cancels), about 1 for a
computation the base does not have.

**Interval**: each of ``n_bootstrap`` replicates resamples the texts (the same resamples at
every step and block, so trajectories stay coherent), draws one of the read-out's fold
partitions (its fit) and one seed of the control. A block reads ``selection`` when the
interval lies below ``SELECTION_SIDE``, ``novelty`` when it lies above, ``undecided`` when it
straddles it.

**Per block**: each component (attention, MLP) is read on its own and the block reads as its
more novel one, so a re-weighting in the attention does not dilute new computation in the
MLP (per replicate, so the interval covers the choice). **Per step**: the step's index is
the largest of its blocks' (per replicate too); the step reads ``novelty`` when a block
does, ``selection`` when every block does, ``undecided`` otherwise, and ``layer`` names the
block with the largest novelty. A block whose read-out has nothing to read (no local change) reads 0.

**Transition** (from selection to novelty): the best single change point of the per-step
index (two-segment least squares). It is reported only if the segments lie on either side of
``SELECTION_SIDE`` and the jump between them is at least ``min_jump``, both in the point
estimate and in ``confidence`` of the replicates; its interval is the percentile range of the
change point over those replicates, and ``layer`` names the block the transition step's
novelty comes from. A rise that stays on one side is not a transition (its size is still
reported as ``jump``).

The dictionary-based share (``selection.explanation``) is the feature-level explanation
beside it: which latents of a base dictionary carry the change.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ..errors import RlinterpError
from .config import IndexConfig as IndexConfig

if TYPE_CHECKING:  # the index itself is numpy: reports read its rules without torch
    from .readout import BlockParts

SELECTION_SIDE = 0.5
"""The boundary: a block (or step) whose interval lies below reads selection, above novelty."""
Reading = Literal["selection", "novelty", "undecided"]


def reading(lo: float, hi: float) -> Reading:
    """How a block reads from its novelty interval ``[lo, hi]``: ``novelty`` when all of it
    lies above ``SELECTION_SIDE``, ``selection`` when all of it lies below, ``undecided``
    when it straddles it (the point estimate alone would pick a side)."""
    if lo > SELECTION_SIDE:
        return "novelty"
    return "selection" if hi < SELECTION_SIDE else "undecided"


def step_reading(blocks: Collection[str]) -> Reading:
    """How a step reads from its blocks' readings: ``novelty`` when any block does (new
    computation anywhere is new computation), ``selection`` when every block does,
    ``undecided`` otherwise."""
    if "novelty" in blocks:
        return "novelty"
    return "selection" if set(blocks) == {"selection"} else "undecided"


LAYER_COLUMNS = (
    "label",
    "step",
    "layer",
    "hook",
    "novelty",
    "novelty_lo",
    "novelty_hi",
    "side",
    "component",
    "novelty_attn",
    "novelty_mlp",
    "unexplained_base",
    "unexplained_control",
    "local_share",
    "local_rms",
    "change_rms",
    "n_tokens",
)
"""``NoveltyIndex.layers``: per (step, block), the block's novelty (its more novel
component's, named in ``component``) with interval and side; each component's novelty
(``novelty_attn``, ``novelty_mlp``); the named component's held-out unexplained shares of its
local change (base, control mean); ``local_share`` (the block's local change's energy,
both components, over the whole change's at its output), ``local_rms`` and ``change_rms``
(per token)."""


@dataclass(frozen=True)
class NoveltyIndex:
    """The index per step and per block with intervals, and the transition."""

    table: pd.DataFrame
    """One row per step: ``label, step, index, index_lo, index_hi, side`` (selection,
    novelty or undecided), ``layer`` and ``hook`` (the block with the largest novelty)."""
    layers: pd.DataFrame
    """One row per (step, block): ``LAYER_COLUMNS``."""
    replicates: np.ndarray
    """``[n_bootstrap, step]`` replicates of the per-step index."""
    transition: dict[str, Any]
    """``found`` (bool), ``step``, ``step_lo``, ``step_hi``, ``layer``, ``jump``, ``support``
    (share of replicates that cross from selection to novelty), ``before``/``after``
    segment means."""


def novelty_index(parts: Sequence[BlockParts], cfg: IndexConfig | None = None) -> NoveltyIndex:
    """Combine the read-out's per-block parts (every step at every block; typically with the
    base itself as step 0) into the index, its intervals, the verdicts and the transition
    (see the module docstring)."""
    cfg = cfg or IndexConfig()
    if not parts:
        raise RlinterpError("the novelty index needs at least one checkpoint")
    steps = sorted({p.step for p in parts})
    blocks = sorted({p.layer for p in parts})
    components = sorted({p.component for p in parts})
    by_key = {(p.step, p.layer, p.component): p for p in parts}
    missing = [(s, b, c) for s in steps for b in blocks for c in components if (s, b, c) not in by_key]
    if missing:
        raise RlinterpError(
            f"the read-out lacks (step, layer, component) {missing[:3]}; every step needs every block"
        )
    first = parts[0]
    n_prompts = first.local_sq.shape[0]
    n_controls, n_repeats = first.control_residual.shape[:2]
    rng = np.random.default_rng(cfg.seed)
    draw = Draws(
        rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=cfg.n_bootstrap).astype(float),
        rng.integers(n_repeats, size=cfg.n_bootstrap),
        rng.integers(n_controls, size=cfg.n_bootstrap),
    )
    tail = (1 - cfg.confidence) / 2
    rows, per_block = [], np.zeros((cfg.n_bootstrap, len(steps), len(blocks)))
    point = np.zeros((len(steps), len(blocks)))
    for i, step in enumerate(steps):
        for j, block in enumerate(blocks):
            own = [by_key[(step, block, c)] for c in components]
            each = np.stack([_novelty_replicates(part, draw, cfg.min_control) for part in own])
            points = np.array([_novelty_point(part, cfg.min_control) for part in own])
            per_block[:, i, j] = each.max(axis=0)  # a block is as novel as its more novel component
            point[i, j] = points.max()
            lo, hi = np.quantile(per_block[:, i, j], [tail, 1 - tail])
            rows.append(_layer_row(own, points, float(lo), float(hi)))
    layers = pd.DataFrame(rows, columns=list(LAYER_COLUMNS))
    replicates = per_block.max(axis=2)
    named = point.argmax(axis=1)
    labels = {p.step: p.label for p in parts}
    table = []
    for i, step in enumerate(steps):
        block_sides = layers.loc[layers["step"] == step, "side"]
        lo, hi = np.quantile(replicates[:, i], [tail, 1 - tail])
        table.append(
            {
                "label": labels[step],
                "step": step,
                "index": float(point[i].max()),
                "index_lo": float(lo),
                "index_hi": float(hi),
                "side": step_reading(set(block_sides)),
                "layer": blocks[int(named[i])],
                "hook": _hook(blocks[int(named[i])]),
            }
        )
    transition = change_point(point.max(axis=1), replicates, steps, cfg)
    layer = None if transition["step"] is None else blocks[int(named[steps.index(transition["step"])])]
    return NoveltyIndex(pd.DataFrame(table), layers, replicates, {**transition, "layer": layer})


def _hook(layer: int) -> str:
    return f"blocks.{layer}"


@dataclass(frozen=True)
class Draws:
    """What each bootstrap replicate draws."""

    counts: np.ndarray
    """``[replicate, prompt]`` multinomial weights of the texts."""
    repeat: np.ndarray
    """``[replicate]`` fold partition of the read-out."""
    control: np.ndarray
    """``[replicate]`` seed of the control."""


def _ratio(base: np.ndarray, control: np.ndarray, local: np.ndarray, floor: float) -> np.ndarray:
    """``base / max(control, floor * local)``, 0 where nothing changed, clipped to [0, 1]."""
    den = np.maximum(control, floor * local)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den > 0, base / np.where(den > 0, den, 1), 0.0)
    return np.asarray(np.clip(ratio, 0.0, 1.0))


def _novelty_replicates(part: BlockParts, draw: Draws, floor: float) -> np.ndarray:
    base = part.base_residual.numpy()  # [repeat, prompt]
    control = part.control_residual.numpy()  # [control, repeat, prompt]
    w = draw.counts
    return _ratio(
        (w * base[draw.repeat]).sum(1),
        (w * control[draw.control, draw.repeat]).sum(1),
        w @ part.local_sq.numpy(),
        floor,
    )


def _novelty_point(part: BlockParts, floor: float) -> float:
    base = float(part.base_residual.sum(1).mean())
    control = float(part.control_residual.sum(2).mean())
    return float(_ratio(np.array(base), np.array(control), np.array(float(part.local_sq.sum())), floor))


def _layer_row(parts: list[BlockParts], points: np.ndarray, lo: float, hi: float) -> dict[str, Any]:
    named = parts[int(points.argmax())]
    local = sum(float(p.local_sq.sum()) for p in parts)
    own = float(named.local_sq.sum())
    change, n = (float(x.sum()) for x in (named.change_sq, named.n_tokens))
    novelty = float(points.max())
    return {
        "label": named.label,
        "step": named.step,
        "layer": named.layer,
        "hook": _hook(named.layer),
        "novelty": novelty,
        "novelty_lo": lo,
        "novelty_hi": hi,
        "side": reading(lo, hi),
        "component": named.component,
        **{f"novelty_{p.component}": float(v) for p, v in zip(parts, points, strict=True)},
        "unexplained_base": float(named.base_residual.sum(1).mean()) / own if own > 0 else 0.0,
        "unexplained_control": float(named.control_residual.sum(2).mean()) / own if own > 0 else 0.0,
        "local_share": local / change if change > 0 else 0.0,
        "local_rms": (local / n) ** 0.5 if n > 0 else 0.0,
        "change_rms": (change / n) ** 0.5 if n > 0 else 0.0,
        "n_tokens": int(n),
    }


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
