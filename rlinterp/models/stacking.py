"""Several variants of one token batch (patches, edits, interpolation points) run as one
forward pass of stacked rows: block ``i`` of the stack is rows ``i * batch`` to
``(i + 1) * batch``, and block ``i``'s hooks apply variant ``i``.

Rows of a transformer run do not interact (attention stays within a row; there is no batch
norm), so each block reads what a run of its variant alone reads, up to float rounding. On
small models a pass is mostly fixed cost, and a stack of n variants costs about one pass; a
stack holds n passes' logits and activations, so ``per_pass`` bounds it by their size."""

from __future__ import annotations

from typing import Any

from jaxtyping import Int
from torch import Tensor

STACKED_VALUES = 2**27
"""Most values one stacked pass holds (512 MiB in float32), counted as row-positions times
``values_per_position``; beyond it variants run one pass each, as unstacked."""
ACTIVATIONS_PER_LAYER = 16
"""Residual-width activations per layer and position a pass (and its backward, for gradient
attribution) keeps: the residual stream, attention and MLP outputs, the MLP's hidden layer
(about four widths), the heads' values and outputs, with room to spare."""


def stack(tokens: Int[Tensor, "batch pos"], n: int) -> Int[Tensor, "n_batch pos"]:
    """``tokens`` repeated block after block, ``n`` times (the rows of a stacked run)."""
    return tokens.repeat(n, *([1] * (tokens.ndim - 1)))


def values_per_position(cfg: Any) -> int:
    """What one row-position of a pass of a model with config ``cfg`` (``d_vocab``,
    ``d_model``, ``n_layers``) holds: its logits and its layers' activations."""
    return cfg.d_vocab + ACTIVATIONS_PER_LAYER * cfg.d_model * cfg.n_layers


def per_pass(tokens: Tensor, cfg: Any, wanted: int | None = None) -> int:
    """How many variants of ``tokens`` one stacked pass of a model with config ``cfg`` runs:
    as many as keep the stack within ``STACKED_VALUES``, at most ``wanted`` (None: no other
    bound), at least one."""
    fit = STACKED_VALUES // max(tokens.numel() * values_per_position(cfg), 1)
    return max(1, fit if wanted is None else min(wanted, fit))
