"""Harvesting activations of every model of a series on the same tokens, streamed to disk.

``harvest`` runs each checkpoint over the prompt set in batches of ``batch_size`` prompts
through its plain ``transformers`` forward, reading the requested TransformerLens hooks
from the modules they name and stopping once the last of them has fired
(``models.hooked``: the values are the bridge's, at the speed of the plain model; a hook
that is no module's input or output is read through the bridge instead). The kept
positions of each batch (see ``prompts.TokenizedPrompts.keep``) are written as one
safetensors shard per (model, hook, batch), so:

- peak memory is bounded by one batch, whatever the number of prompts;
- shard ``k`` of every model and hook holds the same tokens, in the same order, so two
  models are compared shard by shard without any index bookkeeping;
- an interrupted harvest resumes: a shard that exists was written atomically and is
  complete, so only missing shards are computed; the store's fingerprint (``fingerprint``:
  weight, config and tokenizer hashes, prompts, hooks, truncation, dtype, batch size,
  storage options) must match, so shards of other inputs are never mixed in (see ``rundir``);
- each checkpoint is one task of an executor (``executor``: in this process, or one Ray
  task per checkpoint); a task writes only its own checkpoint's shards, so tasks never
  race, and a dead task's shards are judged by their final names like any others.

Storage options (``HarvestConfig``): ``store_dtype`` stores the shards in bfloat16 or
float16 (half the bytes of float32); ``max_tokens`` keeps a seeded uniform sample of the
kept tokens. The budget is applied to the ``keep`` mask before anything is written, so every
reader that maps store rows to tokens (``token_batches``, ``token_contexts``, the KL pass,
SAE splicing) sees the same subsample without knowing about it, and ``shards`` upcasts to
float32 for every reader. Both are in the manifest and, when not the defaults, in the
fingerprint (defaults add no key, so stores written before these options keep theirs).

Layout: ``manifest.json`` (written last, see ``rundir.finish``), ``tokens.safetensors``
(``tokens``, ``keep``, ``lengths``), ``<label>/<hook>/shard-<k>.safetensors`` (``acts``:
``[kept tokens of batch k, d]``, in ``store_dtype``).

One rule maps shards to tokens, ``token_batches``: batch ``k`` is prompts
``[k * batch_size, (k + 1) * batch_size)``, cut to its longest real row, and its shard holds
the ``keep`` positions of that slice in row-major order. The store's rows (its shards one
after another) are therefore the kept tokens of the whole prompt set in row-major order.
Harvesting, the KL pass (``diff.outputs``), SAE splicing (``dictionaries.evaluation``) and token contexts
all go through this rule, so the rows they talk about are the same tokens.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from ..core import rundir
from ..core.artifacts import (
    atomic_write,
    config_sha256,
    environment_versions,
    tokenizer_sha256,
    weights_sha256,
    write_safetensors,
)
from ..errors import RlinterpError
from ..models.hooked import PROBE_TOKENS, HookedModel, HookMap
from ..models.series import DTYPES, Checkpoint, ModelSeries
from .config import HarvestConfig as HarvestConfig
from .prompts import PromptSet, TokenizedPrompts

if TYPE_CHECKING:
    from ..models.executor import Executor

log = logging.getLogger(__name__)

KIND = rundir.STORE.name
MANIFEST = rundir.STORE.manifest
TOKENS = "tokens.safetensors"
BLOCK = re.compile(r"^blocks\.(\d+)\.")


def default_hooks(n_layers: int) -> list[str]:
    """The residual stream after every block."""
    return [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


def hook_layer(hook: str) -> int | None:
    match = BLOCK.match(hook)
    return int(match.group(1)) if match else None


def valid_hooks(model: TransformerBridge) -> list[str]:
    """Every hook name ``run_with_cache`` can return for ``model`` (aliases included)."""
    return list(hook_shapes(model))


def hook_shapes(model: TransformerBridge) -> dict[str, tuple[int, ...]]:
    """Every hook of ``model`` and the shape of its activations on one 2-token prompt:
    ``(1, 2, d)`` for a hook with one ``d``-vector per token, what every analysis reads."""
    probe = torch.tensor([[model.tokenizer.bos_token_id or 0, 0]], device=model.cfg.device)
    _, cache = model.run_with_cache(probe)
    return {name: tuple(value.shape) for name, value in cache.items()}


def _check_hooks(hook_map: HookMap, hooks: Sequence[str]) -> None:
    shapes, n = hook_map.shapes, PROBE_TOKENS
    unknown = [h for h in hooks if h not in shapes]
    # Show one block's names: the others repeat them with another index.
    shown = [h for h in shapes if hook_layer(h) in (None, 0)]
    if unknown:
        raise RlinterpError(
            f"unknown hook(s) {unknown}; valid names are {shown} and the same for blocks 1.."
            f"{hook_map.cfg.n_layers - 1}"
        )
    per_token = sorted(  # the residual stream first: what most analyses are about
        (h for h in shown if len(shapes[h]) == 3 and shapes[h][:2] == (1, n)), key=lambda h: "resid" not in h
    )
    for hook in hooks:
        if len(shapes[hook]) != 3 or shapes[hook][:2] != (1, n):
            raise RlinterpError(
                f"hook {hook} gives activations of shape {shapes[hook]} on a prompt of {n} tokens, not one "
                f"vector per token (1, {n}, d), which every analysis reads; choose hooks like {per_token[:6]}"
            )


class TokenBatch(NamedTuple):
    """One batch of prompts as it is run through a model: the tokens of shard ``shard``."""

    shard: int
    """The shard number ``k``."""
    prompts: slice
    """Prompt rows of the tokenized set: ``[k * batch_size, (k + 1) * batch_size)``, the last
    batch cut at the number of prompts."""
    tokens: Int[Tensor, "batch pos"]
    """The batch's tokens, cut to its longest real row (no all-padding columns)."""
    keep: Bool[Tensor, "batch pos"]
    """The positions the shard stores, in row-major order."""
    lengths: Int[Tensor, " batch"]
    """Real length of each row, BOS included."""
    rows: slice
    """The store rows (indices into the kept tokens of the whole set) this shard holds."""


