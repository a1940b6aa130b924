"""One entry point for the three dictionary methods on an activation store.

``train_dictionary(store, method, hook, out, cfg, ...)`` trains

- ``sae``: an SAE on one model's activations (SAELens, see ``sae``);
- ``diff-sae``: an SAE on per-token differences, model minus base (see ``sae``);
- ``crosscoder``: a BatchTopK crosscoder over several models (ours, see ``crosscoder``);

from one ``DictionaryConfig``, and writes beside the dictionary:

- ``rlinterp.json``: method, store, models, hook, config and fingerprint (written once,
  last: the finished marker, see ``rundir``; an interrupted run resumes from its training
  checkpoint when started again with the same store, method, models, hook and config);
- ``top_contexts.parquet``: the highest-activating tokens of every latent with their
  context (for a crosscoder, on the paired tokens, which are the same for every model);
- for a crosscoder, ``latents.parquet`` (decoder norms and cosine, firing frequency, and a
  kind: shared / amplified / suppressed / repurposed / base-only / RL-only / inactive, see
  ``crosscoder.latent_table``) and ``latent_scaling.parquet`` for the latents that look
  exclusive.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from sae_lens import SAE

from ..activations.harvest import ActivationStore, epoch_batches
from ..core import rundir
from ..core.artifacts import write_parquet
from ..errors import RlinterpError
from ..models.series import Checkpoint, ModelSeries
from .config import METHODS as METHODS
from .config import DictionaryConfig as DictionaryConfig
from .config import Method as Method
from .crosscoder import (
    EXCLUSIVE_KINDS,
    Crosscoder,
    latent_activity,
    latent_scaling,
    latent_table,
    paired_batches,
    train_crosscoder,
)
from .evaluation import evaluate_sae, fvu_drift
from .sae import (
    CHECKPOINT,
    ENTRIES,
    Source,
    TrainedSAE,
    activation_shards,
    dictionary_fingerprint,
    fit_sae,
)

if TYPE_CHECKING:
    from ..models.executor import Executor


def train_dictionary(
    store: ActivationStore,
    method: Method,
    hook: str,
    out: str | os.PathLike[str],
    cfg: DictionaryConfig | None = None,
    model: str | None = None,
    base: str | None = None,
    models: list[str] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Train one dictionary (see the module docstring); return its folder.

    ``model`` is the model of an ``sae``/``diff-sae`` (default: the store's base for an SAE,
    its last model for a diff-SAE); ``base`` the reference of a diff-SAE (default: the
    store's first model); ``models`` those of a crosscoder, base first (default: the store's
    first and last). ``out`` must be absent, empty or a dictionary directory: a finished
    dictionary of the same fingerprint is kept as it is, an interrupted one resumed; one of
    other inputs is refused naming what changed, or (``force``) trained again."""
    cfg = cfg or DictionaryConfig()
    out = Path(out)
    labels = store.labels
    if method not in METHODS:
        raise RlinterpError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if hook not in store.hooks:
        raise RlinterpError(f"hook {hook!r} was not harvested in {store.root}; it has {store.hooks}")
    _check_models(store, method, model, base, models)
    source: Source = "diff" if method == "diff-sae" else "acts"
    chosen = models or [labels[0], labels[-1]]
    label = model or (labels[-1] if source == "diff" else labels[0])
    reference = (base or labels[0]) if source == "diff" else None
    tokenizer = store.series(check_fidelity=False).tokenizer()
    which = {"models": chosen} if method == "crosscoder" else {"model": label, "base": reference}
    settings = {"method": method, "hook": hook, **which, **asdict(cfg)}
    inputs = dictionary_fingerprint(store, settings)
    claimed = rundir.claim(out, rundir.DICTIONARY, inputs, ENTRIES, resumable=(CHECKPOINT,), force=force)
    if claimed.state == "finished":
        return out
    manifest: dict[str, Any]
    if method == "crosscoder":
        _crosscoder(store, chosen, hook, out, cfg)
        crosscoder = Crosscoder.load(out)
        shards = zip(*(store.shards(label, hook) for label in chosen), strict=True)
        contexts = top_activations(crosscoder.encode(torch.stack(pair, dim=1)) for pair in shards)
        manifest = {"models": chosen, "store": str(store.root)}
    else:
        manifest = fit_sae(store, label, hook, out, cfg.sae_config(), source, reference)
        sae = SAE.load_from_disk(str(out))
        contexts = top_activations(
            sae.encode(x) for x in activation_shards(store, label, hook, source, reference)
        )
    context_table = pd.concat([contexts, store.token_contexts(contexts["row"].tolist(), tokenizer)], axis=1)
    context_table = context_table.astype({"latent": "int64", "rank": "int64", "row": "int64"})
    write_parquet(out / "top_contexts.parquet", context_table)
    manifest |= {"method": method, "hook": hook, "dictionary_config": asdict(cfg)}
    rundir.finish(out, rundir.DICTIONARY, manifest)  # last: the dictionary is finished
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return out


