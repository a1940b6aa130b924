"""The causal checks of a selection analysis and the persona readout on the checkpoints' own
answers (``analysis`` steps 6 and 7; see its module docstring for what each edit means).

- ``causal_checks``: per RL checkpoint, steering the base / ablating the checkpoint along the
  persona-projected and the whole mean shift at the explanation hook, and the decision-position
  persona patch (``causal``), each with its random control;
- ``with_behaviour``: on organism series, the behaviour (persona shares, reward) each edit
  moves, against its random control (``steering``);
- ``persona_readout``: each checkpoint's own answers projected on the persona directions,
  beside the behaviour table's persona shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from ..activations.harvest import ActivationStore, HarvestConfig
from ..activations.onpolicy import SamplingConfig, harvest_on_policy
from ..activations.prompts import PromptSet
from ..models.series import ModelSeries
from ..organism.layout import Organism
from .causal import causal_table, patch_subspace, random_basis, steer_and_ablate_each
from .explanation import StepParts
from .personas import PersonaDirections
from .steering import behaviour_recovery, patched_behaviour, steered_behaviour


@dataclass(frozen=True)
class CausalChecks:
    """Where and along what the causal checks edit (see the module docstring, step 6)."""

    hook: str
    persona_basis: Tensor
    """Orthonormal basis of the persona directions at ``hook`` (the mean-shift edits)."""
    decision_hook: str
    decision_basis: Tensor
    """Orthonormal basis of the persona directions read at the decision position."""
    seed: int
    """Seed of the random controls."""
    n_random: int
    """Random subspaces averaged for the persona-choice patch's control."""
    behaviour_edits: tuple[str, ...]
    """Edits whose behaviour is re-sampled (organism series)."""

    def shift_edit(self, edit: str, shift: Tensor) -> Tensor:
        """The vector a mean-shift edit adds: the shift projected on the persona span, or all
        of it."""
        return self.persona_basis @ (self.persona_basis.T @ shift) if edit == "persona" else shift


def mean_shift(part: StepParts) -> Tensor:
    return (part.shift.sum(0) / part.n_tokens.sum().clamp_min(1)).float()


def causal_checks(
    series: ModelSeries, store: ActivationStore, checks: CausalChecks, parts: list[StepParts]
) -> pd.DataFrame:
    """Steering/ablation along the persona-projected and the full mean shift, and the
    decision-position persona patch, per RL checkpoint."""
    results, edits = [], []
    for part in parts:
        if part.label == series.base.label:
            continue
        shifts = [checks.shift_edit(edit, mean_shift(part)) for edit in ("persona", "full")]
        results += steer_and_ablate_each(series, store, part.label, checks.hook, shifts, checks.seed)
        edits += ["persona", "full"]
        results.append(
            patch_subspace(
                series,
                store,
                part.label,
                checks.decision_hook,
                checks.decision_basis,
                checks.seed,
                at="decision",
                n_random=checks.n_random,
            )
        )
        edits.append("persona_choice")
    table = causal_table(results)
    return table.assign(edit=edits) if len(table) else table


def with_behaviour(
    causal: pd.DataFrame, organism: Organism, regime: str, checks: CausalChecks, parts: list[StepParts]
) -> pd.DataFrame:
    """Add behaviour columns to the causal table: how far each edit moved the base's
    behaviour towards the checkpoint's, how far the reverse edit moved the checkpoint's back,
    and how far a random control moved the base (the mean over ``n_random`` random subspaces
    for the persona-choice patch; one random vector of the same norm for the mean-shift
    edits)."""
    table = organism.behaviour()
    rows = {int(r.step): r._asdict() for r in table[table["regime"] == regime].itertuples()}
    shifts = {p.label: mean_shift(p) for p in parts}
    generator = torch.Generator().manual_seed(checks.seed)
    extra: list[dict[str, float]] = []
    for r in causal.itertuples():
        step = int(r.step)
        if r.edit not in checks.behaviour_edits:
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
                    random_basis(basis.shape[0], basis.shape[1], checks.seed + i),
                )
                for i in range(checks.n_random)
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


def persona_readout(
    series: ModelSeries,
    out: Path,
    hook: str,
    directions: PersonaDirections,
    organism: Organism,
    regime: str,
    sampling: SamplingConfig,
    batch_size: int,
) -> pd.DataFrame:
    """Each checkpoint samples its own answers to the behaviour table's questions (single
    turns, as the table asked them); the persona readout is the mean projection of its
    activations at ``hook`` on those answer tokens onto each persona direction, beside the
    behaviour table's share of that persona."""
    questions = PromptSet.from_list([q.prompt for q in organism.eval_questions()])
    on_policy = harvest_on_policy(
        series,
        questions,
        out / "on_policy",
        sampling,
        HarvestConfig(hooks=(hook,), batch_size=batch_size),
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
