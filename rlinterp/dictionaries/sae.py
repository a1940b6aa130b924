"""Sparse autoencoders on harvested activations, trained and stored through SAELens.

An SAE here is a SAELens training SAE (TopK, BatchTopK, JumpReLU or standard L1) fed by
our activation store instead of a language model: ``SAETrainer.step`` takes any
``(batch, d_in)`` tensor, so the store's shards become SAELens' data. Two sources:

- ``acts``: one model's activations at one hook;
- ``diff``: per-token activation differences, post minus base, on the same tokens (the
  *diff-SAE*: its latents are candidate "what RL added" directions).

Saved in SAELens' layout (``cfg.json`` + ``sae_weights.safetensors``, opened by
``sae_lens.SAE.load_from_disk``) plus ``rlinterp.json``, the dictionary's manifest: what it
was trained on and its fingerprint, written once, last (see ``rundir``), so a directory
without it is unfinished whatever else it holds. ``cfg.json`` carries the metadata SAELens'
own tools read (``saelens_metadata``: hook, model, context size, BOS handling), so
``SAETransformerBridge.add_sae`` splices a saved SAE at its hook. A diff-SAE reads
``post - base``: splicing it alone into a model is not what it was trained on (its metadata
says ``rlinterp_source: diff``). Training checkpoints every ``checkpoint_every`` steps to
``<out>/checkpoint/`` in safetensors + JSON (SAELens' own trainer checkpoints are pickles,
which rlinterp never writes or loads), and a run started again on the same ``out`` with the
same fingerprint (store, model, hook, config) resumes from there. Deterministic from
``seed`` at a fixed thread count.

``train_saes`` trains a sweep (several configs sharing batch size, token budget and seed)
on one pass over the store: each batch is read once and given to every SAE, and each SAE
is exactly the one ``train_sae`` trains alone. TopK SAEs train as
``WeightScaledTopKTrainingSAE``: SAELens' TopK SAE with its decoder-norm rescaling taken
on the weights rather than on every latent activation (same function, a third less work
per step on a CPU), under ``LeanSAETrainer``: SAELens' trainer with its firing statistics
counted in one pass.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    LoggingConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from torch import Tensor
from tqdm.auto import tqdm

from ..activations.harvest import ActivationStore, epoch_batches, hook_shapes, shuffled_batches
from ..core import rundir
from ..core.artifacts import (
    optimizer_tensors,
    read_json_object,
    read_safetensors,
    restore_optimizer,
    write_json,
    write_parquet,
    write_safetensors,
)
from ..errors import RlinterpError
from .config import ARCHITECTURES as ARCHITECTURES
from .config import Architecture as Architecture
from .config import SAETrainConfig as SAETrainConfig

if TYPE_CHECKING:
    from ..models.series import ModelSeries

_log = logging.getLogger(__name__)  # ``log`` names the training log rows here

Source = Literal["acts", "diff"]
MANIFEST = rundir.DICTIONARY.manifest
CHECKPOINT = "checkpoint"
ENTRIES = (
    "cfg.json",
    "sae_weights.safetensors",
    "crosscoder_weights.safetensors",
    "training_log.parquet",
    CHECKPOINT,
    "top_contexts.parquet",
    "latents.parquet",
    "latent_scaling.parquet",
    "eval.parquet",
)
"""Everything a dictionary directory (of any method) holds besides its manifest."""
NOT_FINGERPRINTED = ("device", "checkpoint_every")
"""Config fields that do not change a trained dictionary (resume is bit-identical)."""
LOG_EVERY = 50
"""Steps between rows of ``training_log.parquet``."""


class WeightScaledTopKTrainingSAE(TopKTrainingSAE):
    """SAELens' TopK training SAE, computing the same function with fewer passes over the
    ``[batch, d_sae]`` latents.

    With ``rescale_acts_by_decoder_norm`` SAELens multiplies every pre-activation by its
    latent's decoder norm and every latent activation by the inverse before decoding: two
    elementwise products over ``[batch, d_sae]`` and two more in the backward pass, which on
    one CPU thread cost about a third of a step. Scaling is linear, so the same products are
    taken on the weights instead (``W_enc * norm``, ``b_enc * norm``, ``W_dec / norm``:
    ``d_in x d_sae`` numbers), giving the same pre-activations, latents, reconstruction and
    gradients up to float rounding. Everything else (TopK, the AuxK loss, saving, folding)
    is SAELens' own; a saved SAE is an ordinary ``topk`` SAE."""

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sae_in = self.process_sae_in(x)
        W_enc, b_enc = self.W_enc, self.b_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            norm = self.W_dec.norm(dim=-1)
            W_enc, b_enc = W_enc * norm, b_enc * norm
        hidden_pre = self.hook_sae_acts_pre(torch.addmm(b_enc, sae_in, W_enc))
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    def decode(self, feature_acts: Tensor) -> Tensor:
        W_dec = self.W_dec
        if self.cfg.rescale_acts_by_decoder_norm:
            W_dec = W_dec * (1 / W_dec.norm(dim=-1, keepdim=True))
        sae_out = self.hook_sae_recons(torch.addmm(self.b_dec, feature_acts, W_dec))
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(sae_out), self.d_head)


