"""Determinism helpers: named random streams and a fixed torch thread count.

Results on CPU are bit-identical only at a fixed intra-op thread count (reductions split
differently), and an unset count collapses under contention on small shared machines, so
every long computation in rlinterp runs inside ``torch_threads``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager


def stream_seed(seed: int, *names: str) -> int:
    """A seed for one named random stream, stable across processes (unlike ``hash``)."""
    return zlib.crc32("/".join([str(seed), *names]).encode())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count."""
    import torch  # here: ``stream_seed`` alone must not need torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