def _check_models(
    store: ActivationStore, method: Method, model: str | None, base: str | None, models: list[str] | None
) -> None:
    """Before any compute: the named models exist in the store and the method gets two
    different ones where it compares (crosscoder, diff-SAE)."""
    labels = store.labels
    named = (models or []) if method == "crosscoder" else [m for m in (model, base) if m is not None]
    unknown = [m for m in named if m not in labels]
    if unknown:
        raise RlinterpError(f"no model {unknown[0]!r} in {store.root}; it has {labels}")
    if method == "crosscoder":
        chosen = models or [labels[0], labels[-1]]
        if len(set(chosen)) < 2 or len(set(chosen)) != len(chosen):
            raise RlinterpError(f"a crosscoder compares at least two different models, got {chosen}")
    elif method == "diff-sae" and (model or labels[-1]) == (base or labels[0]):
        raise RlinterpError(f"a diff-SAE needs two different models; both are {model or labels[-1]!r}")


def evaluate_dictionary(
    path: str | os.PathLike[str], downstream: bool = True, *, executor: Executor | None = None
) -> pd.DataFrame:
    """Evaluate a trained SAE or diff-SAE on every model of its store (the FVU drift curve,
    with spliced CE/KL when ``downstream``); written to ``eval.parquet`` beside it. For a
    crosscoder, its latent table with the latent-scaling verdicts. With an ``executor``, the
    downstream evaluation of an SAE is one task per checkpoint (``DriftTask``)."""
    path = Path(path)
    hint = "train it with `rlinterp dictionaries train`"
    manifest = rundir.read_finished(path, rundir.DICTIONARY, hint)
    rundir.remove_orphans(path, manifest.get("entries", ENTRIES))  # of a killed earlier evaluation
    if manifest["method"] == "crosscoder":
        table = pd.read_parquet(path / "latents.parquet")
        scaling = path / "latent_scaling.parquet"
        if scaling.is_file():
            verdicts = pd.read_parquet(scaling).set_index("latent")[["nu_recon", "nu_error", "spurious"]]
            table = table.join(verdicts)
        return table
    store = ActivationStore.load(manifest["store"])
    sae = TrainedSAE.load(path).sae
    series = store.series() if downstream else None
    if manifest["method"] == "diff-sae":
        table = pd.DataFrame(
            [asdict(evaluate_sae(sae, store, manifest["model"], manifest["hook"], series, manifest["base"]))]
        )
    elif executor is not None and series is not None:
        table = pd.DataFrame(executor.map(DriftTask(path), series, list(series)))
    else:
        table = fvu_drift(sae, store, manifest["hook"], series)
    write_parquet(path / "eval.parquet", table)
    return table