class LeanSAETrainer(SAETrainer[Any, Any]):
    """SAELens' trainer with its per-step firing statistics counted in one pass.

    SAELens turns the ``[batch, d_sae]`` latents into booleans, then floats, and sums them
    twice to learn which latents fired and how often (about a tenth of a CPU step at 2,048
    latents); one float sum of their signs gives both, three times faster. The statistics,
    the optimisation and therefore the weights are SAELens' own, bit for bit."""

    def _train_step(self, sae: TrainingSAE[Any], sae_in: Tensor) -> TrainStepOutput:
        sae.train()
        with self.autocast_if_enabled:
            output = sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=self._is_logging_step(),
                ),
            )
            with torch.no_grad():
                acts = output.feature_acts
                # 1 where a latent fired, 0 elsewhere, as floats: exact counts when summed
                fired = (acts.to_dense() if acts.is_sparse else acts).sign().abs_().sum(0)
                self.n_forward_passes_since_fired += 1
                self.n_forward_passes_since_fired[fired > 0] = 0
                self.act_freq_scores += fired
                self.n_frac_active_samples += self.cfg.train_batch_size_samples
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return output


def _training_sae(cfg: SAETrainConfig, d_in: int) -> TrainingSAE[Any]:
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "normalize_activations": "expected_average_only_in",
        "decoder_init_norm": cfg.decoder_init_norm,
        "device": cfg.device,
    }
    torch.manual_seed(cfg.seed)
    if cfg.architecture == "topk":
        return WeightScaledTopKTrainingSAE(
            TopKTrainingSAEConfig(k=cfg.k, aux_loss_coefficient=cfg.aux_coef, **common)
        )
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=cfg.k, aux_loss_coefficient=cfg.aux_coef, **common)
        )
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(l0_coefficient=cfg.sparsity_coefficient, **common)
        )
    return StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient, **common))


def activation_shards(
    store: ActivationStore, label: str, hook: str, source: Source = "acts", base: str | None = None
) -> Iterator[Float[Tensor, "token d"]]:
    """The training data of one SAE, shard by shard: ``label``'s activations at ``hook``,
    or (``source="diff"``) their difference from ``base``'s on the same tokens."""
    if source == "diff":
        base = base or store.labels[0]
        if base == label:
            raise RlinterpError(f"a diff-SAE needs two different models; both are {label!r}")
        pairs = zip(store.shards(base, hook), store.shards(label, hook), strict=True)
        shards: Iterator[Tensor] = (post - pre for pre, post in pairs)
    else:
        shards = store.shards(label, hook)
    for k, shard in enumerate(shards):
        if shard.shape[0] == 0:
            continue
        if not torch.isfinite(shard).all():
            raise RlinterpError(f"shard {k} of {label} at {hook} in {store.root} holds NaN or Inf")
        yield shard


