"""Selection or novelty, step by step: persona features, the index with its interval, the
transition, and the causal checks of one checkpoint series, written to one directory.

``run_selection(series, texts, out)`` is what ``rlinterp selection`` calls. ``texts`` are
persona-labelled texts with a prompt/response split (the organism's persona texts, or a
user's labelled JSONL); every model of the series reads them (response tokens only), so the
comparison is on the same tokens. Steps:

1. harvest the series on the texts (``activations/``, resumable);
2. persona directions at every hook, scored on held-out texts;
3. the selection-versus-novelty index at every block (``selection.readout``: what the
   base's own computation can express of each block's change, against a seed control) per
   step with its interval, the step's verdict naming its block, and the transition
   (``selection.index``). It does not depend on any hook or dictionary, so ``rlinterp
   selection`` and the selection stage of ``rlinterp run`` read the same series alike;
4. the explanation hook: ``cfg.hook``, or the residual stream after the block the index
   names (at the transition, else at the last step); a dictionary of the base there
   (``cfg.dictionary``, or one trained here) and ``dictionary_seeds - 1`` twins of other
   seeds; the dictionary share and the latents that carry each step's change
   (``selection.explanation``), its interval over texts and dictionary seeds;
5. persona latents of that dictionary and their activity at every step;
6. causal checks per RL checkpoint (``causal``), each edit with a random control, in the
   ``edit`` column: ``persona`` steers the base / ablates the checkpoint along the mean shift
   projected onto the persona directions, ``full`` along the whole mean shift (the
   reference); ``persona_choice`` patches, at each text's decision position (its last prompt
   token) at ``cfg.decision_hook``, the checkpoint's component in the span of the persona
   directions *read there* (``persona_features.decision_directions``) into the base, and
   the base's into the checkpoint. One vector can only push every prompt the same way; the
   patch carries a per-prompt re-weighting of the personas, which is what selection by a
   reward that depends on the question looks like;

7. on organism series, the internal persona readout on each checkpoint's own (on-policy)
   answers to the behaviour table's questions against that table's persona shares
   (Spearman over steps).

Output layout: ``persona_directions.parquet``, ``persona_directions.safetensors``
(``<hook>`` -> ``[persona, d]``), ``decision_directions.parquet`` and
``decision_directions.safetensors`` (the same at the decision position), ``persona_latents.parquet``,
``persona_latent_trajectories.parquet``, ``index.parquet`` (per step), ``index_layers.parquet``
(per step and block), ``index_replicates.safetensors``, ``explanation.parquet`` (per step),
``carriers.parquet``, ``dictionary_seeds/`` (the twins),
``causal.parquet``, ``readout.parquet`` and ``on_policy/`` (organism series),
``summary.json`` (``SUMMARY_SCHEMA``) and ``manifest.json`` last. The directory is claimed
through ``rundir`` (kind ``rlinterp.selection``): a finished analysis of the same inputs is
read back, one of other inputs refused naming what changed, anything else left untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file

from ..activations.harvest import ActivationStore, HarvestConfig, fingerprint, harvest
from ..activations.onpolicy import SamplingConfig
from ..activations.prompts import PromptSet
from ..core import rundir
from ..core.artifacts import environment_versions, sha256_file, write_json, write_parquet, write_safetensors
from ..dictionaries.sae import SAETrainConfig, TrainedSAE, sae_hook_on, train_sae
from ..dictionaries.train import train_dictionary
from ..errors import RlinterpError
from ..models.series import ModelSeries
from ..organism.layout import Organism
from .checks import CausalChecks, causal_checks, persona_readout, with_behaviour
from .config import EDITS as EDITS
from .config import SelectionConfig as SelectionConfig
from .explanation import carriers, dictionary_share, step_parts
from .index import NoveltyIndex, behavioural_transition, novelty_index
from .personas import (
    PersonaDirections,
    PersonaSplit,
    decision_directions,
    persona_directions,
    persona_latents,
    text_means,
)
from .readout import readout_parts

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = {
    "hook": "the explanation hook: the dictionary, persona latents and mean-shift checks read there "
    "(the residual after the block the index names, unless chosen)",
    "persona_auroc": "held-out AUROC of each persona direction at that hook (one vs rest)",
    "steps": "per checkpoint: label, step, index, index_lo, index_hi (interval over texts, read-out "
    "fit and control seed), side (selection, novelty or undecided), layer (the block with the largest "
    "novelty), dictionary_share with dictionary_share_lo/hi (interval over texts and dictionary seeds), "
    "fvu_drift, persona_share (of the mean shift inside the persona span) and persona_baseline "
    "(a random subspace's share), steering_recovery and ablation_loss along the persona shift, "
    "choice_recovery and choice_loss of the decision-position persona patch (share of the KL at "
    "the decision positions) and, on organism series, choice_behaviour_recovery (share of the "
    "persona/style-share change the patched base reproduces) and its random-subspace control",
    "decision_hook": "where the persona-choice patch runs (the last block's residual by default)",
    "decision_auroc": "held-out AUROC of each persona direction read at the decision position",
    "layers": "per step and block: novelty, novelty_lo, novelty_hi, side, unexplained_base, "
    "unexplained_control, local_share, local_rms, change_rms",
    "transition": "change point of the index: found, step, step_lo, step_hi, layer, jump, support",
    "behavioural_transition": "first step whose share_none passes 50% (organism series only)",
    "readout_spearman": "per persona: rank correlation over steps between the persona readout on "
    "each checkpoint's own answers and the behaviour table's share of that persona (organism only)",
}
ENTRIES = (
    "activations",
    "dictionary",
    "on_policy",
    "persona_directions.parquet",
    "persona_directions.safetensors",
    "decision_directions.parquet",
    "decision_directions.safetensors",
    "persona_latents.parquet",
    "persona_latent_trajectories.parquet",
    "index.parquet",
    "index_layers.parquet",
    "index_replicates.safetensors",
    "explanation.parquet",
    "carriers.parquet",
    "dictionary_seeds",
    "causal.parquet",
    "readout.parquet",
    "summary.json",
)
"""Everything a selection directory holds besides its manifest."""


CHOICE_COLUMNS = {
    "steering_recovery": "choice_kl",
    "random_steering_recovery": "choice_kl_random",
    "behaviour_steering_shares": "choice_shares",
    "behaviour_random_steering_shares": "choice_shares_random",
}
"""Causal-table columns of the persona-choice patch -> their names in ``step_table``."""


@dataclass(frozen=True)
class SelectionResult:
    """Everything ``run_selection`` wrote, as tables."""

    directions: PersonaDirections
    hook: str
    """The explanation hook (see ``SelectionConfig.hook``)."""
    decision: PersonaDirections
    """Persona directions read at the texts' decision positions, at ``decision_hook``."""
    decision_hook: str
    latents: pd.DataFrame
    latent_trajectories: pd.DataFrame
    index: NoveltyIndex
    """The index at every block (``selection.index``)."""
    explanation: pd.DataFrame
    """Per step, the dictionary share and its components (``explanation.dictionary_share``)."""
    carriers: pd.DataFrame
    """Per RL step, the latents carrying most of the reconstructed change (``explanation.carriers``)."""
    causal: pd.DataFrame
    readout: pd.DataFrame
    """One row per (step, persona): ``label, step, persona, readout`` (mean projection of the
    checkpoint's activations on its own answers onto the persona direction) and ``share``
    (the behaviour table's share of that persona); empty without an organism."""

    def readout_spearman(self) -> dict[str, float]:
        """Per persona, the rank correlation over steps of readout and behaviour share (NaN
        where either is constant)."""
        if self.readout.empty:
            return {}
        return {
            str(persona): float(rows["readout"].rank().corr(rows["share"].rank()))
            for persona, rows in self.readout.groupby("persona")
        }

    def step_table(self) -> pd.DataFrame:
        """The index table (one row per step) with the explanation's columns and the
        persona-choice patch's:
        ``choice_kl`` (share of the decision-position KL recovered) against
        ``choice_kl_random``, and on organism series ``choice_shares`` (share of the
        behaviour change reproduced) against ``choice_shares_random``."""
        table = self.index.table.merge(self.explanation.drop(columns="step"), on="label", how="left")
        choice = self.causal[self.causal["edit"] == "persona_choice"] if len(self.causal) else self.causal
        if choice.empty:
            return table
        present = {k: v for k, v in CHOICE_COLUMNS.items() if k in choice.columns}
        return table.merge(choice[["label", *present]].rename(columns=present), on="label", how="left")

    def summary(self, behavioural_step: int | None = None) -> dict[str, Any]:
        """The JSON summary (``SUMMARY_SCHEMA``)."""
        auroc = self.directions.table[self.directions.table["hook"] == self.hook]
        causal = self.causal[self.causal["edit"] == "persona"].set_index("label")
        choice = self.causal[self.causal["edit"] == "persona_choice"].set_index("label")
        decision = self.decision.table
        steps = []
        for row in self.step_table().itertuples():
            steps.append(
                {
                    "label": row.label,
                    "step": int(row.step),
                    "index": row.index,
                    "index_lo": row.index_lo,
                    "index_hi": row.index_hi,
                    "side": row.side,
                    "layer": int(row.layer),
                    "dictionary_share": row.dictionary_share,
                    "dictionary_share_lo": row.dictionary_share_lo,
                    "dictionary_share_hi": row.dictionary_share_hi,
                    "fvu_drift": row.fvu_drift,
                    "persona_share": row.persona_share,
                    "persona_baseline": row.persona_baseline,
                    "steering_recovery": _get(causal, row.label, "steering_recovery"),
                    "ablation_loss": _get(causal, row.label, "ablation_loss"),
                    "choice_recovery": _get(choice, row.label, "steering_recovery"),
                    "choice_loss": _get(choice, row.label, "ablation_loss"),
                    "choice_random_recovery": _get(choice, row.label, "random_steering_recovery"),
                    "choice_behaviour_recovery": _get(choice, row.label, "behaviour_steering_shares"),
                    "choice_behaviour_random": _get(choice, row.label, "behaviour_random_steering_shares"),
                }
            )
        return {
            "schema": SUMMARY_SCHEMA,
            "hook": self.hook,
            "persona_auroc": dict(zip(auroc["persona"], auroc["auroc"].astype(float), strict=True)),
            "decision_hook": self.decision_hook,
            "decision_auroc": dict(zip(decision["persona"], decision["auroc"].astype(float), strict=True)),
            "steps": steps,
            "layers": self.index.layers.drop(columns=["hook"]).to_dict(orient="records"),
            "transition": self.index.transition,
            "behavioural_transition": behavioural_step,
            "readout_spearman": self.readout_spearman(),
        }