def token_batches(tokenized: TokenizedPrompts, batch_size: int) -> Iterator[TokenBatch]:
    """The batches of ``tokenized`` in shard order (the module docstring's rule)."""
    if batch_size < 1:
        raise RlinterpError(f"batch_size must be positive, got {batch_size}")
    offset, n_prompts = 0, tokenized.tokens.shape[0]
    for k, start in enumerate(range(0, n_prompts, batch_size)):
        prompts = slice(start, min(start + batch_size, n_prompts))
        lengths = tokenized.lengths[prompts]
        width = int(lengths.max())
        keep = tokenized.keep[prompts, :width]
        n_kept = int(keep.sum())
        tokens = tokenized.tokens[prompts, :width]
        yield TokenBatch(k, prompts, tokens, keep, lengths, slice(offset, offset + n_kept))
        offset += n_kept


def budget_keep(
    keep: Bool[Tensor, "prompt pos"], max_tokens: int | None, seed: int
) -> Bool[Tensor, "prompt pos"]:
    """``keep`` cut to a uniform random sample of ``max_tokens`` of its positions (all of them
    when there are no more than that), the same for the same ``seed``."""
    n_kept = int(keep.sum())
    if max_tokens is None or n_kept <= max_tokens:
        return keep
    where = keep.flatten().nonzero().squeeze(1)
    chosen = where[torch.randperm(n_kept, generator=torch.Generator().manual_seed(seed))[:max_tokens]]
    sampled = torch.zeros(keep.numel(), dtype=torch.bool)
    sampled[chosen] = True
    return sampled.view(keep.shape)