def batches(
    store: ActivationStore,
    label: str,
    hook: str,
    batch_size: int,
    seed: int,
    source: Source = "acts",
    base: str | None = None,
    skip: int = 0,
) -> Iterator[Float[Tensor, "batch d"]]:
    """An endless, seeded stream of full batches, epoch after epoch, each epoch streamed
    through a shuffling buffer (memory: one shard plus the buffer); see ``epoch_batches``."""

    def epoch(epoch_seed: int) -> Iterator[Tensor]:
        return shuffled_batches(activation_shards(store, label, hook, source, base), batch_size, epoch_seed)

    return epoch_batches(epoch, batch_size, seed, skip, what=f"{label} at {hook}")


@dataclass(frozen=True)
class TrainedSAE:
    """A trained SAE on disk and in memory."""

    path: Path
    sae: SAE[Any]
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainedSAE:
        """Open a finished SAE or diff-SAE (an unfinished one is refused)."""
        path = Path(path)
        manifest = rundir.read_finished(
            path, rundir.DICTIONARY, "train it with `rlinterp dictionaries train`"
        )
        if manifest.get("method") not in ("sae", "diff-sae"):
            raise RlinterpError(f"{path} holds a {manifest.get('method')}, not an SAE")
        return cls(path, SAE.load_from_disk(str(path)), manifest)


def sae_hook_on(series: ModelSeries, path: str | os.PathLike[str], hook: str | None) -> str:
    """The hook a given base SAE (``--dictionary``) reads; one line if it reads another hook
    than ``hook`` (None: any), one the series' models do not have, or another width than
    theirs there (a dictionary of another model)."""
    trained = TrainedSAE.load(path)
    found, d_in = str(trained.manifest.get("hook")), int(trained.sae.cfg.d_in)
    if hook is not None and found != hook:
        raise RlinterpError(
            f"--dictionary {path} was trained at {found}, not at --hook {hook}; give a dictionary "
            f"trained at {hook}, or drop --hook to analyse {found}"
        )
    shapes = hook_shapes(series.load(series.base))
    if found not in shapes:
        raise RlinterpError(
            f"--dictionary {path} reads {found}, which the series' models do not have; give a "
            "dictionary trained on this series' base"
        )
    if shapes[found][-1] != d_in:
        raise RlinterpError(
            f"--dictionary {path} has d_in {d_in} but {found} of the series has width "
            f"{shapes[found][-1]}; it was trained on another model: give one trained on this series' base"
        )
    return found


def dictionary_fingerprint(store: ActivationStore, settings: dict[str, Any]) -> dict[str, Any]:
    """A dictionary's inputs: the store's own fingerprint (as one digest) and ``settings``
    (method, models, hook, config), minus ``NOT_FINGERPRINTED``."""
    kept = {k: v for k, v in settings.items() if k not in NOT_FINGERPRINTED}
    return {"store": rundir.digest(store.fingerprint), **kept}


def train_sae(
    store: ActivationStore,
    label: str,
    hook: str,
    out: str | os.PathLike[str],
    cfg: SAETrainConfig | None = None,
    source: Source = "acts",
    base: str | None = None,
    *,
    force: bool = False,
) -> TrainedSAE:
    """Train an SAE on ``store`` (see the module docstring) and save it in ``out``.

    ``out`` must be absent, empty or a dictionary directory: a finished SAE of the same
    fingerprint is returned as it is, an interrupted one resumed from its checkpoint; one of
    other inputs is refused naming what changed, or (``force``) trained again."""
    return train_saes(store, label, hook, [out], [cfg or SAETrainConfig()], source, base, force=force)[0]


