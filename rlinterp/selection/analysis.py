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
   components and the transition (``selection.index``);
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
``persona_latent_trajectories.parquet``, ``index.parquet``, ``index_replicates.safetensors``,
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
from torch import Tensor

from ..activations.harvest import ActivationStore, HarvestConfig, fingerprint, harvest
from ..activations.onpolicy import SamplingConfig, harvest_on_policy
from ..activations.prompts import PromptSet
from ..core import rundir
from ..core.artifacts import environment_versions, sha256_file, write_json, write_parquet, write_safetensors
from ..dictionaries.sae import TrainedSAE, sae_hook_on
from ..dictionaries.train import train_dictionary
from ..errors import RlinterpError
from ..models.series import ModelSeries
from ..organism.layout import Organism
from .causal import causal_table, patch_subspace, random_basis, steer_and_ablate
from .config import EDITS as EDITS
from .config import SelectionConfig as SelectionConfig
from .index import NoveltyIndex, StepParts, behavioural_transition, novelty_index, step_parts
from .personas import (
    PersonaDirections,
    PersonaSplit,
    decision_directions,
    persona_directions,
    persona_latents,
    text_means,
)
from .steering import behaviour_recovery, patched_behaviour, steered_behaviour

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = {
    "hook": "the hook analysed (persona directions separate best there unless chosen)",
    "persona_auroc": "held-out AUROC of each persona direction at that hook (one vs rest)",
    "steps": "per checkpoint: label, step, index, index_lo, index_hi (bootstrap interval), "
    "fvu_drift, persona_share (of the mean shift inside the persona span) and persona_baseline "
    "(a random subspace's share), steering_recovery and ablation_loss along the persona shift, "
    "choice_recovery and choice_loss of the decision-position persona patch (share of the KL at "
    "the decision positions) and, on organism series, choice_behaviour_recovery (share of the "
    "persona/style-share change the patched base reproduces) and its random-subspace control",
    "decision_hook": "where the persona-choice patch runs (the last block's residual by default)",
    "decision_auroc": "held-out AUROC of each persona direction read at the decision position",
    "transition": "change point of the index: found, step, step_lo, step_hi, jump, support",
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
    "index_replicates.safetensors",
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
    decision: PersonaDirections
    """Persona directions read at the texts' decision positions, at ``decision_hook``."""
    decision_hook: str
    latents: pd.DataFrame
    latent_trajectories: pd.DataFrame
    index: NoveltyIndex
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
        """The index table (one row per step) with the persona-choice patch's columns:
        ``choice_kl`` (share of the decision-position KL recovered) against
        ``choice_kl_random``, and on organism series ``choice_shares`` (share of the
        behaviour change reproduced) against ``choice_shares_random``."""
        choice = self.causal[self.causal["edit"] == "persona_choice"] if len(self.causal) else self.causal
        if choice.empty:
            return self.index.table
        present = {k: v for k, v in CHOICE_COLUMNS.items() if k in choice.columns}
        return self.index.table.merge(
            choice[["label", *present]].rename(columns=present), on="label", how="left"
        )

    def summary(self, behavioural_step: int | None = None) -> dict[str, Any]:
        """The JSON summary (``SUMMARY_SCHEMA``)."""
        auroc = self.directions.table[self.directions.table["hook"] == self.hook]
        causal = self.causal[self.causal["edit"] == "persona"].set_index("label")
        choice = self.causal[self.causal["edit"] == "persona_choice"].set_index("label")
        decision = self.decision.table
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
    hook = cfg.hook or directions.best_hook
    sae = _dictionary(store, hook, out, cfg)
    latents = persona_latents(
        store, labels, hook, sae.encode, held_out_fraction=cfg.held_out_fraction, seed=cfg.seed
    )
    trajectories = _latent_trajectories(store, hook, sae, latents)
    parts = [step_parts(store, hook, sae, label) for label in store.labels]
    index = novelty_index(parts, cfg.index, persona_basis=directions.basis(hook))
    base_model = series.load(series.base)
    decision_hook = cfg.decision_hook or f"blocks.{base_model.cfg.n_layers - 1}.hook_resid_post"
    decision = decision_directions(
        store, labels, base_model, [decision_hook], held_out_fraction=cfg.held_out_fraction, seed=cfg.seed
    )
    checks = CausalChecks(hook, directions.basis(hook), decision_hook, decision.basis(decision_hook), cfg)
    causal = _causal(series, store, checks, parts)
    behavioural_step, readout = None, pd.DataFrame()
    if organism is not None and regime is not None:
        causal = _with_behaviour(causal, organism, regime, checks, parts)
        behavioural_step = behavioural_transition(organism.behaviour(), regime)
        readout = _readout(series, out, hook, directions, organism, regime, cfg)
    result = SelectionResult(
        directions, hook, decision, decision_hook, latents, trajectories, index, causal, readout
    )
    _write(result, out, series, store, cfg, behavioural_step)
    return result


def _dictionary_digest(path: Path) -> str:
    weights = path / "sae_weights.safetensors"
    if not weights.is_file():
        raise RlinterpError(f"{path} holds no trained SAE (no sae_weights.safetensors); train one first")
    return sha256_file(weights)


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


@dataclass(frozen=True)
class CausalChecks:
    """Where and along what the causal checks edit (see the module docstring, step 6)."""

    hook: str
    persona_basis: Tensor
    """Orthonormal basis of the persona directions at ``hook`` (the mean-shift edits)."""
    decision_hook: str
    decision_basis: Tensor
    """Orthonormal basis of the persona directions read at the decision position."""
    cfg: SelectionConfig

    def shift_edit(self, edit: str, shift: Tensor) -> Tensor:
        """The vector a mean-shift edit adds: the shift projected on the persona span, or all
        of it."""
        return self.persona_basis @ (self.persona_basis.T @ shift) if edit == "persona" else shift


def _mean_shift(part: StepParts) -> Tensor:
    return (part.shift.sum(0) / part.n_tokens.sum().clamp_min(1)).float()


def _causal(
    series: ModelSeries, store: ActivationStore, checks: CausalChecks, parts: list[StepParts]
) -> pd.DataFrame:
    """Steering/ablation along the persona-projected and the full mean shift, and the
    decision-position persona patch, per RL checkpoint."""
    results, edits = [], []
    for part in parts:
        if part.label == series.base.label:
            continue
        for edit in ("persona", "full"):
            vector = checks.shift_edit(edit, _mean_shift(part))
            results.append(steer_and_ablate(series, store, part.label, checks.hook, vector, checks.cfg.seed))
            edits.append(edit)
        results.append(
            patch_subspace(
                series,
                store,
                part.label,
                checks.decision_hook,
                checks.decision_basis,
                checks.cfg.seed,
                at="decision",
                n_random=checks.cfg.n_random,
            )
        )
        edits.append("persona_choice")
    table = causal_table(results)
    return table.assign(edit=edits) if len(table) else table


def _with_behaviour(
    causal: pd.DataFrame, organism: Organism, regime: str, checks: CausalChecks, parts: list[StepParts]
) -> pd.DataFrame:
    """Add behaviour columns to the causal table: how far each edit moved the base's
    behaviour towards the checkpoint's, how far the reverse edit moved the checkpoint's back,
    and how far a random control moved the base (the mean over ``n_random`` random subspaces
    for the persona-choice patch; one random vector of the same norm for the mean-shift
    edits)."""
    table = organism.behaviour()
    rows = {int(r.step): r._asdict() for r in table[table["regime"] == regime].itertuples()}
    shifts = {p.label: _mean_shift(p) for p in parts}
    generator = torch.Generator().manual_seed(checks.cfg.seed)
    extra: list[dict[str, float]] = []
    for r in causal.itertuples():
        step = int(r.step)
        if r.edit not in checks.cfg.behaviour_edits:
            extra.append({})
            continue
        if r.edit == "persona_choice":
            hook, basis = checks.decision_hook, checks.decision_basis
            steered = patched_behaviour(organism, regime, 0, step, hook, basis)
            ablated = patched_behaviour(organism, regime, step, 0, hook, basis)
            controls = [
                patched_behaviour(
                    organism,
                    regime,
                    0,
                    step,
                    hook,
                    random_basis(basis.shape[0], basis.shape[1], checks.cfg.seed + i),
                )
                for i in range(checks.cfg.n_random)
            ]
        else:
            vector = checks.shift_edit(str(r.edit), shifts[r.label])
            noise = torch.randn(vector.shape, generator=generator)
            noise = noise / noise.norm() * vector.norm()
            steered = steered_behaviour(organism, regime, 0, checks.hook, vector)
            ablated = steered_behaviour(organism, regime, step, checks.hook, -vector)
            controls = [steered_behaviour(organism, regime, 0, checks.hook, noise)]
        towards = behaviour_recovery(rows[0], rows[step], steered)
        back = behaviour_recovery(rows[step], rows[0], ablated)
        random_towards = sum(behaviour_recovery(rows[0], rows[step], c)["shares"] for c in controls) / len(
            controls
        )
        extra.append(
            {
                "behaviour_steering_shares": towards["shares"],
                "behaviour_steering_reward": towards["reward"],
                "behaviour_ablation_shares": back["shares"],
                "behaviour_ablation_reward": back["reward"],
                "behaviour_random_steering_shares": random_towards,
            }
        )
    return pd.concat([causal.reset_index(drop=True), pd.DataFrame(extra)], axis=1)


def _readout(
    series: ModelSeries,
    out: Path,
    hook: str,
    directions: PersonaDirections,
    organism: Organism,
    regime: str,
    cfg: SelectionConfig,
) -> pd.DataFrame:
    """Each checkpoint samples its own answers to the behaviour table's questions (single
    turns, as the table asked them); the persona readout is the mean projection of its
    activations at ``hook`` on those answer tokens onto each persona direction, beside the
    behaviour table's share of that persona."""
    sampling = SamplingConfig(samples_per_prompt=cfg.samples_per_prompt, seed=cfg.seed)
    questions = PromptSet.from_list([q.prompt for q in organism.eval_questions()])
    on_policy = harvest_on_policy(
        series,
        questions,
        out / "on_policy",
        sampling,
        HarvestConfig(hooks=(hook,), batch_size=cfg.batch_size),
    )
    table = organism.behaviour()
    shares = table[table["regime"] == regime].set_index("step")
    units = directions.directions[hook].double()
    rows = []
    for checkpoint in series:
        store = on_policy.stores[checkpoint.label]
        total, n = torch.zeros(len(units), dtype=torch.float64), 0
        for shard in store.shards(checkpoint.label, hook):
            total += (shard.double() @ units.T).sum(0)
            n += len(shard)
        for persona, value in zip(directions.split.personas, (total / max(n, 1)).tolist(), strict=True):
            column = f"share_{persona}"
            share = shares.loc[checkpoint.step, column] if column in shares.columns else float("nan")
            rows.append(
                {
                    "label": checkpoint.label,
                    "step": checkpoint.step,
                    "persona": persona,
                    "readout": value,
                    "share": float(share),
                }
            )
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
        index=NoveltyIndex(pd.read_parquet(out / "index.parquet"), replicates, summary["transition"]),
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
