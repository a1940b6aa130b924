"""Crosscoders: one sparse dictionary read from, and written into, several models at once.

A crosscoder (Lindsey et al. 2024) encodes the activations of ``n_models`` models at one
hook, on the same tokens, into a single set of ``d_sae`` latents, and decodes every latent
into each model through a decoder of that model's own:

    f = act(sum_m (x_m - b_dec[m]) @ W_enc[m] + b_enc),    x_hat_m = f @ W_dec[:, m] + b_dec[m]

A latent's decoder norm in model m says how much model m uses it, and its decoder
direction what it writes there, so comparing the base and RL decoders of each latent sorts
the dictionary (``latent_table``) into the lineage vocabulary (see ``lineage``): shared,
amplified, suppressed, repurposed (fires on the same tokens in both models, by
construction, but writes somewhere else in the RL model), base-only and RL-only latents.
Decoders are therefore *not* held to unit norm.

Training follows the BatchTopK crosscoder of Minder et al. 2025 ("Overcoming sparsity
artifacts in crosscoders"): no L1 penalty; in training mode the ``k * batch`` largest
scores ``relu(pre_j) * sum_m ||W_dec[j, m]||`` of the whole batch are kept (so ``k`` is a
per-token average, and the choice does not depend on how a latent splits its scale
between encoder and decoder). In eval mode a latent fires when its score exceeds
``threshold``, a running estimate of the smallest score BatchTopK kept during training,
so encoding is per token. Latents silent for ``dead_after`` tokens are trained to
reconstruct the residual error (the AuxK loss of Gao et al. 2024, App. B.1).

Units: with ``normalize``, model m's activations are multiplied by ``scales[m]`` (saved
with the weights) so that their mean squared norm is ``d_in``; no model dominates the loss
and decoder norms compare across models. ``encode`` takes and ``forward``/``decode``
return model units; weights, losses, ``latent_table`` and ``latent_scaling`` are in
normalised units (``W_dec[j, m] / scales[m]`` is latent j's direction in model units).

An RL-only decoder norm is not proof that the base model lacks the latent: the decoder
may have shrunk while the base activations still hold the direction (complete
shrinkage), or other latents may carry it in the base (latent decoupling). Latent
scaling (Minder et al. 2025) measures both; see ``latent_scaling``.

Invariants: training is deterministic given the batches, ``cfg.seed`` and the thread
count; ``save`` then ``load`` gives identical encodings; any NaN or Inf in a batch raises
``RlinterpError`` before it reaches the weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, NamedTuple

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from torch import Tensor, nn

from ..activations.harvest import ActivationStore, shuffled_batches
from ..core.artifacts import (
    optimizer_tensors,
    read_json_object,
    read_safetensors,
    restore_optimizer,
    write_json,
    write_safetensors,
)
from ..errors import RlinterpError

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "crosscoder_weights.safetensors"

BASE_ONLY_BELOW = 0.1
"""``rel_norm`` below this is a base-only latent: the RL decoder is under 1/9 of the base
one, so the RL model gets under 1/81 (about 1%) of the latent's reconstructed energy."""
RL_ONLY_ABOVE = 0.9
"""``rel_norm`` above this is an RL-only latent (the mirror image of ``BASE_ONLY_BELOW``)."""
REPURPOSED_BELOW = 0.5
"""A latent whose base and RL decoders have cosine under this (60 degrees apart) is
repurposed, when neither norm is exclusive and its write moved by ``REPURPOSED_MIN_CHANGE``.
On identical models every latent that fires ``MIN_FIRINGS`` times measured above 0.9; a
planted rewired neuron measured under 0.3."""
REPURPOSED_MIN_CHANGE = 0.25
"""How far a repurposed latent's write must move where it fires: mean activation times
``||d_post - d_base||``, over the RMS norm of the tokens (normalised units), must reach a
quarter. Guards against a latent of tiny decoders whose direction is noise. Measured on
identical models: at most 0.1; on the planted rewired neuron: 1.0 to 1.8."""
AMPLIFIED_ABOVE = 1.5
"""A shared latent whose RL decoder norm, in model units, is at least this multiple of its
base decoder norm is amplified (the cut of ``lineage.AMPLIFIED_ABOVE``)."""
SUPPRESSED_BELOW = 1 / 1.5
"""A shared latent whose norm ratio (model units) is at most this is suppressed."""
MIN_FIRINGS = 50
"""A latent that fires on fewer tokens than this, in the data it is classified on, is
"inactive": too rare for its decoders to have left their random initialisation (such
latents measured any cosine between -0.5 and 0.9 on identical models)."""
LATENT_KINDS = ("shared", "amplified", "suppressed", "repurposed", "base_only", "rl_only", "inactive")
"""Every ``kind`` of ``latent_table``."""
EXCLUSIVE_KINDS = ("base_only", "rl_only")
"""The kinds latent scaling checks."""
SPURIOUS_NU = 0.5
"""Latent scaling flags an exclusive latent when the other model still carries more than
half of it (``nu_recon`` or ``nu_error`` above this): nu is 0 for a latent the other
model lacks and 1 for one it holds in full, and 0.5 is the midpoint. The papers read nu
from its distribution; this cut is ours."""

