"""Held-out linear probes: is a property linearly readable from a model's activations?

A probe is L2-regularised logistic regression on standardised inputs, fitted on some rows
and scored on rows it never saw, by balanced accuracy (chance 0.5 whatever the class mix).
What is held out decides what "readable" means: whole texts (``probe_feature``), so a
probe cannot memorise a repeated context, or whole values of an input (``probe_folds`` with
folds by value, as ``rules.probe_rule`` holds out numbers), so that only a property the
model computes along one direction generalises, and a lookup it does not compute stays at
chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class ProbeResult:
    """A held-out linear probe for a property."""

    balanced_accuracy: float
    """Mean of the held-out true-positive and true-negative rates (chance 0.5)."""
    n_train: int
    n_test: int
    positive_share: float
    """Share of rows with the property."""
    balanced_accuracy_lo: float = math.nan
    """Lower end of the interval over resampled groups (``probe_folds`` with ``groups``;
    NaN without)."""
    balanced_accuracy_hi: float = math.nan
    """Upper end of that interval."""


def probe_feature(
    features: Float[Tensor, "row d"],
    labels: Tensor,
    groups: Int[Tensor, " row"],
    seed: int,
    test_fraction: float = 0.3,
    weight_decay: float = 1e-3,
) -> ProbeResult:
    """A probe trained on the rows of a random ``1 - test_fraction`` of the groups and
    scored on the rest: whole texts are held out, so a probe cannot memorise a repeated
    context."""
    generator = torch.Generator().manual_seed(seed)
    unique = groups.unique()
    held = unique[
        torch.randperm(len(unique), generator=generator)[: max(1, int(len(unique) * test_fraction))]
    ]
    test = torch.isin(groups, held)
    predicted = _fit_predict(features, labels, ~test, weight_decay)
    return ProbeResult(
        balanced_accuracy=balanced_accuracy(predicted.tolist(), labels[test].tolist()),
        n_train=int((~test).sum()),
        n_test=int(test.sum()),
        positive_share=float(labels.double().mean()),
    )


def probe_folds(
    features: Float[Tensor, "row d"],
    labels: Tensor,
    folds: Sequence[Tensor],
    weight_decay: float = 1e-3,
    groups: Int[Tensor, " row"] | None = None,
    confidence: float = 0.9,
) -> ProbeResult:
    """Cross-validated probe: for each fold (a boolean mask of held-out rows) fit on the
    other rows with the two classes weighted equally, predict the held-out ones; score
    every row's out-of-fold prediction. Equal class weights keep the bias from guessing
    whichever class a fold left more of in training, which on a property the features do
    not carry turns chance into systematic error (measured on the organism: a rule over
    held-out numbers read 0.15-0.18 without them). With ``groups`` (the held-out value of
    each row, e.g. its number) the balanced accuracy gets a ``confidence`` interval over
    resampled groups: rows of one value share it, so they are not independent evidence."""
    predicted = torch.zeros(len(labels), dtype=torch.bool)
    tested = torch.zeros(len(labels), dtype=torch.bool)
    for held in folds:
        predicted[held] = _fit_predict(features, labels, ~held, weight_decay, balance=True)
        tested |= held
    lo = hi = math.nan
    if groups is not None:
        lo, hi = _group_interval(predicted[tested], labels[tested].bool(), groups[tested], confidence)
    return ProbeResult(
        balanced_accuracy=balanced_accuracy(predicted[tested].tolist(), labels[tested].tolist()),
        n_train=int(len(labels) - min(int(f.sum()) for f in folds)),
        n_test=int(tested.sum()),
        positive_share=float(labels.double().mean()),
        balanced_accuracy_lo=lo,
        balanced_accuracy_hi=hi,
    )


def _group_interval(
    predicted: Tensor, truth: Tensor, groups: Tensor, confidence: float, n_resamples: int = 2000
) -> tuple[float, float]:
    """Percentile interval of the balanced accuracy over resamples of whole groups."""
    _, group = groups.unique(return_inverse=True)
    n_groups = int(group.max()) + 1
    hit = (predicted == truth).double()

    def per_group(mask: Tensor) -> Tensor:
        counts = torch.zeros(n_groups, 2, dtype=torch.float64)
        counts[:, 0].index_add_(0, group[mask], hit[mask])
        counts[:, 1].index_add_(0, group[mask], torch.ones(int(mask.sum()), dtype=torch.float64))
        return counts

    positive, negative = per_group(truth), per_group(~truth)
    generator = torch.Generator().manual_seed(0)  # an interval is a summary, not a sample
    picks = torch.randint(0, n_groups, (n_resamples, n_groups), generator=generator)
    weights = torch.zeros(n_resamples, n_groups, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(n_resamples, n_groups, dtype=torch.float64)
    )
    rates = [(weights @ c[:, 0]) / (weights @ c[:, 1]) for c in (positive, negative)]
    replicates = torch.stack(rates).nanmean(0)  # a resample without one class: the other's rate
    tail = (1 - confidence) / 2
    lo, hi = torch.nanquantile(replicates, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(lo), float(hi)


def _fit_predict(
    features: Tensor, labels: Tensor, train: Tensor, weight_decay: float, balance: bool = False
) -> Tensor:
    """L2-regularised logistic regression (full-batch L-BFGS, inputs standardised on the
    training rows) fitted on the ``train`` rows, with the two classes weighted equally if
    ``balance``; its predictions on the other rows. Torch's optimiser keeps the caller's
    thread count (scipy's, through a threaded BLAS, took 15 times the CPU on a loaded
    2-core machine)."""
    x, y = features.double(), labels.double()
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    xt, yt = x[train], y[train]
    weights = None
    if balance:
        positive = float(yt.mean().clamp(1e-6, 1 - 1e-6))
        weights = torch.where(yt > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ weight + bias, yt, weight=weights)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (x[~train] @ weight + bias) > 0


def balanced_accuracy(predicted: Sequence[bool], truth: Sequence[bool]) -> float:
    """Mean of the true-positive and true-negative rates over the classes present in
    ``truth`` (0.5 for a constant guess; NaN when ``truth`` is empty)."""
    rates = []
    for value in (True, False):
        hits = [p == t for p, t in zip(predicted, truth, strict=True) if t == value]
        if hits:
            rates.append(sum(hits) / len(hits))
    return sum(rates) / len(rates) if rates else math.nan
