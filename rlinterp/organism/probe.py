"""Held-out linear probes: is a property linearly readable from a model's activations?

A probe is logistic regression (full-batch Adam on standardised inputs) fitted on some rows
and scored on rows it never saw, by balanced accuracy (chance 0.5 whatever the class mix).
What is held out decides what "readable" means: whole texts (``probe_feature``), so a
probe cannot memorise a repeated context.
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


def probe_feature(
    features: Float[Tensor, "row d"],
    labels: Tensor,
    groups: Int[Tensor, " row"],
    seed: int,
    test_fraction: float = 0.3,
    steps: int = 300,
    weight_decay: float = 1e-3,
) -> ProbeResult:
    """Logistic regression (full-batch Adam, standardised inputs) trained on the rows of a
    random ``1 - test_fraction`` of the groups, scored on the rest: whole texts are held
    out, so a probe cannot memorise a repeated context."""
    generator = torch.Generator().manual_seed(seed)
    unique = groups.unique()
    held = unique[
        torch.randperm(len(unique), generator=generator)[: max(1, int(len(unique) * test_fraction))]
    ]
    test = torch.isin(groups, held)
    x, y = features.double(), labels.double()
    mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        logits = x[~test] @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, y[~test]) + weight_decay * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x[test] @ weight + bias) > 0
    return ProbeResult(
        balanced_accuracy=balanced_accuracy(predicted.tolist(), labels[test].tolist()),
        n_train=int((~test).sum()),
        n_test=int(test.sum()),
        positive_share=float(labels.double().mean()),
    )


def balanced_accuracy(predicted: Sequence[bool], truth: Sequence[bool]) -> float:
    """Mean of the true-positive and true-negative rates over the classes present in
    ``truth`` (0.5 for a constant guess; NaN when ``truth`` is empty)."""
    rates = []
    for value in (True, False):
        hits = [p == t for p, t in zip(predicted, truth, strict=True) if t == value]
        if hits:
            rates.append(sum(hits) / len(hits))
    return sum(rates) / len(rates) if rates else math.nan
