"""Calibration: the matmul rate this machine reaches, at the shapes each lane multiplies.

Every lane states its work in dense-equivalent FLOPs per token (``FLOPS`` says how), and
its efficiency is eta = achieved FLOP/s / calibrated FLOP/s, where the calibrated rate is
that of the lane's own matmuls: total FLOPs over total seconds of one ``a @ b`` per shape
(median of several timings, after a warm-up), on the same thread count.
"""

from __future__ import annotations

import statistics
import time

import torch

Shape = tuple[int, int, int]
"""``(m, k, n)``: an ``[m, k] @ [k, n]`` product, 2 m k n FLOPs."""

FLOPS = {
    "sae": "12 * d_in * d_sae per token: a dense TopK SAE step (encoder and decoder matmuls, "
    "2 * d_in * d_sae FLOPs each, forward; the backward pass twice the forward)",
    "crosscoder": "12 * n_models * d_in * d_sae per token (the SAE count for every model's encoder "
    "and decoder)",
    "forward": "2 * N + 2 * n_layer * n_ctx * d_model per token: N the non-embedding weights of the "
    "blocks plus the unembedding (each weight one multiply-add per token), the second term "
    "attention's scores and mixing at context n_ctx; the same count for every contender of a "
    "shape (a harvest that stops early does not get credit for the layers it skips)",
}


def sae_shapes(batch: int, d_in: int, d_sae: int) -> list[Shape]:
    """The matmuls of one SAE training step: encoder and decoder forward, then the
    gradients of the decoder weights, of the latents and of the encoder weights."""
    return [(batch, d_in, d_sae), (batch, d_sae, d_in), (d_sae, batch, d_in), (batch, d_in, d_sae),
            (d_in, batch, d_sae)]  # fmt: skip


def forward_shapes(tokens: int, d_model: int) -> list[Shape]:
    """The matmuls of one GPT-2 block's forward pass on ``tokens`` tokens."""
    return [(tokens, d_model, 3 * d_model), (tokens, d_model, d_model), (tokens, d_model, 4 * d_model),
            (tokens, 4 * d_model, d_model)]  # fmt: skip


def matmul_seconds(shape: Shape, repeats: int = 5) -> float:
    """Median seconds of one ``[m, k] @ [k, n]`` product, in the lanes' dtype on their
    device (float32 on a CPU, bfloat16 on a GPU)."""
    from _measure import DEVICE, DTYPE, synchronize

    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(DEVICE, DTYPE)
    b = torch.randn(k, n, generator=g).to(DEVICE, DTYPE)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        a @ b
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(lanes: dict[str, list[Shape]], repeats: int = 5) -> dict[str, dict]:
    """Per lane: each shape's GFLOP/s and the lane's rate (total FLOPs over total time)."""
    out = {}
    for lane, shapes in lanes.items():
        rows, flops, seconds = [], 0.0, 0.0
        for shape in shapes:
            s = matmul_seconds(shape, repeats)
            f = 2.0 * shape[0] * shape[1] * shape[2]
            rows.append({"m": shape[0], "k": shape[1], "n": shape[2], "gflops": f / s / 1e9})
            flops, seconds = flops + f, seconds + s
        out[lane] = {"shapes": rows, "gflops": flops / seconds / 1e9}
    return out
