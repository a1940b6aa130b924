"""Causal checks of "selection": steer the base model along what RL amplified, ablate it from
the RL checkpoint, and measure how much of the checkpoint's output change that moves.

For one hook and one vector ``v`` (typically the checkpoint's mean activation shift at the
hook projected onto the persona directions; any vector works), added to or subtracted from
the activation at every real (non-padding) position of an activation store's prompts, and
measured on its kept tokens (the positions its statistics use):

- ``kl_gap``: mean KL(post || base) of the next-token distributions, the change to explain;
- **steering**: the base with ``v`` added at the hook; ``steering_recovery =
  1 - KL(post || base + v) / kl_gap``: 1 if adding ``v`` turns the base into the checkpoint,
  0 if it does not help, negative if it moves the base elsewhere;
- **ablation**: the checkpoint with ``v`` subtracted; ``ablation_loss =
  1 - KL(post - v || base) / kl_gap``: 1 if removing ``v`` undoes the checkpoint's change;
- a **control** per check: a random vector of the same norm (seeded), which a real effect
  must beat.

Selection predicts high recovery and loss along the persona shift; new computation
predicts low values. A checkpoint identical to the base has ``kl_gap`` 0 and NaN ratios.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .errors import RlinterpError
from .harvest import ActivationStore
from .series import ModelSeries


@dataclass(frozen=True)
class CausalResult:
    """Steering and ablation of one vector for one checkpoint (see the module docstring)."""

    label: str
    step: int
    hook: str
    vector_norm: float
    kl_gap: float
    kl_steered: float
    kl_ablated: float
    steering_recovery: float
    ablation_loss: float
    random_steering_recovery: float
    """The same check with a random vector of the same norm: the control."""
    random_ablation_loss: float


def _add(real: Tensor, vector: Tensor) -> Callable[[Tensor, Any], Tensor]:
    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        del hook
        return activation + real.unsqueeze(-1).to(activation.dtype) * vector.to(activation)

    return hook_fn


def _batches(store: ActivationStore, device: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``tokens, real, keep`` per token batch of the store (real: non-padding positions)."""
    for batch in store.token_batches():
        positions = torch.arange(batch.tokens.shape[1]).unsqueeze(0)
        real = positions < batch.lengths.unsqueeze(1)
        yield batch.tokens.to(device), real.to(device), batch.keep.to(device)


def _log_probs(model: Any, batch: tuple[Tensor, Tensor, Tensor], hook: str, vector: Tensor | None) -> Tensor:
    tokens, real, keep = batch
    hooks = [] if vector is None else [(hook, _add(real, vector))]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits").float()
    return F.log_softmax(logits[keep], dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)


@torch.no_grad()
def steer_and_ablate(
    series: ModelSeries,
    store: ActivationStore,
    label: str,
    hook: str,
    vector: Float[Tensor, " d_model"],
    seed: int = 0,
) -> CausalResult:
    """Steering and ablation of ``vector`` at ``hook`` for checkpoint ``label`` of
    ``series`` on ``store``'s tokens, with the random-vector control."""
    checkpoint = next((c for c in series if c.label == label), None)
    if checkpoint is None:
        raise RlinterpError(f"no checkpoint {label!r} in the series; it has {[c.label for c in series]}")
    base_model, post_model = series.load(series.base), series.load(checkpoint)
    if vector.shape != (base_model.cfg.d_model,):
        raise RlinterpError(
            f"the steering vector has shape {tuple(vector.shape)}, not ({base_model.cfg.d_model},)"
        )
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn(vector.shape, generator=generator)
    random = random / random.norm() * vector.norm()
    sums = dict.fromkeys(("gap", "steered", "ablated", "random_steered", "random_ablated"), 0.0)
    n = 0
    for batch in _batches(store, str(post_model.cfg.device)):
        base = _log_probs(base_model, batch, hook, None)
        post = _log_probs(post_model, batch, hook, None)
        sums["gap"] += _kl(post, base).sum().item()
        sums["steered"] += _kl(post, _log_probs(base_model, batch, hook, vector)).sum().item()
        sums["ablated"] += _kl(_log_probs(post_model, batch, hook, -vector), base).sum().item()
        sums["random_steered"] += _kl(post, _log_probs(base_model, batch, hook, random)).sum().item()
        sums["random_ablated"] += _kl(_log_probs(post_model, batch, hook, -random), base).sum().item()
        n += int(batch[2].sum())
    mean = {k: v / max(n, 1) for k, v in sums.items()}
    gap = mean["gap"]

    def moved(kl: float) -> float:
        return 1 - kl / gap if gap > 0 else float("nan")

    return CausalResult(
        label=label,
        step=checkpoint.step,
        hook=hook,
        vector_norm=float(vector.norm()),
        kl_gap=gap,
        kl_steered=mean["steered"],
        kl_ablated=mean["ablated"],
        steering_recovery=moved(mean["steered"]),
        ablation_loss=moved(mean["ablated"]),
        random_steering_recovery=moved(mean["random_steered"]),
        random_ablation_loss=moved(mean["random_ablated"]),
    )


def causal_table(results: list[CausalResult]) -> pd.DataFrame:
    """One row per check, columns as ``CausalResult``'s fields."""
    return pd.DataFrame([r.__dict__ for r in results])
