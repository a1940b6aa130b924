"""Selection or novelty, step by step: persona features, the index with its interval, the
transition, and the causal checks of one checkpoint series, written to one directory.

``run_selection(series, texts, out)`` is what ``rlinterp selection`` calls. ``texts`` are
persona-labelled texts with a prompt/response split (the organism's persona texts, or a
user's labelled JSONL); every model of the series reads them (response tokens only), so the
comparison is on the same tokens. Steps:

1. harvest the series on the texts (``activations/``, resumable);
2. persona directions at every hook, scored on held-out texts; the analysis hook is
   ``cfg.hook`` or the hook whose worst persona separates best;
3. a dictionary of the base at that hook (``cfg.dictionary``, or one trained here);
4. persona latents of that dictionary and their activity at every step;
5. the selection-versus-novelty index per step (bootstrap interval over texts), its
   components and the transition (``novelty``);
6. causal checks per RL checkpoint: steering the base / ablating the checkpoint along the
   mean shift projected onto the persona directions, with the full mean shift as the
   reference and a random vector as the control (``causal``).

Output layout: ``persona_directions.parquet``, ``persona_directions.safetensors``
(``<hook>`` -> ``[persona, d]``), ``persona_latents.parquet``,
``persona_latent_trajectories.parquet``, ``index.parquet``, ``index_replicates.safetensors``,
``causal.parquet``, ``summary.json`` (``SUMMARY_SCHEMA``) and ``manifest.json`` last.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .artifacts import environment_versions, write_json, write_parquet, write_safetensors
from .causal import causal_table, steer_and_ablate
from .dictionaries import DictionaryConfig, train_dictionary
from .errors import RlinterpError
from .harvest import ActivationStore, HarvestConfig, harvest
from .novelty import IndexConfig, NoveltyIndex, StepParts, behavioural_transition, novelty_index, step_parts
from .organism import Organism
from .organism.steering import behaviour_recovery, steered_behaviour
from .persona_features import PersonaDirections, persona_directions, persona_latents, text_means
from .prompts import PromptSet
from .sae import TrainedSAE
from .series import ModelSeries

log = logging.getLogger(__name__)

KIND = "rlinterp.selection"
SUMMARY_SCHEMA = {
    "hook": "the hook analysed (persona directions separate best there unless chosen)",
    "persona_auroc": "held-out AUROC of each persona direction at that hook (one vs rest)",
    "steps": "per checkpoint: label, step, index, index_lo, index_hi (bootstrap interval), "
    "fvu_drift, persona_share (of the mean shift inside the persona span) and persona_baseline "
    "(a random subspace's share), steering_recovery and ablation_loss along the persona shift",
    "transition": "change point of the index: found, step, step_lo, step_hi, jump, support",
    "behavioural_transition": "first step whose share_none passes 50% (organism series only)",
}


@dataclass(frozen=True)
class SelectionConfig:
    """What ``run_selection`` analyses and with which budgets."""

    label: str = "persona"
    """The label column of the texts that names each text's persona."""
    hook: str | None = None
    """Hook to analyse; None picks the hook whose persona directions separate best."""
    dictionary: str | None = None
    """A trained base SAE (``rlinterp dictionaries train``) at ``hook``; None trains one."""
    dictionary_config: DictionaryConfig = field(
        default_factory=lambda: DictionaryConfig(d_sae=128, k=8, n_tokens=100_000)
    )
    """Budget of the base SAE trained when ``dictionary`` is None."""
    held_out_fraction: float = 0.3
    """Share of each persona's texts kept out of every fit."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Bootstrap and transition settings."""
    batch_size: int = 32
    """Texts per harvest batch."""
    seed: int = 0
    """Split, controls and resampling."""


