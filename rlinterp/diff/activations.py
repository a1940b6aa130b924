"""Activation diffs between the base model and each RL checkpoint, per hook, streamed over
the shards of an activation store (so memory stays at one shard plus d x d moments).

For base activations ``x`` and post activations ``y`` on the same tokens:

- ``mean_diff``: the mean of ``y - x`` (a vector; its norm is in the table);
- ``rel_diff_norm``: mean over tokens of ``||y - x|| / ||x||``;
- ``cosine``: mean over tokens of ``cos(x, y)``;
- ``cka``: linear CKA between the two token x d matrices (1 when they are equal up to
  rotation and scale; computed from streamed first and second moments);
- quantiles of the per-token ``||y - x||`` and the tokens that change most.

A model compared with itself gives exactly zero difference, cosine 1 and CKA 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..activations.harvest import ActivationStore, hook_layer

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class _Moments:
    """Streaming sums for one (checkpoint, hook) pair, in float64."""

    n: int = 0
    sum_x: Tensor | None = None
    sum_y: Tensor | None = None
    xx: Tensor | None = None
    yy: Tensor | None = None
    xy: Tensor | None = None
    rel: float = 0.0
    cos: float = 0.0
    diff_norms: list[Tensor] = field(default_factory=list)

    def add(self, x: Float[Tensor, "token d"], y: Float[Tensor, "token d"]) -> None:
        x64, y64 = x.double(), y.double()
        if self.sum_x is None:
            d = x.shape[1]
            self.sum_x, self.sum_y = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
            self.xx, self.yy, self.xy = (torch.zeros(d, d, dtype=torch.float64) for _ in range(3))
        assert self.sum_y is not None and self.xx is not None and self.yy is not None and self.xy is not None
        self.n += x.shape[0]
        self.sum_x += x64.sum(0)
        self.sum_y += y64.sum(0)
        self.xx += x64.T @ x64
        self.yy += y64.T @ y64
        self.xy += x64.T @ y64
        diff = (y64 - x64).norm(dim=-1)
        self.diff_norms.append(diff.float())
        self.rel += (diff / x64.norm(dim=-1).clamp_min(1e-12)).sum().item()
        self.cos += torch.nn.functional.cosine_similarity(x64, y64, dim=-1).sum().item()

    def cka(self) -> float:
        assert self.sum_x is not None and self.sum_y is not None
        assert self.xx is not None and self.yy is not None and self.xy is not None
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        cxx = self.xx - self.n * torch.outer(mx, mx)
        cyy = self.yy - self.n * torch.outer(my, my)
        cxy = self.xy - self.n * torch.outer(mx, my)
        denominator = (cxx.norm() * cyy.norm()).item()
        return (cxy.norm() ** 2).item() / denominator if denominator > 0 else 1.0


@dataclass(frozen=True)
class ActivationDiff:
    """Activation change of every checkpoint against the base, per hook."""

    table: pd.DataFrame
    """One row per (checkpoint, hook): ``label, step, hook, layer, n_tokens,
    mean_diff_norm, rel_diff_norm, cosine, cka, diff_norm_p50/p90/p99/max``."""
    mean_diffs: dict[tuple[str, str], Float[Tensor, " d"]]
    """``(label, hook)`` -> the mean difference vector (post - base)."""
    top_tokens: pd.DataFrame
    """The tokens whose activation changed most: ``label, hook, rank, row, diff_norm``
    where ``row`` indexes the store's kept tokens."""

    def to_frame(self) -> pd.DataFrame:
        return self.table


def diff_activations(
    store: ActivationStore, top_k: int = 10, labels: Sequence[str] | None = None
) -> ActivationDiff:
    """Compare every checkpoint of ``store`` (or those of ``labels``) with its base (the
    first checkpoint)."""
    checkpoints = store.manifest["checkpoints"]
    base = checkpoints[0]["label"]
    rows, tops, mean_diffs = [], [], {}
    for checkpoint in checkpoints:
        if labels is not None and checkpoint["label"] not in labels:
            continue
        label = checkpoint["label"]
        for hook in store.hooks:
            moments = _Moments()
            for x, y in zip(store.shards(base, hook), store.shards(label, hook), strict=True):
                moments.add(x, y)
            assert moments.sum_x is not None and moments.sum_y is not None
            mean_diff = ((moments.sum_y - moments.sum_x) / moments.n).float()
            mean_diffs[(label, hook)] = mean_diff
            norms = torch.cat(moments.diff_norms)
            quantiles = torch.quantile(norms, torch.tensor(QUANTILES)).tolist()
            rows.append(
                {
                    "label": label,
                    "step": checkpoint["step"],
                    "hook": hook,
                    "layer": hook_layer(hook),
                    "n_tokens": moments.n,
                    "mean_diff_norm": mean_diff.norm().item(),
                    "rel_diff_norm": moments.rel / moments.n,
                    "cosine": moments.cos / moments.n,
                    "cka": moments.cka(),
                    **{f"diff_norm_p{round(q * 100)}": v for q, v in zip(QUANTILES, quantiles, strict=True)},
                    "diff_norm_max": norms.max().item(),
                }
            )
            values, index = norms.topk(min(top_k, len(norms)))
            tops += [
                {"label": label, "hook": hook, "rank": r, "row": int(i), "diff_norm": float(v)}
                for r, (v, i) in enumerate(zip(values, index, strict=True))
                if v > 0
            ]
    return ActivationDiff(pd.DataFrame(rows), mean_diffs, pd.DataFrame(tops))


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Row-wise concatenation of per-checkpoint tables, empty ones (no rows) left out, so the
    result is the table that one pass over every checkpoint builds."""
    found = [f for f in frames if len(f)]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame()


def merge_activation_diffs(parts: Sequence[ActivationDiff]) -> ActivationDiff:
    """Per-checkpoint diffs (in checkpoint order) as one."""
    return ActivationDiff(
        concat_frames([p.table for p in parts]),
        {key: value for p in parts for key, value in p.mean_diffs.items()},
        concat_frames([p.top_tokens for p in parts]),
    )
