"""The result of ``rlinterp track``: its tables, their columns, and the per-step summary.

``TrackResult`` holds every table a track run writes (``TABLES``, one Parquet file each);
``summary()`` derives one row per (source, step) of headline numbers whose fields
``SCHEMA`` documents (written to ``summary.json`` beside it). See ``track`` for how the
tables are made, ``trajectories``, ``stagewise``, ``matching`` and ``lineage`` for their
columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import rundir
from .lineage import CLASSES, above_noise_floor

SCHEMA = {
    "source": "token source: prompts (prompt tokens), texts (given answers), on-policy (own answers)",
    "label": "checkpoint label (the base is 'base')",
    "step": "RL step",
    "n_tokens": "kept tokens of this source at this step",
    "explained_variance": "explained variance of the tracked dictionary on this checkpoint (trajectory_fit)",
    "ev_drop": "explained_variance at the base minus here, same source",
    "ev_before": "stage-wise: explained variance of the previous stage here, before fine-tuning",
    "ev_after": "stage-wise: explained variance of this step's stage after fine-tuning",
    "n_<class>": "tracked latents in each lineage class at this step (lineage.parquet, evidence 'tracked')",
    "self_nonstable": "latents neither stable nor inactive in the base-versus-itself control at this step",
    "born": "latents of this step's independent SAE matched to no tracked latent (evidence 'matched')",
    "died": "tracked latents matched to no latent of this step's independent SAE",
    "noise_born": "born at step 0 (both dictionaries of the base): births by chance alone",
    "noise_died": "died at step 0: deaths by chance alone",
    "born_p_value": "probability of this many births or more by chance (Poisson at the noise floor)",
    "born_above_floor": "born_p_value < lineage.NOISE_ALPHA",
    "died_p_value": "the same for deaths",
    "died_above_floor": "died_p_value < lineage.NOISE_ALPHA",
    "novel_born": "same tokens, only the model differs: latents of this step's independent SAE matched to "
    "nothing of the base's independent SAE on the same tokens (matches, comparison 'same-tokens')",
    "novel_died": "the base's latents on these tokens matched to nothing of this step's SAE",
    "seed_born": "born between the base's independent SAE and one of another seed: chance alone",
    "seed_died": "died between the two seeds",
    "novel_born_p_value": "probability of novel_born or more by chance (Poisson at seed_born)",
    "novel_born_above_floor": "novel_born_p_value < lineage.NOISE_ALPHA",
    "novel_died_p_value": "the same for novel_died",
    "novel_died_above_floor": "novel_died_p_value < lineage.NOISE_ALPHA",
}
"""Fields of each row of ``summary.json``'s ``steps`` (None where a measure does not apply:
no stage-wise or independent SAEs for a crosscoder, no same-tokens match at step 0)."""
TABLES = (
    "trajectories",
    "trajectory_fit",
    "logit_tokens",
    "contexts",
    "stagewise",
    "stagewise_fit",
    "matches",
    "lineage",
    "controls",
    "samples",
)
"""The Parquet tables of a track run (``<name>.parquet``)."""


@dataclass(frozen=True)
class TrackResult:
    """Every table of a track run (the same content as the files ``run_track`` writes)."""

    trajectories: pd.DataFrame
    trajectory_fit: pd.DataFrame
    logit_tokens: pd.DataFrame
    contexts: pd.DataFrame
    stagewise: pd.DataFrame
    stagewise_fit: pd.DataFrame
    matches: pd.DataFrame
    lineage: pd.DataFrame
    controls: pd.DataFrame
    samples: pd.DataFrame

    def summary(self) -> list[dict[str, Any]]:
        """One row per (source, step) with the headline numbers (``SCHEMA``)."""
        return [
            _summary_row(self, str(source), int(step))
            for source, step in self.trajectory_fit[["source", "step"]].values
        ]

    @classmethod
    def load(cls, root: str | Path) -> TrackResult:
        """Read a finished ``run_track`` output directory."""
        root = Path(root)
        rundir.read_finished(root, rundir.TRACK, "run `rlinterp track` again")
        return cls(**{name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES})


MATCH_COLUMNS = ["source", "comparison", "label", "step", "relation", "a", "b", "cosine"]
"""``matches.parquet``: pairs of dictionaries matched by decoder direction (``matching``),
``a`` the reference and ``b`` the other; ``relation`` is ``pair``, ``split`` or ``merged``
(both latents and their cosine), ``born`` (``b`` only) or ``died`` (``a`` only). The
``comparison``:

- ``tracked``: the tracked dictionary (``a``) and the SAE trained independently on the
  step (``b``): the lineage table's ``matched`` evidence. At step 0 both describe the base
  and differ only in how they were trained (seed, budget, tokens): the floor its births
  and deaths are tested against;