@dataclass(frozen=True)
class SelectionResult:
    """Everything ``run_selection`` wrote, as tables."""

    directions: PersonaDirections
    hook: str
    latents: pd.DataFrame
    latent_trajectories: pd.DataFrame
    index: NoveltyIndex
    causal: pd.DataFrame

    def summary(self, behavioural_step: int | None = None) -> dict[str, Any]:
        """The JSON summary (``SUMMARY_SCHEMA``)."""
        auroc = self.directions.table[self.directions.table["hook"] == self.hook]
        causal = self.causal[self.causal["vector"] == "persona"].set_index("label")
        steps = []
        for row in self.index.table.itertuples():
            steps.append(
                {
                    "label": row.label,
                    "step": int(row.step),
                    "index": row.index,
                    "index_lo": row.index_lo,
                    "index_hi": row.index_hi,
                    "fvu_drift": row.fvu_drift,
                    "persona_share": row.persona_share,
                    "persona_baseline": row.persona_baseline,
                    "steering_recovery": _get(causal, row.label, "steering_recovery"),
                    "ablation_loss": _get(causal, row.label, "ablation_loss"),
                }
            )
        return {
            "schema": SUMMARY_SCHEMA,
            "hook": self.hook,
            "persona_auroc": dict(zip(auroc["persona"], auroc["auroc"].astype(float), strict=True)),
            "steps": steps,
            "transition": self.index.transition,
            "behavioural_transition": behavioural_step,
        }


def _get(frame: pd.DataFrame, label: str, column: str) -> float | None:
    return float(frame.loc[label, column]) if label in frame.index else None


def run_selection(
    series: ModelSeries,
    texts: PromptSet,
    out: str | os.PathLike[str],
    cfg: SelectionConfig | None = None,
    organism: Organism | None = None,
    regime: str | None = None,
) -> SelectionResult:
    """Run the selection-versus-novelty analysis of ``series`` on persona-labelled ``texts``
    into ``out`` (see the module docstring). When the series is ``regime`` of ``organism``,
    the causal checks also judge behaviour (persona shares and reward of the steered base and
    the ablated checkpoint, see ``organism.steering``) and the summary gives the behavioural
    transition."""
    cfg = cfg or SelectionConfig()
    if (organism is None) != (regime is None):
        raise RlinterpError("give both the organism and its regime, or neither")
    out = Path(out)
    if len(series) < 2:
        raise RlinterpError("the selection analysis needs a base and at least one RL checkpoint")
    if cfg.label not in texts.labels:
        raise RlinterpError(
            f"the texts have no {cfg.label!r} label (they have {sorted(texts.labels) or 'none'}); "
            "give persona-labelled texts"
        )
    labels = texts.labels[cfg.label]
    harvest_cfg = HarvestConfig(
        hooks=(cfg.hook,) if cfg.hook else None,
        batch_size=cfg.batch_size,
        response_only=texts.response_starts is not None,
    )
    store = harvest(series, texts, out / "activations", harvest_cfg)
    directions = persona_directions(store, labels, held_out_fraction=cfg.held_out_fraction, seed=cfg.seed)
    hook = cfg.hook or directions.best_hook
    sae = _dictionary(store, hook, out, cfg)
    latents = persona_latents(
        store, labels, hook, sae.encode, held_out_fraction=cfg.held_out_fraction, seed=cfg.seed
    )
    trajectories = _latent_trajectories(store, hook, sae, latents)
    parts = [step_parts(store, hook, sae, label) for label in store.labels]
    index = novelty_index(parts, cfg.index, persona_basis=directions.basis(hook))
    causal = _causal(series, store, hook, directions, parts, cfg.seed)
    behavioural_step = None
    if organism is not None and regime is not None:
        causal = _with_behaviour(causal, organism, regime, hook, directions, parts)
        behavioural_step = behavioural_transition(organism.behaviour(), regime)
    result = SelectionResult(directions, hook, latents, trajectories, index, causal)
    _write(result, out, series, store, cfg, behavioural_step)
    return result


def _dictionary(store: ActivationStore, hook: str, out: Path, cfg: SelectionConfig) -> Any:
    if cfg.dictionary is not None:
        trained = TrainedSAE.load(cfg.dictionary)
        trained_hook = trained.manifest.get("hook")
        if trained_hook != hook:
            raise RlinterpError(
                f"the dictionary {cfg.dictionary} was trained at {trained_hook}, not at {hook}"
            )
        return trained.sae
    path = out / "dictionary"
    if not (path / "rlinterp.json").is_file():
        train_dictionary(store, "sae", hook, path, cfg.dictionary_config, model=store.labels[0])
    return TrainedSAE.load(path).sae