class ActivationStore:
    """A finished (or resumable) harvest on disk."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(cls, root: str | Path) -> ActivationStore:
        """Open a finished store; raise if ``root`` is unfinished or something else."""
        root = Path(root)
        return cls(root, rundir.read_finished(root, rundir.STORE, "run the harvest (or diff) again"))

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What determined these activations (``harvest``'s fingerprint; for a store
        written without one, the inputs its manifest describes)."""
        recorded = self.manifest.get("fingerprint")
        if isinstance(recorded, dict):
            return recorded
        described = ("checkpoints", "hooks", "batch_size", "n_prompts", "n_shards", "prompts_sha256")
        return {key: self.manifest.get(key) for key in described}

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def labels(self) -> list[str]:
        return [c["label"] for c in self.manifest["checkpoints"]]

    @property
    def n_shards(self) -> int:
        return int(self.manifest["n_shards"])

    @property
    def store_dtype(self) -> str:
        """Dtype the shards are stored in (stores from before the option: float32)."""
        return str(self.manifest.get("store_dtype", "float32"))

    @property
    def checkpoints(self) -> tuple[Checkpoint, ...]:
        """The checkpoints the store was harvested from (paths from its manifest)."""
        return tuple(Checkpoint(c["label"], c["step"], Path(c["path"])) for c in self.manifest["checkpoints"])

    def series(self, **kwargs: Any) -> ModelSeries:
        """The series the store was harvested from, in the dtype it was harvested in;
        ``kwargs`` go to ``ModelSeries`` (``device``, ``dtype``, ``check_fidelity``, ...)."""
        described = self.manifest["checkpoints"]
        if "dtype" in described[0]:
            kwargs.setdefault("dtype", DTYPES.get(described[0]["dtype"]))
        return ModelSeries(self.checkpoints, **kwargs)

    def tokens(self) -> TokenizedPrompts:
        saved = load_file(self.root / TOKENS)
        return TokenizedPrompts(tokens=saved["tokens"], lengths=saved["lengths"], keep=saved["keep"].bool())

    def token_batches(self) -> Iterator[TokenBatch]:
        """The store's prompts batch by batch, batch ``k`` being the tokens of shard ``k``."""
        return token_batches(self.tokens(), int(self.manifest["batch_size"]))

    def token_contexts(
        self, rows: Sequence[int], tokenizer: PreTrainedTokenizerBase, context: int = 12
    ) -> pd.DataFrame:
        """For store rows (kept tokens, in store order): ``prompt, position``, the decoded
        ``context`` of up to ``context`` tokens before it (BOS excluded) and the ``token``."""
        tokenized = self.tokens()
        where = self.row_positions()
        out = []
        for row in rows:
            prompt, pos = (int(v) for v in where[int(row)])
            before = tokenized.tokens[prompt, max(1, pos - context) : pos].tolist()
            token = [int(tokenized.tokens[prompt, pos])]
            out.append(
                {
                    "prompt": prompt,
                    "position": pos,
                    "context": tokenizer.decode(before),
                    "token": tokenizer.decode(token),
                }
            )
        return pd.DataFrame(out, columns=["prompt", "position", "context", "token"])

    def row_positions(self) -> Int[Tensor, "row 2"]:
        """``(prompt, position)`` of every store row, through the rule that wrote the shards."""
        batches = token_batches(self.tokens(), int(self.manifest["batch_size"]))
        return torch.cat([b.keep.nonzero() + torch.tensor([b.prompts.start, 0]) for b in batches])

    def shard_path(self, label: str, hook: str, k: int) -> Path:
        return self.root / label / hook / f"shard-{k:05d}.safetensors"

    def shards(self, label: str, hook: str) -> Iterator[Float[Tensor, "token d"]]:
        """The activations of ``label`` at ``hook``, one shard at a time, in token order, as
        float32 whatever ``store_dtype`` they are stored in."""
        if label not in self.labels:
            raise RlinterpError(f"no model {label!r} in {self.root}; it has {self.labels}")
        if hook not in self.hooks:
            raise RlinterpError(f"hook {hook!r} was not harvested in {self.root}; it has {self.hooks}")
        for k in range(self.n_shards):
            yield load_file(self.shard_path(label, hook, k))["acts"].float()

    def read(self, label: str, hook: str) -> Float[Tensor, "token d"]:
        """All activations of ``label`` at ``hook`` (loads every shard: mind the size)."""
        return torch.cat(list(self.shards(label, hook)))


def shuffled_batches(
    chunks: Iterable[Tensor], batch_size: int, seed: int, buffer_batches: int = 16
) -> Iterator[Tensor]:
    """Rows of ``chunks`` (e.g. store shards, in order) in shuffled batches of ``batch_size``
    (the last may be smaller). Chunks enter a buffer of about ``buffer_batches`` batches that
    is reshuffled after each chunk, so memory stays at one chunk plus the buffer; rows of
    nearby chunks mix, distant ones less. Deterministic in ``seed``."""
    if batch_size < 1 or buffer_batches < 1:
        raise RlinterpError(
            f"batch_size and buffer_batches must be positive, got {batch_size}, {buffer_batches}"
        )
    generator = torch.Generator().manual_seed(seed)
    pool = torch.empty(0)
    for chunk in chunks:
        pool = torch.cat([pool, chunk]) if len(pool) else chunk
        pool = pool[torch.randperm(len(pool), generator=generator)]
        while len(pool) >= buffer_batches * batch_size:
            yield pool[:batch_size]
            pool = pool[batch_size:]
    if len(pool):
        yield from pool.split(batch_size)