NORM_BATCHES = 8
"""Leading batches used to estimate the normalisation scales and initialise ``b_dec``."""
THRESHOLD_MOMENTUM = 0.01
"""Weight of each batch's smallest kept score in the running inference threshold."""
DEC_INIT_NORM = 0.1
"""Initial norm of every per-model decoder vector (random directions, independent per
model, so no latent starts out shared or exclusive)."""
LEGACY_RECIPE: dict[str, Any] = {"dead_after": 1_000_000, "lr_warmup": 0.0, "lr_decay": 0.0}
"""The recipe fields below as the legacy recipe (``DictionaryConfig.recipe``) sets them: a
constant rate, a latent dead after a million silent tokens."""


@dataclass(frozen=True)
class CrosscoderConfig:
    """Shape and training of a BatchTopK crosscoder (saved as ``cfg.json``)."""

    d_in: int
    """Width of each model's activations at the hook."""
    d_sae: int
    """Number of latents."""
    n_models: int = 2
    """Models read and reconstructed together; by convention model 0 is the base."""
    k: int = 32
    """BatchTopK: active latents per token, on average over a batch."""
    lr: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 2048
    """Tokens per batch, to ask ``paired_batches`` for; training takes batches as they come
    (BatchTopK keeps ``k`` per token of whatever batch it gets)."""
    n_steps: int = 20_000
    """Training steps, one batch each."""
    seed: int = 0
    """Seeds the initial weights; training adds no other randomness."""
    dead_after: int | None = None
    """A latent that has not fired for this many tokens counts as dead (and the AuxK loss
    trains it); None fits the window to the budget: a twentieth of the tokens trained on,
    at least one batch. (A fixed 1,000,000, the recipe before this option, ends after most
    short runs.)"""
    aux_k: int | None = None
    """Dead latents used per token by the AuxK loss; None means ``d_in // 2`` (Gao et al.)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al.); 0 turns it off."""
    normalize: bool = True
    """Scale each model's activations to mean squared norm ``d_in`` before everything."""
    lr_warmup: float = 0.05
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay: float = 0.2
    """Fraction of the steps, at the end, over which it falls linearly to 0 (the schedule
    of dictionary_learning's trainers); 0 and 0 give the constant rate of the recipe before
    these options."""

    def __post_init__(self) -> None:
        positive = {"d_in": self.d_in, "d_sae": self.d_sae, "batch_size": self.batch_size}
        positive |= {"n_steps": self.n_steps} | (
            {} if self.dead_after is None else {"dead_after": self.dead_after}
        )
        for name, value in positive.items():
            if value < 1:
                raise RlinterpError(f"{name} must be at least 1, got {value}")
        if self.n_models < 2:
            raise RlinterpError(f"a crosscoder compares at least 2 models, got n_models={self.n_models}")
        if not 1 <= self.k <= self.d_sae:
            raise RlinterpError(f"k must lie in [1, d_sae={self.d_sae}], got {self.k}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RlinterpError(f"lr must be a positive, finite number, got {self.lr}")
        if not (self.lr_warmup >= 0 and self.lr_decay >= 0 and self.lr_warmup + self.lr_decay <= 1):
            raise RlinterpError(
                f"lr_warmup and lr_decay are fractions of the steps summing to at most 1, got "
                f"{self.lr_warmup} and {self.lr_decay}"
            )
        if self.aux_k is not None and self.aux_k < 1:
            raise RlinterpError(f"aux_k must be at least 1 (or None for d_in // 2), got {self.aux_k}")
        if not (self.aux_coef >= 0 and math.isfinite(self.aux_coef)):
            raise RlinterpError(f"aux_coef must be non-negative and finite, got {self.aux_coef}")

    @property
    def dead_tokens(self) -> int:
        """``dead_after`` resolved, in tokens."""
        if self.dead_after is not None:
            return self.dead_after
        return max(self.batch_size, self.n_steps * self.batch_size // 20)

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): linear warm-up, constant, linear decay."""
        warmup, decay = round(self.lr_warmup * self.n_steps), round(self.lr_decay * self.n_steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if step >= self.n_steps - decay:
            return self.lr * (self.n_steps - step) / decay
        return self.lr


class CrosscoderOutput(NamedTuple):
    """What ``Crosscoder.forward`` returns."""

    reconstruction: Float[Tensor, "batch n_models d_in"]
    """Reconstructed activations, in model units."""
    latents: Float[Tensor, "batch d_sae"]
    """Latent activations: non-negative and sparse."""
    recon_loss: Float[Tensor, ""]
    """Squared error summed over models and dimensions, mean over tokens (normalised units)."""
    aux_loss: Float[Tensor, ""]
    """AuxK loss: how badly dead latents reconstruct the error (0 with none dead)."""
    loss: Float[Tensor, ""]
    """``recon_loss + aux_coef * aux_loss``: what training minimises."""


class Crosscoder(nn.Module):
    """A BatchTopK crosscoder; ``train()`` mode selects latents over the batch, ``eval()``
    mode by the learned threshold."""

    threshold: Tensor
    scales: Tensor

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        dec = torch.randn(cfg.d_sae, cfg.n_models, cfg.d_in, generator=generator)
        dec = dec * (DEC_INIT_NORM / dec.norm(dim=-1, keepdim=True))
        self.W_enc = nn.Parameter(einops.rearrange(dec, "s m d -> m d s").clone())  # tied init
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.n_models, cfg.d_in))
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("scales", torch.ones(cfg.n_models))

    def decoder_norms(self) -> Float[Tensor, "d_sae n_models"]:
        return self.W_dec.norm(dim=-1)

    def encode(self, x: Float[Tensor, "batch n_models d_in"]) -> Float[Tensor, "batch d_sae"]:
        return self._activate(self._pre(self._normalise(x)), batch_topk=self.training)

    def decode(self, latents: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch n_models d_in"]:
        return self._decode_normalised(latents) / self.scales[:, None]

    def forward(
        self, x: Float[Tensor, "batch n_models d_in"], dead: Bool[Tensor, " d_sae"] | None = None
    ) -> CrosscoderOutput:
        """Encode, decode and score ``x``; ``dead`` marks the latents the AuxK loss uses."""
        x_norm = self._normalise(x)
        pre = self._pre(x_norm)
        latents = self._activate(pre, batch_topk=self.training)
        recon = self._decode_normalised(latents)
        recon_loss = (recon - x_norm).pow(2).sum((1, 2)).mean()
        aux_loss = self._aux_loss(pre, (x_norm - recon).detach(), dead)
        loss = recon_loss + self.cfg.aux_coef * aux_loss
        return CrosscoderOutput(recon / self.scales[:, None], latents, recon_loss, aux_loss, loss)

    def _normalise(self, x: Tensor) -> Tensor:
        return x * self.scales[:, None]

    def _pre(self, x_norm: Tensor) -> Tensor:
        return einops.einsum(x_norm - self.b_dec, self.W_enc, "b m d, m d s -> b s") + self.b_enc

    def _decode_normalised(self, latents: Tensor) -> Tensor:
        return einops.einsum(latents, self.W_dec, "b s, s m d -> b m d") + self.b_dec

    def _activate(self, pre: Tensor, batch_topk: bool) -> Tensor:
        acts = pre.relu()
        score = acts.detach() * self.decoder_norms().detach().sum(-1)
        if batch_topk:
            keep = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
            keep[score.flatten().topk(min(self.cfg.k * len(score), score.numel())).indices] = True
            keep = keep.view_as(score) & (score > 0)
        else:
            keep = score > self.threshold
        return acts * keep

    def _aux_loss(self, pre: Tensor, residual: Tensor, dead: Tensor | None) -> Tensor:
        n_dead = 0 if dead is None else int(dead.sum())
        if dead is None or n_dead == 0 or self.cfg.aux_coef == 0:
            return pre.new_zeros(())
        aux_k = self.cfg.aux_k if self.cfg.aux_k is not None else max(1, self.cfg.d_in // 2)
        top = pre.masked_fill(~dead, -torch.inf).topk(min(aux_k, n_dead), dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        aux_recon = einops.einsum(acts, self.W_dec, "b s, s m d -> b m d")
        # Scaled down while few latents are dead, as in SAELens' TopK trainer.
        return min(n_dead / aux_k, 1.0) * (aux_recon - residual).pow(2).sum((1, 2)).mean()

    @torch.no_grad()
    def _track_threshold(self, latents: Tensor, weight: float) -> None:
        scores = latents * self.decoder_norms().sum(-1)
        kept = scores[scores > 0]
        if kept.numel():
            self.threshold.lerp_(kept.min(), weight)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``cfg.json`` and ``crosscoder_weights.safetensors`` (weights, threshold and
        normalisation scales) into the folder ``path``, each file atomically."""
        path = Path(path)
        write_safetensors(path / WEIGHTS_FILE, {k: v.detach().cpu() for k, v in self.state_dict().items()})
        write_json(path / CFG_FILE, dataclasses.asdict(self.cfg))

    @classmethod
    def load(cls, path: str | os.PathLike[str], d_in: int | None = None) -> Crosscoder:
        """Read a folder written by ``save``, in eval mode; ``d_in``, when given, must match."""
        path = Path(path)
        cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
        for file in (cfg_path, weights_path):
            if not file.is_file():
                raise RlinterpError(f"{path} is not a saved crosscoder: {file.name} is missing")
        try:
            recorded = json.loads(cfg_path.read_text())
            if "lr_decay" not in recorded:  # saved before the recipe options: trained with the legacy one
                recorded = {**LEGACY_RECIPE, **recorded}
            cfg = CrosscoderConfig(**recorded)
        except (TypeError, ValueError) as error:
            raise RlinterpError(f"{cfg_path} is not a valid crosscoder config: {error}") from error
        if d_in is not None and cfg.d_in != d_in:
            raise RlinterpError(
                f"{cfg_path} has d_in={cfg.d_in} but d_in={d_in} was expected; "
                "was it trained on another model or hook?"
            )
        model = cls(cfg)
        state, expected = load_file(weights_path), model.state_dict()
        if state.keys() != expected.keys():
            raise RlinterpError(f"{weights_path} holds tensors {sorted(state)}, expected {sorted(expected)}")
        misfit = next((name for name in state if state[name].shape != expected[name].shape), None)
        if misfit is not None:
            shapes = f"{tuple(state[misfit].shape)}, but {CFG_FILE} implies {tuple(expected[misfit].shape)}"
            raise RlinterpError(f"{weights_path}: {misfit} has shape {shapes}")
        model.load_state_dict(state)
        return model.eval()


def _checked(batches: Iterable[Tensor], n_models: int, d_in: int, device: torch.device) -> Iterator[Tensor]:
    """The batches as float32 on ``device``, after checking their shape and values."""
    for i, batch in enumerate(batches):
        if batch.ndim != 3 or tuple(batch.shape[1:]) != (n_models, d_in):
            expected = f"[tokens, {n_models}, {d_in}]"
            raise RlinterpError(f"batch {i} has shape {tuple(batch.shape)}; expected {expected}")
        if not bool(torch.isfinite(batch).all()):
            models = sorted({int(m) for m in torch.nonzero(~torch.isfinite(batch))[:, 1]})
            raise RlinterpError(f"batch {i} holds NaN or Inf activations (models {models})")
        yield batch.to(device=device, dtype=torch.float32)


def train_crosscoder(
    batches: Iterable[Float[Tensor, "_batch n_models d_in"]],
    cfg: CrosscoderConfig,
    device: str | torch.device = "cpu",
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
) -> Crosscoder:
    """Train on the first ``cfg.n_steps`` batches (fewer is an error); returns the crosscoder
    in eval mode. The first ``NORM_BATCHES`` batches also set the normalisation scales.

    With ``checkpoint``, the state is saved there (safetensors + JSON) every
    ``checkpoint_every`` steps, and a call that finds a checkpoint resumes from it, skipping
    the batches already trained on: given the same batches, the result is identical to an
    uninterrupted run."""
    stream = _checked(batches, cfg.n_models, cfg.d_in, torch.device(device))
    model = Crosscoder(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
    if checkpoint is not None and (checkpoint / "state.json").is_file():
        steps = _restore(model, optimizer, since_fired, checkpoint)
        log.info("crosscoder: resumed from its checkpoint at step %d", steps)
        return _train_loop(
            model, optimizer, since_fired, islice(stream, steps, None), steps, checkpoint, checkpoint_every
        )
    head = list(islice(stream, min(NORM_BATCHES, cfg.n_steps)))
    if not head:
        raise RlinterpError("no batches to train the crosscoder on")
    with torch.no_grad():
        sample = torch.cat(head)
        mean_sq = sample.pow(2).sum(-1).mean(0)
        if cfg.normalize:
            if bool((mean_sq == 0).any()):
                raise RlinterpError(
                    f"model(s) {mean_sq.eq(0).nonzero()[:, 0].tolist()} have all-zero activations"
                )
            model.scales.copy_((cfg.d_in / mean_sq).sqrt())
        model.b_dec.copy_(model._normalise(sample).mean(0))
    return _train_loop(model, optimizer, since_fired, chain(head, stream), 0, checkpoint, checkpoint_every)


def _train_loop(
    model: Crosscoder,
    optimizer: torch.optim.Optimizer,
    since_fired: Tensor,
    stream: Iterator[Tensor],
    steps: int,
    checkpoint: Path | None,
    checkpoint_every: int,
) -> Crosscoder:
    cfg = model.cfg
    model.train()
    for batch in islice(stream, cfg.n_steps - steps):
        out = model(batch, dead=since_fired >= cfg.dead_tokens)
        for group in optimizer.param_groups:  # a function of the step alone: resumes exactly
            group["lr"] = cfg.lr_at(steps)
        # The first batch sets the threshold outright; later ones move it slowly.
        model._track_threshold(out.latents, 1.0 if steps == 0 else THRESHOLD_MOMENTUM)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        since_fired += len(batch)
        since_fired[(out.latents > 0).any(0)] = 0
        steps += 1
        if checkpoint is not None and steps % checkpoint_every == 0 and steps < cfg.n_steps:
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | optimizer_tensors(optimizer)
            tensors = {name: value.cpu() for name, value in (tensors | {"since_fired": since_fired}).items()}
            write_safetensors(checkpoint / "state.safetensors", tensors)
            write_json(checkpoint / "state.json", {"steps": steps})
    if steps < cfg.n_steps:
        raise RlinterpError(f"the batches ran out after {steps} of n_steps={cfg.n_steps} steps")
    return model.eval()


def _restore(
    model: Crosscoder, optimizer: torch.optim.Optimizer, since_fired: Tensor, checkpoint: Path
) -> int:
    """Load a checkpoint written by ``_train_loop``; return the steps it had done."""
    remedy = f"delete {checkpoint} to train this crosscoder from the start"
    steps = read_json_object(checkpoint / "state.json", remedy).get("steps")
    tensors = read_safetensors(checkpoint / "state.safetensors", remedy, device=str(since_fired.device))
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors)
    since_fired.copy_(tensors["since_fired"])
    if not isinstance(steps, int):
        raise RlinterpError(f"{checkpoint / 'state.json'} names no step count; {remedy}")
    return steps


def paired_batches(
    store: ActivationStore,
    labels: list[str],
    hook: str,
    batch_size: int,
    seed: int,
    buffer_batches: int = 16,
) -> Iterator[Float[Tensor, "_batch n_models d_in"]]:
    """One pass over every token of ``store`` at ``hook``, in shuffled batches of
    ``[batch_size, len(labels), d]`` (the last may be smaller). Shards are read one at a time
    into a buffer of about ``buffer_batches`` batches that is reshuffled after each shard, so
    memory stays at one shard plus the buffer; tokens of nearby shards mix, distant ones less."""
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise RlinterpError(f"a crosscoder needs at least two distinct models of the store, got {labels}")
    yield from shuffled_batches(_paired_shards(store, labels, hook), batch_size, seed, buffer_batches)


def _paired_shards(store: ActivationStore, labels: list[str], hook: str) -> Iterator[Tensor]:
    for k, shards in enumerate(zip(*(store.shards(label, hook) for label in labels), strict=True)):
        if len({s.shape for s in shards}) != 1:
            shapes = [tuple(s.shape) for s in shards]
            raise RlinterpError(f"shard {k} of {hook} has shapes {shapes} for {labels}; the store is damaged")
        yield torch.stack(shards, dim=1)


def _check_pair(cfg: CrosscoderConfig, a: int, b: int) -> None:
    if a == b or not (0 <= a < cfg.n_models and 0 <= b < cfg.n_models):
        raise RlinterpError(f"need two distinct model indices in [0, {cfg.n_models}), got {a} and {b}")


class LatentActivity(NamedTuple):
    """How each latent of a crosscoder fires on a set of tokens (eval-mode encoding)."""

    n_tokens: int
    """Tokens encoded."""
    n_active: Int[Tensor, " d_sae"]
    """Tokens on which each latent fired."""
    mean_activation: Float[Tensor, " d_sae"]
    """Mean activation where it fired (0 for a latent that never did)."""
    token_norm: float
    """RMS norm of the tokens in normalised units, over all models."""


@torch.no_grad()
def latent_activity(
    crosscoder: Crosscoder, batches: Iterable[Float[Tensor, "_batch n_models d_in"]]
) -> LatentActivity:
    """Encode ``batches`` (model units, as from ``paired_batches``) and count, per latent,
    where it fires and how strongly. Memory: one batch."""
    cfg = crosscoder.cfg
    device = crosscoder.W_dec.device
    n_active = torch.zeros(cfg.d_sae, dtype=torch.long)
    total = torch.zeros(cfg.d_sae, dtype=torch.float64)
    n_tokens, sq_norm = 0, 0.0
    for batch in _checked(batches, cfg.n_models, cfg.d_in, device):
        x = crosscoder._normalise(batch)
        acts = crosscoder._activate(crosscoder._pre(x), batch_topk=False)
        n_active += (acts > 0).sum(0).cpu()
        total += acts.double().sum(0).cpu()
        n_tokens += len(batch)
        sq_norm += float(x.double().pow(2).sum(-1).sum())
    if n_tokens == 0:
        raise RlinterpError("no tokens to measure the crosscoder's latent activity on")
    mean = (total / n_active.clamp(min=1)).float()
    return LatentActivity(n_tokens, n_active, mean, (sq_norm / (n_tokens * cfg.n_models)) ** 0.5)


@torch.no_grad()
def latent_table(
    crosscoder: Crosscoder, base: int = 0, post: int = 1, activity: LatentActivity | None = None
) -> pd.DataFrame:
    """One row per latent: ``dec_norm_<m>`` for every model m (normalised units); for the pair
    (base, post): ``rel_norm`` = ||d_post|| / (||d_base|| + ||d_post||) (NaN when both are 0),
    ``norm_ratio`` = ||d_post|| / ||d_base|| in model units (how much more the RL model
    writes the latent; the normalisation scales rescale every latent alike, so this ratio,
    not ``rel_norm``, says amplified or suppressed), the ``cosine`` of the two decoder vectors
    (0 when one is 0) and ``kind``, the first that applies of:

    - "inactive": fired on fewer than ``MIN_FIRINGS`` tokens (only with ``activity``);
    - "base_only" / "rl_only": ``rel_norm`` under ``BASE_ONLY_BELOW`` / over ``RL_ONLY_ABOVE``
      (check these with ``latent_scaling``);
    - "repurposed": ``cosine`` under ``REPURPOSED_BELOW`` and, with ``activity``, a ``change``
      of at least ``REPURPOSED_MIN_CHANGE``;
    - "amplified" / "suppressed": ``norm_ratio`` at least ``AMPLIFIED_ABOVE`` / at most
      ``SUPPRESSED_BELOW``;
    - "shared".

    With ``activity`` (from ``latent_activity`` on the training tokens) the table also has
    ``frequency``, ``mean_activation`` and ``change`` = mean activation x ||d_post - d_base||
    / token RMS norm (normalised units): how far the latent's write moves where it fires.
    Without it, norms say nothing about firing: a dead latent keeps its random initial
    decoders, which are independent per model, and may read "repurposed"."""
    cfg = crosscoder.cfg
    _check_pair(cfg, base, post)
    dec = crosscoder.W_dec.detach().double().cpu()
    norms = dec.norm(dim=-1)
    model_norms = norms / crosscoder.scales.detach().double().cpu()[None, :]
    frame = pd.DataFrame({"latent": np.arange(cfg.d_sae)})
    for m in range(cfg.n_models):
        frame[f"dec_norm_{m}"] = norms[:, m].numpy()
    frame["rel_norm"] = (norms[:, post] / (norms[:, base] + norms[:, post])).numpy()
    frame["norm_ratio"] = (model_norms[:, post] / model_norms[:, base]).numpy()
    frame["cosine"] = nn.functional.cosine_similarity(dec[:, base], dec[:, post], dim=-1).numpy()
    # Both decoders non-zero (rel_norm finite): a zero decoder has cosine 0 with anything.
    moved = (frame["cosine"].to_numpy() < REPURPOSED_BELOW) & np.isfinite(frame["rel_norm"].to_numpy())
    inactive = np.zeros(cfg.d_sae, dtype=bool)
    if activity is not None:
        frame["frequency"] = activity.n_active.numpy() / activity.n_tokens
        frame["mean_activation"] = activity.mean_activation.numpy()
        shift = (dec[:, post] - dec[:, base]).norm(dim=-1).numpy()
        frame["change"] = frame["mean_activation"] * shift / activity.token_norm
        moved &= frame["change"].to_numpy() >= REPURPOSED_MIN_CHANGE
        inactive = activity.n_active.numpy() < MIN_FIRINGS
    rel_norm, norm_ratio = frame["rel_norm"].to_numpy(), frame["norm_ratio"].to_numpy()
    with np.errstate(invalid="ignore"):
        conditions = [
            inactive,
            rel_norm < BASE_ONLY_BELOW,
            rel_norm > RL_ONLY_ABOVE,
            moved,
            norm_ratio >= AMPLIFIED_ABOVE,
            norm_ratio <= SUPPRESSED_BELOW,
        ]
    kinds = ["inactive", "base_only", "rl_only", "repurposed", "amplified", "suppressed"]
    frame["kind"] = np.select(conditions, kinds, "shared")
    return frame


@torch.no_grad()
def latent_scaling(
    crosscoder: Crosscoder,
    batches: Iterable[Float[Tensor, "_batch n_models d_in"]],
    latents: list[int],
    own: int,
    other: int,
) -> pd.DataFrame:
    """Latent scaling (Minder et al. 2025) of latents exclusive to model ``own``.

    With d_j = ``W_dec[j, own]`` and f_j(t) the latent's activation (eval-mode encoding),
    beta = sum_t f_j(t) <d_j, y_t> / (||d_j||^2 sum_t f_j(t)^2) is the least-squares scale of
    f_j d_j that best explains a target y_t of model m, for two targets:

    - error: x_m - (x_hat_m - f_j W_dec[j, m]), what the crosscoder leaves unexplained in m
      plus the latent's own part (complete shrinkage puts the latent here);
    - recon: x_hat_m - b_dec[m], everything the latents reconstruct in m (latent decoupling
      puts it here, through other latents); the bias is left out since it is no latent's.

    ``nu_* = beta_other_* / beta_own_*``: about 0 when ``other`` lacks the latent, about 1
    when it carries it in full. ``spurious`` is true when either nu exceeds
    ``SPURIOUS_NU``. Latents that never fire get NaN betas and are not flagged.
    """
    cfg = crosscoder.cfg
    _check_pair(cfg, own, other)
    if not latents or not all(0 <= j < cfg.d_sae for j in latents):
        raise RlinterpError(f"latents must be a non-empty list of indices in [0, {cfg.d_sae}), got {latents}")
    index = torch.tensor(latents, device=crosscoder.W_dec.device)
    dec = crosscoder.W_dec[index].double()  # [latent, model, d_in]
    d_own = dec[:, own]
    num = torch.zeros(
        2, 2, len(latents), dtype=torch.float64
    )  # [target (recon, error), (own, other), latent]
    f_sq = torch.zeros(len(latents), dtype=torch.float64)
    n_active = torch.zeros(len(latents), dtype=torch.long)
    for batch in _checked(batches, cfg.n_models, cfg.d_in, crosscoder.W_dec.device):
        x = crosscoder._normalise(batch)
        acts = crosscoder._activate(crosscoder._pre(x), batch_topk=False)
        recon = crosscoder._decode_normalised(acts).double()
        f = acts[:, index].double()
        f_sq += f.pow(2).sum(0).cpu()
        n_active += (f > 0).sum(0).cpu()
        for side, m in enumerate((own, other)):
            along_recon = (recon[:, m] - crosscoder.b_dec[m].double()) @ d_own.T  # [batch, latent]
            along_error = (x[:, m].double() - recon[:, m]) @ d_own.T + f * (dec[:, m] * d_own).sum(-1)
            num[0, side] += (f * along_recon).sum(0).cpu()
            num[1, side] += (f * along_error).sum(0).cpu()
    beta = num / (d_own.pow(2).sum(-1).cpu() * f_sq)  # NaN for latents that never fire
    nu = beta[:, 1] / beta[:, 0]
    frame = pd.DataFrame({"latent": latents, "n_active": n_active.numpy()})
    for t, target in enumerate(("recon", "error")):
        frame[f"beta_own_{target}"] = beta[t, 0].numpy()
        frame[f"beta_other_{target}"] = beta[t, 1].numpy()
    frame["nu_recon"], frame["nu_error"] = nu[0].numpy(), nu[1].numpy()
    frame["spurious"] = (frame["nu_recon"] > SPURIOUS_NU) | (frame["nu_error"] > SPURIOUS_NU)
    return frame
