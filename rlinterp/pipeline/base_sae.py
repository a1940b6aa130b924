"""The ``dictionaries`` stage of ``rlinterp run``: one SAE trained on the base model, read
on every checkpoint of every series, plus the tables behind the feature cards.

Why one base SAE: every series of a run shares the base model and the prompts, so the
base's activations (and its SAE) are the same for all of them, and the base SAE's
reconstruction error on each RL checkpoint (the FVU drift) is comparable across series.

Writes under ``<run>/dictionaries/``:

- ``sae/``: the base SAE (see ``dictionaries.train_dictionary``);
- ``fvu_drift.parquet``: ``series, label, step`` and the SAE's quality on that model;
- ``latent_steps.parquet``: ``series, label, step, latent, mean_activation,
  firing_rate``: every latent's activity on every checkpoint (the card trajectories);
- ``contexts.parquet``: top-activating contexts per latent on the base and on each
  series' last checkpoint, with per-token activations (see ``cards.top_contexts``);
- ``decoder_tokens.parquet``: tokens each latent's decoder promotes / suppresses through
  the base model's unembedding;
- ``<series>/<method>/``: the optional per-series diff-SAE / crosscoder;
- ``info.json``: the hook and the dictionaries' folders (written last).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from sae_lens import SAE

from ..activations.harvest import ActivationStore
from ..core.artifacts import write_json, write_parquet
from ..dictionaries.cards import top_contexts
from ..dictionaries.evaluation import evaluate_sae
from ..dictionaries.sae import TrainedSAE
from ..dictionaries.train import train_dictionary
from ..diff.analysis import SeriesDiff
from ..diff.outputs import logit_tokens

if TYPE_CHECKING:
    from .config import RunContext

log = logging.getLogger(__name__)

CARD_TOKENS = 8
"""Tokens listed per latent and direction in ``decoder_tokens.parquet`` (the cards)."""


def most_changed_hook(diffs: dict[str, SeriesDiff]) -> str:
    """The hook whose activations moved most (``rel_diff_norm``) at any series' last step."""
    best: tuple[float, str] | None = None
    for diff in diffs.values():
        acts = diff.activations
        last = acts[acts["step"] == acts["step"].max()]
        top = last.loc[last["rel_diff_norm"].idxmax()]
        if best is None or float(top["rel_diff_norm"]) > best[0]:
            best = (float(top["rel_diff_norm"]), str(top["hook"]))
    assert best is not None
    return best[1]


@torch.no_grad()
def latent_activity(sae: SAE[Any], store: ActivationStore, label: str, hook: str) -> pd.DataFrame:
    """Every latent's mean activation and firing rate on ``label``'s tokens at ``hook``."""
    total = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = 0
    for x in store.shards(label, hook):
        latents = sae.encode(x.to(sae.device)).cpu().double()
        total += latents.sum(0)
        fired += (latents > 0).sum(0)
        n += len(x)
    return pd.DataFrame(
        {
            "latent": range(sae.cfg.d_sae),
            "mean_activation": (total / max(n, 1)).numpy(),
            "firing_rate": (fired / max(n, 1)).numpy(),
        }
    )


def run_dictionaries(ctx: RunContext) -> None:
    cfg = ctx.config.dictionaries
    out = ctx.stage_dir("dictionaries")
    diff_root = ctx.stage_dir("diff")
    diffs = {name: SeriesDiff.load(diff_root / name) for name in ctx.series}
    stores = {name: ActivationStore.load(diff_root / name / "activations") for name in ctx.series}
    hook = cfg.hook or most_changed_hook(diffs)
    dictionary_cfg = cfg.dictionary_config(ctx.config.compute.device)
    first = next(iter(stores.values()))
    sae_dir = out / "sae"
    if not (sae_dir / "rlinterp.json").is_file():  # an interrupted training resumes
        log.info("dictionaries: base SAE at %s (%d latents, %d tokens)", hook, cfg.d_sae, cfg.n_tokens)
        train_dictionary(first, "sae", hook, sae_dir, dictionary_cfg, model=first.labels[0])
    sae = TrainedSAE.load(sae_dir).sae

    drift: list[dict[str, Any]] = []
    activity: list[pd.DataFrame] = []
    contexts: list[pd.DataFrame] = []
    base_series = next(iter(ctx.series.values()))
    tokenizer = base_series.tokenizer()
    for name, store in stores.items():
        steps = {c["label"]: c["step"] for c in store.manifest["checkpoints"]}
        for label in store.labels:
            meta = {"series": name, "label": label, "step": steps[label]}
            drift.append({**meta, **asdict(evaluate_sae(sae, store, label, hook))})
            activity.append(latent_activity(sae, store, label, hook).assign(**meta))
        shown = [store.labels[-1]] if contexts else [store.labels[0], store.labels[-1]]
        for label in shown:
            found = top_contexts(sae, store, label, hook, tokenizer, cfg.top_k)
            contexts.append(found.assign(series="base" if label == store.labels[0] else name, label=label))
    write_parquet(out / "fvu_drift.parquet", pd.DataFrame(drift))
    write_parquet(out / "latent_steps.parquet", pd.concat(activity, ignore_index=True))
    write_parquet(out / "contexts.parquet", pd.concat(contexts, ignore_index=True))
    unembed = base_series.load(base_series.base).W_U.detach().float().cpu()
    decoder = logit_tokens(sae.W_dec.detach().float().cpu() @ unembed, tokenizer, CARD_TOKENS)
    write_parquet(out / "decoder_tokens.parquet", decoder)

    extra = {}
    for name, store in stores.items():
        for method in cfg.methods:
            folder = out / name / method
            if not (folder / "rlinterp.json").is_file():
                log.info("dictionaries: %s for %s", method, name)
                train_dictionary(store, method, hook, folder, dictionary_cfg)
            extra[f"{name}/{method}"] = str(Path(name) / method)
    write_json(out / "info.json", {"hook": hook, "sae": "sae", "extra": extra})
