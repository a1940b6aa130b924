"""Held-out ridge read-outs: how much of a target a linear read-out of some features cannot
predict on texts it was not fitted on (``heldout_residuals``), the measurement behind
``selection.readout``.

Invariants: features are standardised and an intercept fitted, so the penalty means the same
on any feature scale; the penalty is chosen once per call on a held-out fold, never on the
fold being scored; every token is scored by a fit that did not see its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


def heldout_residuals(
    features: Float[Tensor, "token f"],
    target: Float[Tensor, "token d"],
    folds: Int[Tensor, "*repeat token"],
    ridge: Sequence[float],
) -> Float[Tensor, "*repeat token"]:
    """Per fold partition and token, the squared error of a ridge read-out of ``target``
    from ``features`` fitted on the partition's other folds (standardised features,
    intercept). The penalty is chosen once among ``ridge``, on the first fold of the first
    partition held out from the others. The sufficient statistics are computed once per
    cell of the partitions' intersection and summed into each fold, so more partitions cost
    little more than one; both sides are centred on their overall mean first, so the float32
    cross-products lose nothing to cancellation."""
    single = folds.ndim == 1
    folds = folds.reshape(-1, len(target)).long()
    n_folds = int(folds.max()) + 1
    code = (folds * n_folds ** torch.arange(len(folds)).unsqueeze(1)).sum(0)
    cells, cell = torch.unique(code, return_inverse=True)
    x = features.float() - features.double().mean(0).float()
    y = target.float() - target.double().mean(0).float()
    stats = [_Stats.of(x[cell == c], y[cell == c]) for c in range(len(cells))]
    members = [
        [c for c in range(len(cells)) if int(folds[r][cell == c][0]) == k]
        for r in range(len(folds))
        for k in range(n_folds)
    ]
    per_fold = [_Stats.sum([stats[c] for c in m]) if m else None for m in members]
    first = [p for p in per_fold[:n_folds] if p is not None]
    lam = ridge[0] if len(first) < 2 else ridge[int(np.argmin(first[0].errors(_Stats.sum(first[1:]), ridge)))]
    residual = torch.zeros(folds.shape, dtype=torch.float64)
    for r in range(len(folds)):
        held = per_fold[r * n_folds : (r + 1) * n_folds]
        for k, part in enumerate(held):
            if part is None:
                continue
            fit = _Stats.sum([p for j, p in enumerate(held) if j != k and p is not None]).fit(lam)
            rows = folds[r] == k
            residual[r, rows] = (y[rows] - fit.predict(x[rows])).double().pow(2).sum(-1)
    return residual[0] if single else residual


@dataclass(frozen=True)
class _Fit:
    weights: Tensor
    x_mean: Tensor
    x_scale: Tensor
    y_mean: Tensor

    def predict(self, x: Tensor) -> Tensor:
        w = (self.weights / self.x_scale.unsqueeze(1)).float()
        return x @ w + (self.y_mean - self.x_mean @ (self.weights / self.x_scale.unsqueeze(1))).float()


@dataclass(frozen=True)
class _Stats:
    """Sufficient statistics of a ridge read-out on some rows (sums, cross-products)."""

    n: float
    x: Tensor
    y: Tensor
    xx: Tensor
    xy: Tensor
    yy: float

    @classmethod
    def of(cls, x: Tensor, y: Tensor) -> _Stats:
        def d(t: Tensor) -> Tensor:
            return t.double()

        return cls(float(len(x)), d(x).sum(0), d(y).sum(0), d(x.T @ x), d(x.T @ y), float(d(y).pow(2).sum()))

    @classmethod
    def sum(cls, parts: Sequence[_Stats]) -> _Stats:
        first = parts[0]
        return cls(
            sum(p.n for p in parts),
            sum((p.x for p in parts[1:]), first.x),
            sum((p.y for p in parts[1:]), first.y),
            sum((p.xx for p in parts[1:]), first.xx),
            sum((p.xy for p in parts[1:]), first.xy),
            sum(p.yy for p in parts),
        )

    def _standardised(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        mx, my = self.x / self.n, self.y / self.n
        cov = self.xx / self.n - torch.outer(mx, mx)
        scale = cov.diagonal().clamp_min(0).sqrt().clamp_min(1e-8)
        gram = cov / torch.outer(scale, scale)
        cross = (self.xy / self.n - torch.outer(mx, my)) / scale.unsqueeze(1)
        return gram, cross, mx, my, scale

    def fit(self, lam: float) -> _Fit:
        gram, cross, mx, my, scale = self._standardised()
        eye = torch.eye(len(gram), dtype=gram.dtype)
        return _Fit(torch.linalg.solve(gram + lam * eye, cross), mx, scale, my)

    def errors(self, train: _Stats, ridge: Sequence[float]) -> list[float]:
        """Squared error on these rows of ``train``'s fit at each penalty (one
        eigendecomposition for all)."""
        gram, cross, mx, my, scale = train._standardised()
        values, vectors = torch.linalg.eigh(gram)
        projected = vectors.T @ cross
        fits = [_Fit(vectors @ (projected / (values + lam).unsqueeze(1)), mx, scale, my) for lam in ridge]
        return [self.error(fit) for fit in fits]

    def error(self, fit: _Fit) -> float:
        """Total squared error of ``fit`` on these rows, from the statistics alone."""
        w = fit.weights / fit.x_scale.unsqueeze(1)
        b = fit.y_mean - fit.x_mean @ w  # prediction = x @ w + b
        quad = float((w * (self.xx @ w)).sum()) + 2 * float(b @ (self.x @ w)) + self.n * float(b @ b)
        return self.yy - 2 * float((w * self.xy).sum()) - 2 * float(b @ self.y) + quad
