"""Causal checks of "selection": move the base model along what RL amplified, remove it
from the RL checkpoint, and measure how much of the checkpoint's output change that moves.

Two interventions at one hook, applied at every real (non-padding) position of an activation
store's prompts and measured on its kept tokens (the positions its statistics use):

- **adding a vector** ``v`` (``steer_and_ablate``; typically the checkpoint's mean activation
  shift at the hook projected onto the persona directions): the base gets ``+v``, the
  checkpoint ``-v``. One vector for every token: it can express an unconditional push, not
  a choice that depends on the prompt;
- **patching a subspace** (``patch_subspace``; typically the span of the persona
  directions): per token, the base's component in the subspace is replaced by the
  checkpoint's (``h_base + P(h_post - h_base)``, ``P`` the orthogonal projector), and the
  checkpoint's by the base's. This carries a per-prompt (conditional) re-weighting of the
  directions, which one vector cannot.

For each, with ``kl_gap`` = mean KL(post || base) of the next-token distributions:

- ``steering_recovery = 1 - KL(post || edited base) / kl_gap``: 1 if the edit turns the
  base into the checkpoint, 0 if it does not help, negative if it moves the base elsewhere;
- ``ablation_loss = 1 - KL(edited post || base) / kl_gap``: 1 if the reverse edit undoes
  the checkpoint's change;
- a **control** per check: a random vector of the same norm, or a random subspace of the
  same dimension (seeded), which a real effect must beat.

Selection predicts high recovery and loss along the persona directions; new computation
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

from ..activations.harvest import ActivationStore
from ..errors import RlinterpError
from ..models.series import ModelSeries
from ..models.stacking import per_pass, stack
from .personas import decision_batches


@dataclass(frozen=True)
class CausalResult:
    """Both edits of one intervention for one checkpoint (see the module docstring)."""

    label: str
    step: int
    hook: str
    intervention: str
    """``"vector"`` (adding a vector) or ``"subspace"`` (patching a subspace)."""
    at: str
    """Where it edits and is measured: ``"kept"`` or ``"decision"`` (see ``AT``)."""
    vector_norm: float
    """The vector's norm; for a subspace patch, the mean norm of the per-token patched
    difference ``P(h_post - h_base)``."""
    kl_gap: float
    kl_steered: float
    kl_ablated: float
    steering_recovery: float
    ablation_loss: float
    random_steering_recovery: float
    """The same check with a random vector of the same norm (the mean over random subspaces
    of the same dimension): the control."""
    random_ablation_loss: float


AT = ("kept", "decision")
"""Where an intervention edits and is measured (see ``_batches``)."""
Batch = tuple[Tensor, Tensor, Tensor]
"""``tokens, edited, measured``: a token batch, the positions an edit changes, the positions
whose next-token distributions are compared."""
Edit = Callable[[Tensor, Any], Tensor]
"""A TransformerLens forward hook replacing the activation at one hook point."""
EditPair = tuple[Edit, Edit]
"""(edit of the base towards the checkpoint, edit of the checkpoint back towards the base)."""


def _batches(store: ActivationStore, device: str, at: str) -> Iterator[Batch]:
    """``tokens, edited, measured`` per token batch of the store: with ``at="kept"`` the edit
    applies at every real (non-padding) position and is measured on the kept tokens; with
    ``at="decision"`` both are each prompt's decision position (the token before its first
    kept one, see ``persona_features.decision_positions``)."""
    if at not in AT:
        raise RlinterpError(f"at must be one of {AT}, got {at!r}")
    if at == "decision":
        for batch, position in decision_batches(store):
            edited = torch.zeros_like(batch.keep)
            edited[torch.arange(len(position)), position] = True
            yield batch.tokens.to(device), edited.to(device), edited.to(device)
        return
    for batch in store.token_batches():
        positions = torch.arange(batch.tokens.shape[1]).unsqueeze(0)
        real = positions < batch.lengths.unsqueeze(1)
        yield batch.tokens.to(device), real.to(device), batch.keep.to(device)


def _log_probs_each(model: Any, batch: Batch, hook: str, edits: list[Edit]) -> list[Tensor]:
    """Log-probs at the measured positions of ``model`` on ``batch`` under each of ``edits``
    alone, the edits run stacked (``models.stacking``; each applied to its own block of
    rows)."""
    tokens, _, keep = batch
    size = per_pass(tokens, model.cfg, len(edits))
    out: list[Tensor] = []
    for start in range(0, len(edits), size):
        chunk = edits[start : start + size]
        hooks = [(hook, _each(chunk))]
        logits = model.run_with_hooks(stack(tokens, len(chunk)), fwd_hooks=hooks, return_type="logits")
        out += [F.log_softmax(block.float()[keep], dim=-1) for block in logits.unflatten(0, (len(chunk), -1))]
    return out


def _each(edits: list[Edit]) -> Edit:
    """One hook applying ``edits[i]`` to block ``i`` of a stacked activation."""

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        blocks = activation.unflatten(0, (len(edits), -1))
        return torch.cat([edit(block, hook) for edit, block in zip(edits, blocks, strict=True)])

    return hook_fn


def _clean_run(model: Any, batch: Batch, hook: str) -> tuple[Tensor, Tensor]:
    """One unedited forward pass: log-probs at the measured positions and the activation at
    ``hook`` (what a patch needs), so no pass is run twice."""
    tokens, _, keep = batch
    logits, cache = model.run_with_cache(tokens, names_filter=hook, return_type="logits")
    return F.log_softmax(logits.float()[keep], dim=-1), cache[hook].float()


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)


def _offset(real: Tensor, offset: Tensor) -> Edit:
    """Add ``offset`` (one vector, or one per position) at the real positions."""

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        del hook
        return activation + real.unsqueeze(-1).to(activation.dtype) * offset.to(activation)

    return hook_fn


def _checkpoint(series: ModelSeries, label: str) -> Any:
    checkpoint = next((c for c in series if c.label == label), None)
    if checkpoint is None:
        raise RlinterpError(f"no checkpoint {label!r} in the series; it has {[c.label for c in series]}")
    return checkpoint


Check = tuple[EditPair, list[EditPair], float]
"""One check's edits on one batch: the real edit pair, its control edit pairs (their
recoveries are averaged) and the summed norm of what the real edit moves over the measured
positions."""


def _measure(
    series: ModelSeries,
    store: ActivationStore,
    label: str,
    hook: str,
    at: str,
    intervention: str,
    edits: Callable[[Batch, Tensor, Tensor], list[Check]],
) -> list[CausalResult]:
    """The KL bookkeeping shared by both interventions: ``edits(batch, h_base, h_post)``
    (the two models' activations at ``hook``) gives one batch's edits of each check (the
    same number on every batch). The checks share the clean runs, and every edit of one
    model on a batch runs in one stacked pass (``_log_probs_each``)."""
    checkpoint = _checkpoint(series, label)
    base_model, post_model = series.load(series.base), series.load(checkpoint)
    names = ("steered", "ablated", "random_steered", "random_ablated", "norm")
    sums: list[dict[str, float]] = []
    gap, n = 0.0, 0
    for batch in _batches(store, str(post_model.cfg.device), at):
        base, h_base = _clean_run(base_model, batch, hook)
        post, h_post = _clean_run(post_model, batch, hook)
        checks = edits(batch, h_base, h_post)
        sums = sums or [dict.fromkeys(names, 0.0) for _ in checks]
        pairs = [pair for real, controls, _ in checks for pair in (real, *controls)]
        steered = iter(_log_probs_each(base_model, batch, hook, [steer for steer, _ in pairs]))
        ablated = iter(_log_probs_each(post_model, batch, hook, [ablate for _, ablate in pairs]))
        gap += _kl(post, base).sum().item()
        for total, (_, controls, norm) in zip(sums, checks, strict=True):
            total["steered"] += _kl(post, next(steered)).sum().item()
            total["ablated"] += _kl(next(ablated), base).sum().item()
            for _ in controls:
                total["random_steered"] += _kl(post, next(steered)).sum().item() / len(controls)
                total["random_ablated"] += _kl(next(ablated), base).sum().item() / len(controls)
            total["norm"] += norm
        n += int(batch[2].sum())
    gap /= max(n, 1)

    def moved(kl: float) -> float:
        return 1 - kl / gap if gap > 0 else float("nan")

    results = []
    for total in sums:
        mean = {k: v / max(n, 1) for k, v in total.items()}
        results.append(
            CausalResult(
                label=label,
                step=checkpoint.step,
                hook=hook,
                intervention=intervention,
                at=at,
                vector_norm=mean["norm"],
                kl_gap=gap,
                kl_steered=mean["steered"],
                kl_ablated=mean["ablated"],
                steering_recovery=moved(mean["steered"]),
                ablation_loss=moved(mean["ablated"]),
                random_steering_recovery=moved(mean["random_steered"]),
                random_ablation_loss=moved(mean["random_ablated"]),
            )
        )
    return results


@torch.no_grad()
def steer_and_ablate(
    series: ModelSeries,
    store: ActivationStore,
    label: str,
    hook: str,
    vector: Float[Tensor, " d_model"],
    seed: int = 0,
    at: str = "kept",
) -> CausalResult:
    """Adding ``vector`` at ``hook`` to the base and subtracting it from checkpoint
    ``label`` of ``series``, on ``store``'s tokens (``at``: see ``AT``), with a random vector
    of the same norm as the control."""
    return steer_and_ablate_each(series, store, label, hook, [vector], seed, at)[0]


@torch.no_grad()
def steer_and_ablate_each(
    series: ModelSeries,
    store: ActivationStore,
    label: str,
    hook: str,
    vectors: list[Float[Tensor, " d_model"]],
    seed: int = 0,
    at: str = "kept",
) -> list[CausalResult]:
    """``steer_and_ablate`` for each of ``vectors``, on one set of clean runs (the same
    numbers as one call per vector, up to float rounding; each vector's control is the same
    seeded random direction at its norm)."""
    d_model = series.load(series.base).cfg.d_model
    for vector in vectors:
        if vector.shape != (d_model,):
            raise RlinterpError(f"the steering vector has shape {tuple(vector.shape)}, not ({d_model},)")
    randoms = []
    for vector in vectors:
        random = torch.randn(vector.shape, generator=torch.Generator().manual_seed(seed))
        randoms.append(random / random.norm() * vector.norm())

    def edits(batch: Batch, _h_base: Tensor, _h_post: Tensor) -> list[Check]:
        edited = batch[1]
        return [
            (
                (_offset(edited, vector), _offset(edited, -vector)),
                [(_offset(edited, random), _offset(edited, -random))],
                float(vector.norm()) * int(batch[2].sum()),
            )
            for vector, random in zip(vectors, randoms, strict=True)
        ]

    return _measure(series, store, label, hook, at, "vector", edits)


def random_basis(d_model: int, rank: int, seed: int) -> Float[Tensor, "d_model rank"]:
    """An orthonormal basis of a uniformly random ``rank``-dimensional subspace (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, rank, generator=generator))
    return q


