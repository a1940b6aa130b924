"""Several variants of one token batch (patches, edits, interpolation points) run as one
forward pass of stacked rows: block ``i`` of the stack is rows ``i * batch`` to
``(i + 1) * batch``, and block ``i``'s hooks apply variant ``i``.

Rows of a transformer run do not interact (attention stays within a row; there is no batch
norm), so each block reads what a run of its variant alone reads, up to float rounding. On
small models a pass is mostly fixed cost, and a stack of n variants costs about one pass; on
large ones a stack holds n passes' activations, so ``per_pass`` bounds it by the logits it
holds (the largest tensor of a language model's pass)."""

from __future__ import annotations

from jaxtyping import Int
from torch import Tensor

STACKED_LOGITS = 2**27
"""Most logits (rows x positions x vocabulary: 512 MiB in float32) one stacked pass holds;
beyond it variants run one pass each, as unstacked."""


def stack(tokens: Int[Tensor, "batch pos"], n: int) -> Int[Tensor, "n_batch pos"]:
    """``tokens`` repeated block after block, ``n`` times (the rows of a stacked run)."""
    return tokens.repeat(n, *([1] * (tokens.ndim - 1)))


def per_pass(tokens: Tensor, d_vocab: int, wanted: int | None = None) -> int:
    """How many variants of ``tokens`` one stacked pass runs: as many as keep the stack's
    logits within ``STACKED_LOGITS``, at most ``wanted`` (None: no other bound), at least
    one."""
    fit = STACKED_LOGITS // max(tokens.numel() * d_vocab, 1)
    return max(1, fit if wanted is None else min(wanted, fit))
