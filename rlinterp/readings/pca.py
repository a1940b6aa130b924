"""Principal components of the per-token activation differences between each RL checkpoint
and the base.

For base activations ``x`` and checkpoint activations ``y`` on the same tokens (an
activation store's shards), the differences ``d = y - x`` of one hook are a token x d_model
matrix; its principal components (eigenvectors of the covariance of ``d``, largest variance
first) say in how many directions RL moved the activations and which. A change that one
feature makes (a neuron rewritten, a persona's direction amplified) is rank one: one
component with nearly all the variance. The mean difference (``diff.activations``) misses a
change whose sign depends on the context (it cancels); the components do not.

Per component the table gives the variance it explains, its cosine with the mean
difference, and, where the prompts carry a label (e.g. the organism's ``persona``), the
mean projection ``d . v`` of each label's tokens. Components are oriented so that the mean
difference projects non-negatively on them (an eigenvector's sign is arbitrary otherwise).
The readings of the components (lens, patchscope) are the caller's: see
``readings.analysis``.

Memory: streamed over the store's shards with float64 sums (``n``, ``sum d``, ``d^T d`` and
one ``sum d`` per label), i.e. one shard plus d x d, like ``diff.activations``. A checkpoint
compared with itself has zero differences: no variance, ``explained`` NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..activations.harvest import ActivationStore, hook_layer
from ..errors import RlinterpError

TABLE_COLUMNS = ["label", "step", "hook", "layer", "component", "variance", "explained", "cumulative"]
TABLE_COLUMNS += ["cos_mean_diff", "n_tokens"]
"""``DifferencePCA.table``: one row per (checkpoint, hook, component): the component's
variance, the share of the total variance of the differences it explains and the share
of the components up to it, its cosine with the mean difference, the tokens compared."""
PROJECTION_COLUMNS = ["label", "step", "hook", "component", "group", "n_tokens", "projection"]
"""``DifferencePCA.projections``: per (checkpoint, hook, component) and value ``group`` of
the prompts' label, the mean projection of that group's differences on the component."""


@dataclass(frozen=True)
class DifferencePCA:
    """Principal components of the activation differences, per checkpoint and hook."""

    table: pd.DataFrame
    """``TABLE_COLUMNS``."""
    components: dict[tuple[str, str], Float[Tensor, "k d"]]
    """``(label, hook)`` -> the components as rows, largest variance first, unit norm."""
    projections: pd.DataFrame
    """``PROJECTION_COLUMNS`` (empty without labels)."""
    mean_diffs: dict[tuple[str, str], Float[Tensor, " d"]]
    """``(label, hook)`` -> the mean difference (as ``diff.activations`` computes it)."""


@dataclass
class _Sums:
    """Streaming float64 sums of the differences of one (checkpoint, hook)."""

    n: int = 0
    total: Tensor | None = None
    outer: Tensor | None = None
    groups: dict[str, tuple[int, Tensor]] | None = None

    def add(self, diff: Tensor, groups: Sequence[str] | None) -> None:
        d64 = diff.double()
        if self.total is None:
            self.total = torch.zeros(d64.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(d64.shape[1], d64.shape[1], dtype=torch.float64)
            self.groups = {}
        assert self.outer is not None and self.groups is not None
        self.n += d64.shape[0]
        self.total += d64.sum(0)
        self.outer += d64.T @ d64
        for group in sorted(set(groups or ())):
            rows = torch.tensor([g == group for g in groups or ()])
            count, total = self.groups.get(group, (0, torch.zeros_like(self.total)))
            self.groups[group] = (count + int(rows.sum()), total + d64[rows].sum(0))


def _row_groups(store: ActivationStore, labels: Sequence[str] | None) -> list[list[str] | None]:
    """Per shard, the label of every store row's prompt (None without labels)."""
    if labels is None:
        return [None] * store.n_shards
    n_prompts = int(store.manifest["n_prompts"])
    if len(labels) != n_prompts:
        raise RlinterpError(f"{len(labels)} labels for the store's {n_prompts} prompts; give one per prompt")
    return [
        [str(labels[batch.prompts.start + int(p)]) for p in batch.keep.nonzero()[:, 0]]
        for batch in store.token_batches()
    ]


def difference_pca(
    store: ActivationStore,
    n_components: int = 5,
    labels: Sequence[str] | None = None,
    checkpoints: Sequence[str] | None = None,
) -> DifferencePCA:
    """The top ``n_components`` principal components of ``post - base`` at every hook of
    ``store`` for each of its checkpoints (or those named in ``checkpoints``; the base, the
    store's first model, is left out); ``labels``: one per prompt of the store, for the
    per-group projections."""
    if n_components < 1:
        raise RlinterpError(f"n_components must be positive, got {n_components}")
    described = store.manifest["checkpoints"]
    base = described[0]["label"]
    groups = _row_groups(store, labels)
    rows, projections, components, means = [], [], {}, {}
    for checkpoint in described[1:]:
        label = checkpoint["label"]
        if checkpoints is not None and label not in checkpoints:
            continue
        for hook in store.hooks:
            sums = _Sums()
            pairs = zip(store.shards(base, hook), store.shards(label, hook), groups, strict=True)
            for x, y, group in pairs:
                sums.add(y - x, group)
            found, table, projected = _components(sums, n_components)
            components[(label, hook)] = found
            assert sums.total is not None
            means[(label, hook)] = (sums.total / sums.n).float()
            info = {"label": label, "step": checkpoint["step"], "hook": hook}
            rows += [{**info, "layer": hook_layer(hook), **r} for r in table]
            projections += [{**info, **p} for p in projected]
    return DifferencePCA(
        pd.DataFrame(rows, columns=TABLE_COLUMNS),
        components,
        pd.DataFrame(projections, columns=PROJECTION_COLUMNS),
        means,
    )


def _components(sums: _Sums, k: int) -> tuple[Tensor, list[dict[str, Any]], list[dict[str, Any]]]:
    assert sums.total is not None and sums.outer is not None and sums.groups is not None
    if sums.n < 2:
        raise RlinterpError(f"{sums.n} token(s) in the store: too few for principal components")
    mean = sums.total / sums.n
    covariance = (sums.outer - sums.n * torch.outer(mean, mean)) / (sums.n - 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    k = min(k, len(values))
    top = vectors[:, :k].T
    top = top * torch.where(top @ mean < 0, -1.0, 1.0).unsqueeze(1).to(top)  # mean projects >= 0
    trace = float(values.sum())
    explained = values[:k] / trace if trace > 0 else torch.full((k,), float("nan"), dtype=torch.float64)
    mean_norm = float(mean.norm())
    table = [
        {
            "component": i,
            "variance": float(values[i]),
            "explained": float(explained[i]),
            "cumulative": float(explained[: i + 1].sum()),
            "cos_mean_diff": float(top[i] @ mean) / mean_norm if mean_norm > 0 else float("nan"),
            "n_tokens": sums.n,
        }
        for i in range(k)
    ]
    projected = [
        {"component": i, "group": group, "n_tokens": count, "projection": float(top[i] @ total) / count}
        for i in range(k)
        for group, (count, total) in sorted(sums.groups.items())
    ]
    return top.float(), table, projected