- ``same-tokens``: the base model's independent SAE on the step's tokens (``a``) and the
  step's own (``b``): same tokens, seed and budget, only the model differs, so a birth is
  a direction the checkpoint writes that the base does not, on what the checkpoint says
  (for fixed sources ``a`` is the base's SAE of step 0);
- ``seed`` (step 0): the base's independent SAE and one of another seed: how many births
  and deaths chance alone produces, the floor for ``same-tokens``."""
CONTROL_COLUMNS = ["control", "source", "label", "step", "measure", "value"]
"""``controls.parquet``, one row per (control, source, step, measure):

- ``self``: the base compared with itself over as many steps as the series has (the base's
  trajectory rows at every step; stage-wise fine-tunes on the base's own tokens): the
  lineage class counts ``n_<class>`` (all ``stable`` or ``inactive`` when the thresholds
  hold) and the chain's ``min_dec_cos_base``, ``ev_before`` and ``ev_after``;
- ``seed``: the ``seed`` match's counts (``pairs``, ``born``, ``died``, ``split``,
  ``merged``): how many births and deaths chance alone produces."""


def _summary_row(result: TrackResult, source: str, step: int) -> dict[str, Any]:
    fit = result.trajectory_fit[result.trajectory_fit["source"] == source].set_index("step")
    here = result.lineage[(result.lineage["source"] == source) & (result.lineage["step"] == step)]
    tracked = here[here["evidence"] == "tracked"]["class"].value_counts()
    matched = here[here["evidence"] == "matched"]["class"].value_counts()
    floor = result.lineage[
        (result.lineage["source"] == source)
        & (result.lineage["step"] == 0)
        & (result.lineage["evidence"] == "matched")
    ]["class"].value_counts()
    own = result.controls[
        (result.controls["control"] == "self")
        & (result.controls["source"] == source)
        & (result.controls["step"] == step)
    ]
    moved = own[own["measure"].isin([f"n_{c}" for c in CLASSES if c not in ("stable", "inactive")])]
    row: dict[str, Any] = {
        "source": source,
        "label": str(fit.loc[step, "label"]),
        "step": step,
        "n_tokens": int(fit.loc[step, "n_tokens"]),
        "explained_variance": float(fit.loc[step, "explained_variance"]),
        "ev_drop": float(fit["explained_variance"].iloc[0] - fit.loc[step, "explained_variance"]),
        "ev_before": None,
        "ev_after": None,
        **{f"n_{c}": int(tracked.get(c, 0)) for c in CLASSES},
        "self_nonstable": int(moved["value"].sum()) if len(own) else None,
    }
    stage = result.stagewise_fit
    stage = stage[(stage["source"] == source) & (stage["step"] == step)] if len(stage) else stage
    if len(stage):
        row["ev_before"], row["ev_after"] = (
            float(stage["ev_before"].iloc[0]),
            float(stage["ev_after"].iloc[0]),
        )
    for kind in ("born", "died"):
        known = bool(len(matched))
        row[kind] = int(matched.get(kind, 0)) if known else None
        row[f"noise_{kind}"] = int(floor.get(kind, 0)) if known else None
        row |= _verdict(kind, row[kind], row[f"noise_{kind}"])
    novelty = _relations(result.matches, source, "same-tokens", step)
    seed = _relations(result.matches, source, "seed", 0)
    for kind in ("born", "died"):
        observed = novelty.get(kind, 0) if novelty is not None else None
        chance = seed.get(kind, 0) if seed is not None else None
        row[f"novel_{kind}"], row[f"seed_{kind}"] = observed, chance
        row |= _verdict(f"novel_{kind}", observed, chance)
    return row


def _relations(matches: pd.DataFrame, source: str, comparison: str, step: int) -> dict[str, int] | None:
    """Relation counts of one comparison at one step (None where it was not made)."""
    rows = matches[
        (matches["source"] == source) & (matches["comparison"] == comparison) & (matches["step"] == step)
    ]
    return {str(k): int(v) for k, v in rows["relation"].value_counts().items()} if len(rows) else None


def _verdict(name: str, observed: int | None, chance: int | None) -> dict[str, Any]:
    if observed is None or chance is None:
        return {f"{name}_p_value": None, f"{name}_above_floor": None}
    verdict = above_noise_floor(observed, chance)
    return {f"{name}_p_value": verdict.p_value, f"{name}_above_floor": verdict.above}


def summary_text(result: TrackResult) -> str:
    """The summary as a fixed-width table for the terminal."""
    columns = ["source", "step", "explained_variance", "ev_before", "ev_after", "born", "noise_born", "died"]
    columns += ["noise_died", "novel_born", "novel_died", "seed_born", "seed_died"]
    columns += [*(f"n_{c}" for c in CLASSES), "self_nonstable"]
    frame = pd.DataFrame(result.summary())
    return frame[[c for c in columns if c in frame]].to_string(index=False, float_format=lambda x: f"{x:.3g}")