@dataclass(frozen=True)
class DriftTask:
    """The SAE at ``path`` evaluated on one checkpoint of its store and spliced into that
    model: one row of ``fvu_drift`` (an executor task; it loads the SAE and store itself)."""

    path: Path

    def __call__(self, series: ModelSeries, checkpoint: Checkpoint) -> dict[str, Any]:
        manifest = rundir.read_finished(self.path, rundir.DICTIONARY, "train it again")
        store = ActivationStore.load(manifest["store"])
        sae = TrainedSAE.load(self.path).sae
        found = evaluate_sae(sae, store, checkpoint.label, manifest["hook"], series)
        return {"step": checkpoint.step, **asdict(found)}


def _repeat(
    store: ActivationStore, labels: list[str], hook: str, batch_size: int, seed: int
) -> Iterator[torch.Tensor]:
    """Full paired batches, epoch after epoch, each epoch shuffled with its own seed."""
    return epoch_batches(
        lambda epoch_seed: paired_batches(store, labels, hook, batch_size, epoch_seed),
        batch_size,
        seed,
        what=f"{labels} at {hook}",
    )


def _crosscoder(
    store: ActivationStore, labels: list[str], hook: str, out: Path, cfg: DictionaryConfig
) -> None:
    d_in = next(store.shards(labels[0], hook)).shape[1]
    crosscoder = train_crosscoder(
        _repeat(store, labels, hook, cfg.batch_size, cfg.seed),
        cfg.crosscoder_config(d_in, len(labels)),
        device=cfg.device,
        checkpoint=out / CHECKPOINT,
    )
    crosscoder.save(out)
    shards = zip(*(store.shards(label, hook) for label in labels), strict=True)
    activity = latent_activity(crosscoder, (torch.stack(pair, dim=1) for pair in shards))
    table = latent_table(crosscoder, base=0, post=len(labels) - 1, activity=activity)
    write_parquet(out / "latents.parquet", table)
    exclusive = table.index[table["kind"].isin(EXCLUSIVE_KINDS)].tolist()
    if exclusive:
        scaling = pd.concat(
            [
                latent_scaling(
                    crosscoder,
                    paired_batches(store, labels, hook, cfg.batch_size, cfg.seed),
                    [int(j) for j in table.loc[exclusive][table.loc[exclusive, "kind"] == kind].index],
                    own=own,
                    other=other,
                )
                for kind, own, other in (("base_only", 0, len(labels) - 1), ("rl_only", len(labels) - 1, 0))
                if (table.loc[exclusive, "kind"] == kind).any()
            ],
            ignore_index=True,
        )
        write_parquet(out / "latent_scaling.parquet", scaling)


@torch.no_grad()
def top_activations(latent_batches: Iterable[torch.Tensor], k: int = 10) -> pd.DataFrame:
    """The ``k`` highest activations of every latent over ``[tokens, d_sae]`` batches given
    in store order: ``latent, rank, activation, row`` (``row`` indexes the store's kept
    tokens). Memory: one batch plus ``k x d_sae``."""
    best: torch.Tensor | None = None
    rows = torch.empty(0, dtype=torch.long)
    offset = 0
    for latents in latent_batches:
        latents = latents.float().cpu()
        index = torch.arange(offset, offset + len(latents)).unsqueeze(1).expand_as(latents)
        values = latents if best is None else torch.cat([best, latents])
        top = values.topk(min(k, len(values)), dim=0)
        best, rows = top.values, (index if best is None else torch.cat([rows, index])).gather(0, top.indices)
        offset += len(latents)
    if best is None:
        return pd.DataFrame(columns=["latent", "rank", "activation", "row"])
    records = [
        (latent, rank, float(best[rank, latent]), int(rows[rank, latent]))
        for latent in range(best.shape[1])
        for rank in range(best.shape[0])
        if best[rank, latent] > 0
    ]
    return pd.DataFrame(records, columns=["latent", "rank", "activation", "row"])