@torch.no_grad()
def _latent_trajectories(
    store: ActivationStore, hook: str, sae: Any, latents: pd.DataFrame, per_persona: int = 3
) -> pd.DataFrame:
    """Mean activation of each persona's best latents over all texts, at every step."""
    chosen = latents[latents["rank"] < per_persona]
    steps = {c["label"]: int(c["step"]) for c in store.manifest["checkpoints"]}
    rows = []
    for label in store.labels:
        means = text_means(store, label, hook, sae.encode).mean(0)
        rows += [
            {
                "label": label,
                "step": steps[label],
                "persona": r.persona,
                "latent": int(r.latent),
                "mean_activation": float(means[int(r.latent)]),
            }
            for r in chosen.itertuples()
        ]
    return pd.DataFrame(rows)


def _causal(
    series: ModelSeries,
    store: ActivationStore,
    hook: str,
    directions: PersonaDirections,
    parts: list[StepParts],
    seed: int,
) -> pd.DataFrame:
    """Steering/ablation along the persona-projected mean shift and along the full shift."""
    basis = directions.basis(hook)
    results, kinds = [], []
    for part in parts:
        if part.label == series.base.label:
            continue
        shift = (part.shift.sum(0) / part.n_tokens.sum().clamp_min(1)).float()
        for kind, vector in (("persona", basis @ (basis.T @ shift)), ("full", shift)):
            results.append(steer_and_ablate(series, store, part.label, hook, vector, seed))
            kinds.append(kind)
    table = causal_table(results)
    return table.assign(vector=kinds) if len(table) else table


def _with_behaviour(
    causal: pd.DataFrame,
    organism: Organism,
    regime: str,
    hook: str,
    directions: PersonaDirections,
    parts: list[StepParts],
) -> pd.DataFrame:
    """Add behaviour columns to the causal table: how far steering the base moved its
    behaviour towards the checkpoint's, and ablating moved the checkpoint's back."""
    table = organism.behaviour()
    rows = {int(r.step): r._asdict() for r in table[table["regime"] == regime].itertuples()}
    basis = directions.basis(hook)
    shifts = {p.label: (p.shift.sum(0) / p.n_tokens.sum().clamp_min(1)).float() for p in parts}
    extra = []
    for r in causal.itertuples():
        shift = shifts[r.label]
        vector = basis @ (basis.T @ shift) if r.vector == "persona" else shift
        steered = steered_behaviour(organism, regime, 0, hook, vector)
        ablated = steered_behaviour(organism, regime, int(r.step), hook, -vector)
        towards = behaviour_recovery(rows[0], rows[int(r.step)], steered)
        back = behaviour_recovery(rows[int(r.step)], rows[0], ablated)
        extra.append(
            {
                "behaviour_steering_shares": towards["shares"],
                "behaviour_steering_reward": towards["reward"],
                "behaviour_ablation_shares": back["shares"],
                "behaviour_ablation_reward": back["reward"],
            }
        )
    return pd.concat([causal.reset_index(drop=True), pd.DataFrame(extra)], axis=1)


def _write(
    result: SelectionResult,
    out: Path,
    series: ModelSeries,
    store: ActivationStore,
    cfg: SelectionConfig,
    behavioural_step: int | None,
) -> None:
    write_parquet(out / "persona_directions.parquet", result.directions.table)
    write_safetensors(out / "persona_directions.safetensors", dict(result.directions.directions))
    write_parquet(out / "persona_latents.parquet", result.latents)
    write_parquet(out / "persona_latent_trajectories.parquet", result.latent_trajectories)
    write_parquet(out / "index.parquet", result.index.table)
    replicates = torch.from_numpy(result.index.replicates).float()
    write_safetensors(out / "index_replicates.safetensors", {"replicates": replicates})
    write_parquet(out / "causal.parquet", result.causal)
    write_json(out / "summary.json", result.summary(behavioural_step))
    write_json(
        out / "manifest.json",  # last: marks the directory finished
        {
            "kind": KIND,
            "checkpoints": series.describe(),
            "hook": result.hook,
            "config": asdict(cfg),
            "prompts_sha256": store.manifest["prompts_sha256"],
            "versions": environment_versions(),
        },
    )