def train_saes(
    store: ActivationStore,
    label: str,
    hook: str,
    outs: Sequence[str | os.PathLike[str]],
    cfgs: Sequence[SAETrainConfig],
    source: Source = "acts",
    base: str | None = None,
    *,
    force: bool = False,
) -> list[TrainedSAE]:
    """Train several SAEs on one pass over the same activations (a sweep: e.g. several
    ``k`` or ``d_sae``), SAE ``i`` with ``cfgs[i]`` into ``outs[i]``.

    Every batch is read, shuffled and checked once and given to each SAE in turn, so the
    stream is paid for once. The configs must agree on what decides the stream
    (``batch_size``, ``n_tokens``, ``seed``, ``device``); each SAE is then exactly the one
    ``train_sae`` would train with its config (same batches, same initialisation). Each
    ``outs[i]`` follows ``train_sae``'s rules: finished ones are kept, interrupted ones
    resumed (each from its own checkpoint), all others trained together."""
    if len(outs) != len(cfgs) or not cfgs:
        raise RlinterpError(f"give one output folder per config, got {len(outs)} and {len(cfgs)}")
    shared = ("batch_size", "n_tokens", "seed", "device")
    for name in shared:
        values = sorted({str(getattr(cfg, name)) for cfg in cfgs})
        if len(values) > 1:
            raise RlinterpError(
                f"SAEs trained on one stream must share {', '.join(shared)}; got {name} = {values}; "
                "train them separately with train_sae"
            )
    paths = [Path(out) for out in outs]
    if len(set(paths)) != len(paths):
        raise RlinterpError(f"each SAE needs its own output folder, got {[str(p) for p in paths]}")
    reference = (base or store.labels[0]) if source == "diff" else None
    next(activation_shards(store, label, hook, source, reference))  # bad input fails before any write
    method = "diff-sae" if source == "diff" else "sae"
    todo: list[tuple[Path, SAETrainConfig]] = []
    for out, cfg in zip(paths, cfgs, strict=True):
        settings = {"method": method, "hook": hook, "model": label, "base": reference, **asdict(cfg)}
        inputs = dictionary_fingerprint(store, settings)
        claimed = rundir.claim(out, rundir.DICTIONARY, inputs, ENTRIES, resumable=(CHECKPOINT,), force=force)
        if claimed.state != "finished":
            todo.append((out, cfg))
    if todo:
        manifests = fit_saes(store, label, hook, todo, source, reference)
        for (out, _), manifest in zip(todo, manifests, strict=True):
            rundir.finish(out, rundir.DICTIONARY, manifest)
            shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return [TrainedSAE.load(out) for out in paths]


def fit_sae(
    store: ActivationStore,
    label: str,
    hook: str,
    out: Path,
    cfg: SAETrainConfig,
    source: Source = "acts",
    base: str | None = None,
) -> dict[str, Any]:
    """Train an SAE into ``out`` (claimed by the caller), resuming from ``out/checkpoint``;
    return the manifest describing it, for the caller to ``rundir.finish``."""
    return fit_saes(store, label, hook, [(out, cfg)], source, base)[0]


@dataclass
class _Run:
    """One SAE being trained: its folder, config, SAELens trainer and local log."""

    out: Path
    cfg: SAETrainConfig
    trainer: SAETrainer[Any, Any]
    log: list[dict[str, float | int]]