def epoch_batches(
    epoch: Callable[[int], Iterable[Tensor]],
    batch_size: int,
    seed: int,
    skip: int = 0,
    what: str = "the data",
) -> Iterator[Tensor]:
    """An endless stream of full batches: ``epoch(seed)``, then ``epoch(seed + 1)``, ...,
    each epoch's short last batch dropped. The first ``skip`` batches are dropped too, which
    is how a resumed training run continues where the interrupted one stopped."""
    produced = 0
    for n in itertools.count():
        before = produced
        for batch in epoch(seed + n):
            if len(batch) == batch_size:
                if produced >= skip:
                    yield batch
                produced += 1
        if produced == before:
            raise RlinterpError(f"{what} has fewer tokens than one batch of {batch_size}")


def _settings(series: ModelSeries, cfg: HarvestConfig) -> tuple[HookMap, list[str], int]:
    """The series' hook map, the hooks and the truncation length ``cfg`` resolves to."""
    hook_map = series.hook_map()
    hooks = list(cfg.hooks) if cfg.hooks else default_hooks(hook_map.cfg.n_layers)
    _check_hooks(hook_map, hooks)
    return hook_map, hooks, cfg.max_length or hook_map.cfg.n_ctx


def prompts_sha256(prompts: PromptSet) -> str:
    """Digest of the texts and their prompt/response split (labels do not change activations)."""
    return hashlib.sha256(json.dumps([prompts.texts, prompts.response_starts]).encode()).hexdigest()


def fingerprint(series: ModelSeries, prompts: PromptSet, cfg: HarvestConfig | None = None) -> dict[str, Any]:
    """Everything that determines the shards of harvesting ``prompts`` through ``series``
    (what resume compares): checkpoint labels and steps, every checkpoint's weight and
    config hashes, the tokenizer files, prompts, hooks, truncation, dtype, BOS and
    response handling, batch size, and the storage options when they are not the defaults.
    Not the device, paths or executor: they do not change the result. Loads the base model
    (to resolve default hooks and context length)."""
    cfg = cfg or HarvestConfig()
    _, hooks, max_length = _settings(series, cfg)
    return _fingerprint(series, prompts, cfg, hooks, max_length)


def _fingerprint(
    series: ModelSeries, prompts: PromptSet, cfg: HarvestConfig, hooks: list[str], max_length: int
) -> dict[str, Any]:
    found: dict[str, Any] = {"checkpoints": [f"{c.label} (step {c.step})" for c in series]}
    for c in series:
        found[f"weights of {c.label}"] = weights_sha256(c.path)
        found[f"config of {c.label}"] = config_sha256(c.path)
    return (
        found
        | {
            "tokenizer": tokenizer_sha256(series.base.path),
            "prompts": prompts_sha256(prompts),
            "hooks": hooks,
            "max_length": max_length,
            "dtype": str(series.dtype).removeprefix("torch."),
            "include_bos": cfg.include_bos,
            "response_only": cfg.response_only,
            "batch_size": cfg.batch_size,
        }
        | _storage(cfg)
    )


def _storage(cfg: HarvestConfig) -> dict[str, Any]:
    """The storage options that differ from the defaults (older stores have no such keys)."""
    found: dict[str, Any] = {}
    if cfg.store_dtype != "float32":
        found["store_dtype"] = cfg.store_dtype
    if cfg.max_tokens is not None:
        found |= {"max_tokens": cfg.max_tokens, "token_seed": cfg.token_seed}
    return found