def _get(frame: pd.DataFrame, label: str, column: str) -> float | None:
    return float(frame.loc[label, column]) if label in frame.index and column in frame.columns else None


def run_selection(
    series: ModelSeries,
    texts: PromptSet,
    out: str | os.PathLike[str],
    cfg: SelectionConfig | None = None,
    organism: Organism | None = None,
    regime: str | None = None,
    *,
    force: bool = False,
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
    PersonaSplit.make(labels, cfg.held_out_fraction, cfg.seed)  # personas and texts enough to fit
    if cfg.dictionary is not None:  # read at its own hook, checked against the series' width
        cfg = dataclasses.replace(cfg, hook=sae_hook_on(series, cfg.dictionary, cfg.hook))
    harvest_cfg = HarvestConfig(
        hooks=(cfg.hook,) if cfg.hook else None,
        batch_size=cfg.batch_size,
        response_only=texts.response_starts is not None,
    )
    inputs = {
        "texts": fingerprint(series, texts, harvest_cfg),
        "config": asdict(cfg),
        "organism": None if organism is None else rundir.digest(organism.manifest["weights_sha256"]),
        "regime": regime,
        # A given dictionary is an input by content, not by path: a retrained SAE at the
        # same path must not reuse an analysis made with the old one.
        "dictionary": None if cfg.dictionary is None else _dictionary_digest(Path(cfg.dictionary)),
    }
    claimed = rundir.claim(out, rundir.SELECTION, inputs, ENTRIES, resumable=("activations",), force=force)
    if claimed.state == "finished":
        log.info("reusing the finished selection analysis in %s", out)
        return _load(out, labels)
    store = harvest(series, texts, out / "activations", harvest_cfg)
    directions = persona_directions(store, labels, held_out_fraction=cfg.held_out_fraction, seed=cfg.seed)
    index = novelty_index(readout_parts(series, store, cfg.readout), cfg.index)
    hook = cfg.hook or explanation_hook(index)
    sae = _dictionary(store, hook, out, cfg)
    latents = persona_latents(
        store, labels, hook, sae.encode, held_out_fraction=cfg.held_out_fraction, seed=cfg.seed
    )
    trajectories = _latent_trajectories(store, hook, sae, latents)
    parts = [step_parts(store, hook, sae, label) for label in store.labels]
    twins = [
        [step_parts(store, hook, t, label) for label in store.labels] for t in _twins(store, hook, out, cfg)
    ]
    explanation = dictionary_share(
        [parts, *twins], cfg.index.n_bootstrap, cfg.index.confidence, cfg.index.seed, directions.basis(hook)
    )
    carried = pd.concat([carriers(store, hook, sae, label) for label in store.labels[1:]], ignore_index=True)
    base_model = series.hooked(series.base)  # reads activations: the plain forward
    decision_hook = cfg.decision_hook or f"blocks.{base_model.cfg.n_layers - 1}.hook_resid_post"
    decision = decision_directions(
        store, labels, base_model, [decision_hook], held_out_fraction=cfg.held_out_fraction, seed=cfg.seed
    )
    checks = CausalChecks(
        hook,
        directions.basis(hook),
        decision_hook,
        decision.basis(decision_hook),
        cfg.seed,
        cfg.n_random,
        cfg.behaviour_edits,
    )
    causal = causal_checks(series, store, checks, parts)
    behavioural_step, readout = None, pd.DataFrame()
    if organism is not None and regime is not None:
        causal = with_behaviour(causal, organism, regime, checks, parts)
        behavioural_step = behavioural_transition(organism.behaviour(), regime)
        sampling = SamplingConfig(samples_per_prompt=cfg.samples_per_prompt, seed=cfg.seed)
        readout = persona_readout(series, out, hook, directions, organism, regime, sampling, cfg.batch_size)
    result = SelectionResult(
        directions,
        hook,
        decision,
        decision_hook,
        latents,
        trajectories,
        index,
        explanation,
        carried,
        causal,
        readout,
    )
    _write(result, out, series, store, cfg, behavioural_step)
    return result


def _dictionary_digest(path: Path) -> str:
    weights = path / "sae_weights.safetensors"
    if not weights.is_file():
        raise RlinterpError(f"{path} holds no trained SAE (no sae_weights.safetensors); train one first")
    return sha256_file(weights)


def explanation_hook(index: NoveltyIndex) -> str:
    """The residual stream after the block the index names: at the transition when there is
    one, else at the last step."""
    layer = index.transition["layer"]
    if layer is None:
        layer = int(index.table.sort_values("step")["layer"].iloc[-1])
    return f"blocks.{layer}.hook_resid_post"


def _twins(store: ActivationStore, hook: str, out: Path, cfg: SelectionConfig) -> list[Any]:
    """``dictionary_seeds - 1`` SAEs of the explanation dictionary's config at the next
    seeds, on the base at ``hook`` (``dictionary_seeds/seed-<k>``, reused when finished)."""
    if cfg.dictionary is not None:
        given = SAETrainConfig(**TrainedSAE.load(cfg.dictionary).manifest["config"])
    else:
        d = cfg.dictionary_config
        given = SAETrainConfig(
            d.architecture, d.d_sae, d.k, n_tokens=d.n_tokens, batch_size=d.batch_size, lr=d.lr, seed=d.seed
        )
    twins = []
    for k in range(1, cfg.dictionary_seeds):
        twin = dataclasses.replace(given, seed=given.seed + k, init_from=None)
        folder = out / "dictionary_seeds" / f"seed-{twin.seed}"
        twins.append(train_sae(store, store.labels[0], hook, folder, twin).sae)
    return twins


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


HELD_OUT = "held_out"
"""Key of the held-out mask beside the per-hook directions in ``persona_directions.safetensors``."""


def _load(out: Path, labels: tuple[str, ...]) -> SelectionResult:
    """A finished analysis read back from ``out`` (tables, directions, replicates, summary)."""
    manifest = rundir.read_finished(out, rundir.SELECTION, "run `rlinterp selection` again")
    saved = load_file(out / "persona_directions.safetensors")
    table = pd.read_parquet(out / "persona_directions.parquet")
    split = PersonaSplit(labels, tuple(sorted(set(labels))), saved.pop(HELD_OUT).bool())
    decision = load_file(out / "decision_directions.safetensors")
    decision_table = pd.read_parquet(out / "decision_directions.parquet")
    summary = json.loads((out / "summary.json").read_text())
    replicates = load_file(out / "index_replicates.safetensors")["replicates"].double().numpy()
    return SelectionResult(
        directions=PersonaDirections(split, saved, table),
        hook=str(manifest["hook"]),
        decision=PersonaDirections(split, decision, decision_table),
        decision_hook=str(summary["decision_hook"]),
        latents=pd.read_parquet(out / "persona_latents.parquet"),
        latent_trajectories=pd.read_parquet(out / "persona_latent_trajectories.parquet"),
        index=NoveltyIndex(
            pd.read_parquet(out / "index.parquet"),
            pd.read_parquet(out / "index_layers.parquet"),
            replicates,
            summary["transition"],
        ),
        explanation=pd.read_parquet(out / "explanation.parquet"),
        carriers=pd.read_parquet(out / "carriers.parquet"),
        causal=pd.read_parquet(out / "causal.parquet"),
        readout=pd.read_parquet(out / "readout.parquet"),
    )


def _write(
    result: SelectionResult,
    out: Path,
    series: ModelSeries,
    store: ActivationStore,
    cfg: SelectionConfig,
    behavioural_step: int | None,
) -> None:
    write_parquet(out / "persona_directions.parquet", result.directions.table)
    held_out = {HELD_OUT: result.directions.split.held_out.to(torch.uint8)}
    write_safetensors(out / "persona_directions.safetensors", {**result.directions.directions, **held_out})
    write_parquet(out / "decision_directions.parquet", result.decision.table)
    write_safetensors(out / "decision_directions.safetensors", result.decision.directions)
    write_parquet(out / "persona_latents.parquet", result.latents)
    write_parquet(out / "persona_latent_trajectories.parquet", result.latent_trajectories)
    write_parquet(out / "index.parquet", result.index.table)
    write_parquet(out / "index_layers.parquet", result.index.layers)
    write_parquet(out / "explanation.parquet", result.explanation)
    write_parquet(out / "carriers.parquet", result.carriers)
    replicates = torch.from_numpy(result.index.replicates).float()
    write_safetensors(out / "index_replicates.safetensors", {"replicates": replicates})
    write_parquet(out / "causal.parquet", result.causal)
    write_parquet(out / "readout.parquet", result.readout)
    write_json(out / "summary.json", result.summary(behavioural_step))
    rundir.finish(  # last: marks the directory finished
        out,
        rundir.SELECTION,
        {
            "checkpoints": series.describe(),
            "hook": result.hook,
            "config": asdict(cfg),
            "prompts_sha256": store.manifest["prompts_sha256"],
            "versions": environment_versions(),
        },
    )