def _start(out: Path, cfg: SAETrainConfig, d_in: int) -> _Run:
    """A fresh SAELens trainer for ``cfg``, restored from ``out/checkpoint`` if there is one."""
    steps = cfg.n_tokens // cfg.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.n_tokens,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing" if cfg.lr_schedule == "cosine" else "constant",
        lr_warm_up_steps=round(cfg.lr_warmup * steps),
        lr_decay_steps=round(cfg.lr_decay * steps),
        dead_feature_window=cfg.dead_window,
        n_batches_for_norm_estimate=min(100, max(1, cfg.n_tokens // cfg.batch_size)),
        device=cfg.device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    run = _Run(out, cfg, LeanSAETrainer(trainer_cfg, _training_sae(cfg, d_in), iter(())), [])
    if (out / CHECKPOINT / "trainer_state.json").is_file():
        done = _restore(run.trainer, out / CHECKPOINT, run.log)
        _log.info("dictionary in %s: resumed from its checkpoint at step %d", out, done)
    return run


def fit_saes(
    store: ActivationStore,
    label: str,
    hook: str,
    runs: Sequence[tuple[Path, SAETrainConfig]],
    source: Source = "acts",
    base: str | None = None,
) -> list[dict[str, Any]]:
    """Train one SAE per ``(out, cfg)`` (folders claimed by the caller; configs sharing the
    stream, see ``train_saes``) on one pass over the batches; return their manifests.

    The stream is the one a single SAE reads: ``n_batches_for_norm_estimate`` batches for
    the input scaling, then one batch per step. SAE ``i`` takes batch ``s`` of the training
    part at its step ``s``, so SAEs resumed at different steps share the pass too."""
    d_in = next(activation_shards(store, label, hook, source, base)).shape[1]
    started = [_start(out, cfg, d_in) for out, cfg in runs]
    cfg = started[0].cfg
    norm_batches = started[0].trainer.cfg.n_batches_for_norm_estimate
    first = min(run.trainer.n_training_steps for run in started)
    skip = first + (norm_batches if first else 0)
    data = batches(store, label, hook, cfg.batch_size, cfg.seed, source, base, skip=skip)
    fresh = [run for run in started if run.trainer.activation_scaler.scaling_factor is None]
    if fresh:  # then first == 0: the stream starts with the batches of the norm estimate
        scaler = fresh[0].trainer.activation_scaler
        scaler.estimate_scaling_factor(d_in, data, norm_batches)
        head = next(data)  # the first training batch, put back
        data = itertools.chain([head], data)
        for run in fresh:  # the same batches give the same factor: estimate it once
            run.trainer.activation_scaler.scaling_factor = scaler.scaling_factor
            if run.cfg.init_from is not None:
                _warm_start(run.trainer.sae, Path(run.cfg.init_from), scaler.scaling_factor)
            elif run.cfg.b_dec_init == "median":
                with torch.no_grad():
                    run.trainer.sae.b_dec.copy_(
                        geometric_median(head.to(run.cfg.device) * scaler.scaling_factor)
                    )
    total = started[0].trainer.cfg.total_training_steps
    what = f"SAE {label} {hook}" + (f" (x{len(started)})" if len(started) > 1 else "")
    with tqdm(total=total, initial=first, desc=what, disable=None, leave=False) as bar:
        for step in range(first, total):
            batch = next(data)
            for run in started:
                if run.trainer.n_training_steps == step:
                    _train_step(run, batch, total)
            bar.update()
    return [_finish(run, store, label, hook, source, base) for run in started]


@torch.no_grad()
def geometric_median(
    points: Float[Tensor, "n d"], iterations: int = 100, tol: float = 1e-5
) -> Float[Tensor, " d"]:
    """The point minimising the summed distance to ``points`` (Weiszfeld's iteration from
    their mean): a centre that outliers pull less than they pull the mean."""
    guess = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - guess).norm(dim=-1).clamp_min(1e-12)
        moved = (weights[:, None] * points).sum(0) / weights.sum()
        if (moved - guess).norm() < tol:
            return moved
        guess = moved
    return guess


def _train_step(run: _Run, batch: Tensor, total: int) -> None:
    """One SAELens step, then the local log row and checkpoint when they are due."""
    trainer = run.trainer
    trainer.maybe_reset_sparsity()
    step = trainer.step(batch)
    trainer.n_training_steps += 1
    if trainer.n_training_steps % LOG_EVERY == 0 or trainer.n_training_steps == total:
        run.log.append(_log_row(trainer, step))
    if trainer.n_training_steps % run.cfg.checkpoint_every == 0 and trainer.n_training_steps < total:
        _checkpoint(trainer, run.out / CHECKPOINT, run.log)


def _finish(
    run: _Run, store: ActivationStore, label: str, hook: str, source: Source, base: str | None
) -> dict[str, Any]:
    """Fold the input scaling into the weights, save the SAE and its training log; return
    its manifest."""
    trainer, sae = run.trainer, run.trainer.sae
    if trainer.activation_scaler.scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
    trainer.set_final_sae_metadata()
    for name, value in saelens_metadata(store, label, hook, source, base).items():
        sae.cfg.metadata[name] = value
    sae.save_inference_model(str(run.out))  # e.g. BatchTopK becomes a JumpReLU with its threshold
    frame = pd.DataFrame(run.log)  # columns in one order, whether or not the run was resumed
    write_parquet(
        run.out / "training_log.parquet", frame[["step", "tokens", *sorted(set(frame) - {"step", "tokens"})]]
    )
    return {
        "method": "diff-sae" if source == "diff" else "sae",
        "store": str(store.root),
        "model": label,
        "base": (base or store.labels[0]) if source == "diff" else None,
        "hook": hook,
        "prompts_sha256": store.manifest.get("prompts_sha256"),
        "config": asdict(run.cfg),
    }


def saelens_metadata(
    store: ActivationStore, label: str, hook: str, source: Source = "acts", base: str | None = None
) -> dict[str, Any]:
    """The ``cfg.metadata`` fields SAELens' tools read (as its own training runner writes
    them), describing how the store's activations were made: each prompt its own sequence,
    BOS prepended, the BOS position left out unless the harvest kept it."""
    checkpoint = next(c for c in store.checkpoints if c.label == label)
    return {
        "hook_name": hook,
        "hook_head_index": None,
        "model_name": str(checkpoint.path),
        "context_size": int(store.tokens().tokens.shape[1]),
        "prepend_bos": True,
        "seqpos_slice": (0 if store.manifest.get("include_bos") else 1, None),
        "disable_concat_sequences": True,
        "exclude_special_tokens": False,
        "rlinterp_source": source,
        "rlinterp_base_model": (base or store.labels[0]) if source == "diff" else None,
    }


WARM_START_ARCHITECTURES = ("topk", "standard")
"""Architectures whose saved inference weights map exactly onto the training SAE (BatchTopK
is saved as a JumpReLU, and a JumpReLU threshold lives in the activation units)."""


@torch.no_grad()
def _warm_start(sae: TrainingSAE[Any], path: Path, scaling_factor: float | None) -> None:
    """Load the saved SAE at ``path`` into ``sae``, un-folding the new run's input scaling
    ``scaling_factor`` (the inverse of ``fold_activation_norm_scaling_factor``), so that
    the training SAE computes the saved SAE's function on the scaled inputs it will see."""
    saved = TrainedSAE.load(path).sae
    architecture = saved.cfg.architecture()
    if architecture != sae.cfg.architecture() or architecture not in WARM_START_ARCHITECTURES:
        raise RlinterpError(
            f"cannot warm-start a {sae.cfg.architecture()} SAE from the {architecture} SAE in {path}; "
            f"warm starts need the same architecture, one of {', '.join(WARM_START_ARCHITECTURES)}"
        )
    if (saved.cfg.d_in, saved.cfg.d_sae) != (sae.cfg.d_in, sae.cfg.d_sae):
        raise RlinterpError(
            f"the SAE in {path} has d_in {saved.cfg.d_in} and d_sae {saved.cfg.d_sae}; "
            f"this run needs {sae.cfg.d_in} and {sae.cfg.d_sae}"
        )
    scale = 1.0 if scaling_factor is None else float(scaling_factor)
    W_dec = saved.W_dec * scale  # un-fold the new run's input scaling
    trade = torch.ones(sae.cfg.d_sae, device=W_dec.device)
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        # A TopK SAE that rescales by decoder norm computes the same latents and output
        # whatever its rows' norms, so give them the norm a fresh SAELens initialisation
        # starts from: Adam moves each weight by about lr per step, so a row's norm sets
        # how fast it turns, and a warm start should turn at the rate a fresh run does.
        target = sae.cfg.decoder_init_norm or 1.0
        trade = target / W_dec.norm(dim=-1).clamp(min=1e-12)
    sae.W_dec.copy_(W_dec * trade[:, None])
    sae.W_enc.copy_(saved.W_enc / scale / trade[None, :])
    sae.b_enc.copy_(saved.b_enc / trade)
    sae.b_dec.copy_(saved.b_dec * scale)


def _log_row(trainer: SAETrainer[Any], step: TrainStepOutput) -> dict[str, float | int]:
    """One row of the local training log (SAELens logs only to wandb, which we keep off)."""
    return {
        "step": trainer.n_training_steps,
        "tokens": trainer.n_training_samples,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "loss": step.loss.item(),
        **{name: float(value.item()) for name, value in step.losses.items()},
        "l0": (step.feature_acts > 0).float().sum(-1).mean().item(),
        "dead_fraction": trainer.dead_neurons.float().mean().item(),
    }


def _checkpoint(trainer: SAETrainer[Any], path: Path, log: list[dict[str, float | int]]) -> None:
    """Everything a resumed run needs, as safetensors + JSON (no pickles)."""
    tensors = {f"sae.{k}": v for k, v in trainer.sae.state_dict().items()}
    tensors |= optimizer_tensors(trainer.optimizer)
    tensors["act_freq_scores"] = trainer.act_freq_scores
    tensors["n_forward_passes_since_fired"] = trainer.n_forward_passes_since_fired
    tensors = {name: value.cpu() for name, value in tensors.items()}
    write_safetensors(path / "trainer_state.safetensors", tensors)
    write_json(
        path / "trainer_state.json",
        {
            "n_training_steps": trainer.n_training_steps,
            "n_training_samples": trainer.n_training_samples,
            "n_frac_active_samples": trainer.n_frac_active_samples,
            "scaling_factor": trainer.activation_scaler.scaling_factor,
            "coefficient_steps": {n: s.current_step for n, s in trainer.coefficient_schedulers.items()},
            "log": log,
        },
    )


def _restore(trainer: SAETrainer[Any], path: Path, log: list[dict[str, float | int]]) -> int:
    """Load a checkpoint written by ``_checkpoint`` (its log rows into ``log``); return the
    steps already done."""
    remedy = f"delete {path} to train this dictionary from the start"
    state = read_json_object(path / "trainer_state.json", remedy)
    log.extend(state["log"])
    tensors = read_safetensors(path / "trainer_state.safetensors", remedy, device=str(trainer.sae.device))
    trainer.sae.load_state_dict(
        {k.removeprefix("sae."): v for k, v in tensors.items() if k.startswith("sae.")}
    )
    restore_optimizer(trainer.optimizer, tensors)
    with warnings.catch_warnings():
        # Fast-forwarding a fresh schedule to the saved step, not training: torch's
        # "scheduler stepped before optimizer" warning does not apply.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(state["n_training_steps"]):
            trainer.lr_scheduler.step()
    for name, steps in state["coefficient_steps"].items():
        for _ in range(steps):
            trainer.coefficient_schedulers[name].step()
    trainer.act_freq_scores = tensors["act_freq_scores"]
    trainer.n_forward_passes_since_fired = tensors["n_forward_passes_since_fired"]
    trainer.n_frac_active_samples = state["n_frac_active_samples"]
    trainer.n_training_samples = state["n_training_samples"]
    trainer.n_training_steps = state["n_training_steps"]
    trainer.activation_scaler.scaling_factor = state["scaling_factor"]
    return int(state["n_training_steps"])