def _plan(series: ModelSeries, prompts: PromptSet, cfg: HarvestConfig, hooks: list[str]) -> dict[str, Any]:
    return {
        "checkpoints": series.describe(),
        "hooks": hooks,
        "batch_size": cfg.batch_size,
        "n_prompts": len(prompts),
        "n_shards": -(-len(prompts) // cfg.batch_size),
        "prompts_sha256": prompts_sha256(prompts),
        "include_bos": cfg.include_bos,
        "response_only": cfg.response_only,
        "store_dtype": cfg.store_dtype,
        "max_tokens": cfg.max_tokens,
        "token_seed": cfg.token_seed,
    }


def harvest(
    series: ModelSeries,
    prompts: PromptSet,
    out: str | Path,
    cfg: HarvestConfig | None = None,
    *,
    force: bool = False,
    executor: Executor | None = None,
    reuse: Sequence[ActivationStore] = (),
) -> ActivationStore:
    """Harvest ``cfg.hooks`` of every checkpoint of ``series`` on ``prompts`` into ``out``.

    ``out`` must be absent, empty, or a store: a finished store of the same fingerprint is
    returned as it is, an interrupted one resumed; one of other inputs is refused naming
    what changed, or (``force``) harvested again from scratch. Each checkpoint with missing
    shards is one task of ``executor`` (default: this process, one after another).

    ``reuse``: finished stores whose shards are taken (hard-linked, or copied) instead of
    computed wherever they hold the same checkpoint weights on the same tokens (see
    ``reusable_shards``), e.g. the base model shared by several series."""
    from ..models.executor import LocalExecutor

    cfg = cfg or HarvestConfig()
    out = Path(out)
    series.validate()
    hook_map, hooks, max_length = _settings(series, cfg)
    entries = {TOKENS, *(c.label for c in series)}
    fingerprint = _fingerprint(series, prompts, cfg, hooks, max_length)
    claimed = rundir.claim(
        out,
        rundir.STORE,
        fingerprint,
        entries,
        resumable=entries,
        force=force,
    )
    if claimed.manifest is not None:  # finished, from the same inputs
        return ActivationStore(out, claimed.manifest)
    plan = _plan(series, prompts, cfg, hooks)
    tokenized = prompts.tokenize(hook_map.tokenizer, max_length, cfg.include_bos, cfg.response_only)
    keep = budget_keep(tokenized.keep, cfg.max_tokens, cfg.token_seed)
    write_safetensors(
        out / TOKENS,
        {"tokens": tokenized.tokens, "keep": keep.to(torch.uint8), "lengths": tokenized.lengths},
    )
    layers = [hook_layer(h) for h in hooks]
    # Stop after the deepest requested block, unless a hook lies outside the blocks.
    stop_at = None if any(x is None for x in layers) else max(x for x in layers if x is not None) + 1
    task = HarvestTask(out, plan, stop_at)
    store = ActivationStore(out, plan)
    for checkpoint in series:
        for donor in reuse:
            _link_shards(donor, store, reusable_shards(donor, fingerprint, checkpoint.label, hooks))
    todo = [checkpoint for checkpoint in series if task.missing(checkpoint.label)]
    if claimed.state == "resume":
        done = [c.label for c in series if c not in todo]
        log.info("harvest in %s: resumed; %d of %d checkpoints already complete", out, len(done), len(series))
    (executor or LocalExecutor()).map(task, series, todo)
    rundir.remove_orphans(out, entries)  # temporary files of tasks that died and were retried
    cut = tokenized.tokens_cut  # truncation is also logged by tokenize
    truncated = {"prompts": int((cut > 0).sum()), "tokens": int(cut.sum())} if cut is not None else None
    budget = {"n_tokens": int(keep.sum()), "n_tokens_before_budget": int(tokenized.keep.sum())}
    manifest = {**plan, **budget, "truncated": truncated, "versions": environment_versions()}
    return ActivationStore(out, rundir.finish(out, rundir.STORE, manifest))


@dataclass(frozen=True)
class HarvestTask:
    """One checkpoint's missing shards of the store at ``root`` (an executor task: plain,
    picklable data; it reads the tokens the driver wrote to ``root``)."""

    root: Path
    plan: dict[str, Any]
    """The store's manifest so far (``_plan``): hooks, batch size, shards, storage."""
    stop_at: int | None
    """Block after which the forward pass stops (None: run the whole model)."""

    def missing(self, label: str) -> list[int]:
        """Shards of ``label`` not written yet (a shard under its final name is complete)."""
        store = ActivationStore(self.root, self.plan)
        return [
            k
            for k in range(self.plan["n_shards"])
            if not all(store.shard_path(label, h, k).is_file() for h in self.plan["hooks"])
        ]

    def __call__(self, series: ModelSeries, checkpoint: Checkpoint) -> int:
        """Harvest the missing shards of ``checkpoint``; return how many were written."""
        missing = set(self.missing(checkpoint.label))
        if not missing:
            return 0
        store = ActivationStore(self.root, self.plan)
        hooks = list(self.plan["hooks"])
        # The plain forward with hooks on the modules (``models.hooked``), unless a hook is
        # no module's input or output: then TransformerLens' bridge.
        fast = all(hook in series.hook_map().sites for hook in hooks)
        model = series.hooked(checkpoint) if fast else series.load(checkpoint)
        todo = [b for b in token_batches(store.tokens(), self.plan["batch_size"]) if b.shard in missing]
        dtype = DTYPES[self.plan["store_dtype"]]
        for batch in tqdm(todo, desc=f"harvest {checkpoint.label}", unit="batch", disable=None, leave=False):
            _harvest_batch(model, checkpoint.label, batch, hooks, self.stop_at, store, dtype)
        return len(todo)


TOKEN_SETTINGS = (
    "tokenizer",
    "prompts",
    "max_length",
    "dtype",
    "include_bos",
    "response_only",
    "batch_size",
    "store_dtype",
    "max_tokens",
    "token_seed",
)
"""The fingerprint entries that fix a store's tokens, their shards and how they are stored
(``reusable_shards``; the storage ones are absent from the fingerprint at their defaults)."""


def reusable_shards(
    donor: ActivationStore, fingerprint: dict[str, Any], label: str, hooks: Sequence[str]
) -> dict[tuple[str, str], str]:
    """Which of ``label``'s shards (per hook) a finished ``donor`` store already holds for a
    store of ``fingerprint``: ``(label, hook) -> donor label``. The donor must have the same
    tokens (``TOKEN_SETTINGS``) and a checkpoint with the same weight and config hashes;
    activations at a hook depend on nothing else."""
    theirs = donor.fingerprint
    if any(theirs.get(key) != fingerprint.get(key) for key in TOKEN_SETTINGS):
        return {}
    same = [
        other
        for other in donor.labels
        if theirs.get(f"weights of {other}") == fingerprint[f"weights of {label}"]
        and theirs.get(f"config of {other}") == fingerprint[f"config of {label}"]
    ]
    if not same:
        return {}
    return {(label, hook): same[0] for hook in hooks if hook in donor.hooks}


def _link_shards(donor: ActivationStore, store: ActivationStore, found: dict[tuple[str, str], str]) -> None:
    """Hard-link (or copy, across file systems) ``found``'s shards from ``donor`` into
    ``store``, skipping shards it already has. Shards are never modified after they are
    written, so a link is as good as a copy; each appears under its final name at once."""
    for (label, hook), theirs in found.items():
        taken = 0
        for k in range(store.n_shards):
            target = store.shard_path(label, hook, k)
            if target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = donor.shard_path(theirs, hook, k)
            try:
                os.link(source, target)
            except OSError:
                atomic_write(target, partial(shutil.copyfile, source))
            taken += 1
        if taken:
            log.info("harvest: %s at %s taken from %s", label, hook, donor.root)


@torch.no_grad()
def _harvest_batch(
    model: HookedModel | TransformerBridge,
    label: str,
    batch: TokenBatch,
    hooks: list[str],
    stop_at: int | None,
    store: ActivationStore,
    dtype: torch.dtype = torch.float32,
) -> None:
    keep = batch.keep
    tokens = batch.tokens.to(model.cfg.device)
    cache: Any  # a dict of tensors, or the bridge's ActivationCache
    if isinstance(model, HookedModel):  # stops after the last hook by itself
        _, cache = model.run_with_cache(tokens, hooks, return_type=None)
    else:
        stop = stop_at if stop_at is not None and stop_at < model.cfg.n_layers else None
        _, cache = model.run_with_cache(tokens, names_filter=hooks, stop_at_layer=stop)
    for hook in hooks:
        acts = cache[hook]
        if acts.ndim != 3:
            raise RlinterpError(
                f"hook {hook} gives activations of shape {tuple(acts.shape)}; only [batch, pos, d] hooks "
                "can be harvested"
            )
        kept = acts[keep.to(acts.device)].float().cpu()
        if not torch.isfinite(kept).all():
            first = batch.prompts.start
            bad = sorted({first + int(i) for i in torch.nonzero(~torch.isfinite(acts).all(-1))[:, 0]})
            raise RlinterpError(f"non-finite activations in {label} at {hook} (prompts {bad[:5]})")
        stored = kept.to(dtype)
        if not torch.isfinite(stored).all():
            raise RlinterpError(
                f"activations of {label} at {hook} exceed the range of {str(dtype).removeprefix('torch.')} "
                f"(largest magnitude {kept.abs().max().item():.3g}); store them as bfloat16 or float32"
            )
        write_safetensors(store.shard_path(label, hook, batch.shard), {"acts": stored})