def subspace_projector(basis: Float[Tensor, "d_model rank"]) -> Float[Tensor, "d_model d_model"]:
    """The orthogonal projector onto the span of ``basis``' columns (any rank, any scaling)."""
    q, r = torch.linalg.qr(basis.float())
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(1e-12)
    q = q[:, keep]
    return q @ q.T


@torch.no_grad()
def patch_subspace(
    series: ModelSeries,
    store: ActivationStore,
    label: str,
    hook: str,
    basis: Float[Tensor, "d_model rank"],
    seed: int = 0,
    at: str = "kept",
    n_random: int = 4,
) -> CausalResult:
    """Patching checkpoint ``label``'s component in the span of ``basis`` (columns) into the
    base at ``hook``, token by token, and the base's into the checkpoint, on ``store``'s
    tokens (``at``: see ``AT``); the control is the mean over ``n_random`` random subspaces
    of the same dimension (seeded)."""
    d_model = series.load(series.base).cfg.d_model
    if basis.ndim != 2 or basis.shape[0] != d_model or basis.shape[1] == 0:
        raise RlinterpError(
            f"the subspace basis has shape {tuple(basis.shape)}, not ({d_model}, rank) with rank >= 1"
        )
    projector = subspace_projector(basis)
    rank = int(torch.linalg.matrix_rank(projector))
    if n_random < 1:
        raise RlinterpError(f"n_random must be at least 1, got {n_random}")
    randoms = [subspace_projector(random_basis(basis.shape[0], rank, seed + i)) for i in range(n_random)]

    def edits(batch: Batch, h_base: Tensor, h_post: Tensor) -> list[Check]:
        _, edited, measured = batch
        difference = h_post - h_base
        moved = difference @ projector
        controls = [difference @ random for random in randoms]
        return [
            (
                (_offset(edited, moved), _offset(edited, -moved)),
                [(_offset(edited, c), _offset(edited, -c)) for c in controls],
                float(moved[measured].norm(dim=-1).sum()),
            )
        ]

    return _measure(series, store, label, hook, at, "subspace", edits)[0]


def causal_table(results: list[CausalResult]) -> pd.DataFrame:
    """One row per check, columns as ``CausalResult``'s fields."""
    return pd.DataFrame([r.__dict__ for r in results])
