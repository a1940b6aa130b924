"""Lineage: what happened to each dictionary latent at each RL step, with the evidence.

``lineage_table(trajectories, stagewise, matches)`` gives one row per (evidence, source, step,
latent) and a ``class`` from one vocabulary:

- ``stable``: present and about as active as in the base;
- ``amplified`` / ``suppressed``: same direction, activity (mean activation per token,
  zeros included) up by at least ``AMPLIFIED_ABOVE`` / down to at most ``SUPPRESSED_BELOW``
  of the base's, while still firing;
- ``rotated``: the decoder moved (cosine to the base decoder below ``MOVED_BELOW``) and the
  latent's activity changed too, towards a direction the base dictionary has (another
  latent's): a drifting feature;
- ``new_direction``: the decoder moved to a direction no latent of the base dictionary has
  (its best cosine with any base decoder row, ``dec_cos_nearest_base``, below
  ``MOVED_BELOW``): the dictionary had to grow a direction to follow the checkpoint. Needs
  the stage-wise table's ``dec_cos_nearest_base``; without it such a latent reads rotated or
  repurposed as before;
- ``repurposed``: the decoder moved while the activity stayed in the stable band: the latent
  still fires as often and as strongly (on what it fired on before, as far as frequency can
  tell) but writes somewhere else — the signature of a rewired computation. A crosscoder
  latent fires on the same tokens in both models by construction, so there a low base-vs-RL
  decoder cosine alone means repurposed (``crosscoder.latent_table``);
- ``born`` / ``died``: inactive in the base and active at the step / the reverse, where
  "inactive" is a frequency under ``INACTIVE_FREQUENCY``; a frequency or activity ratio
  beyond ``BORN_ABOVE`` / under ``DIED_BELOW`` counts too (a latent doing 20 times less
  has died, not been suppressed: a TopK dictionary fills every token's k slots, so a latent
  whose feature is gone still fires, weakly, on some tokens). A birth also needs
  **support**: it must fire on a larger share of the step's tokens than ``support`` (given
  per source: the seed control's floor, the most often any latent born by chance fires,
  ``birth_support``). A base latent that wakes up on fewer tokens is a base direction
  amplified from dormancy (``amplified``), not a new feature: amplifying a direction the
  base writes makes a barely-firing latent of that direction fire on a few more tokens;
- ``split`` / ``merged``: one base latent is explained by several latents of the step's own
  dictionary / several base latents by one (``matching``);
- ``inactive``: fires neither in the base nor at the step (no evidence either way).

Two kinds of evidence, one row each (column ``evidence``):

- ``tracked``: the same latent followed through the steps. Its activity comes from the
  ``trajectories`` (one fixed dictionary applied to every checkpoint); when a ``stagewise``
  table is given (the base dictionary fine-tuned on each checkpoint in turn, so latent ``j``
  stays latent ``j``), a decoder that moved makes the class born (from an inactive base
  latent), repurposed or rotated, and overrides the activity classes. Activity for that
  decision is the fine-tuned dictionary's own when the stage-wise table has ``frequency``
  and ``mean_activation`` columns (the fine-tuned dictionary on its step's tokens), else the
  fixed dictionary's; without them a moved base-inactive latent is assumed to have fired (a
  TopK decoder moves only when its latent fires, AuxK aside).
- ``matched``: the base dictionary matched with a dictionary trained independently on the
  step (``matches[step]``, ``a`` = the base dictionary whose latents the trajectories
  follow). Matched base latents are stable, unmatched ones died, linked ones split or
  merged, and each unmatched, unlinked latent of the step's dictionary is a born row with
  ``latent`` missing and ``partner`` naming it (``inactive`` instead when
  ``partner_frequency`` says it fires no more often than ``support``); latents the match
  left out as never firing (``alive_a``) are inactive. Independent dictionaries disagree by
  chance: compare the born and died counts with the seed control (``above_noise_floor``).
  Measured on the planted GPT-2 (32-latent TopK SAEs, 200k tokens): two seeds of the base
  SAE leave 7 to 8 latents of 32 born by chance, so small toy dictionaries give a high
  floor.

Every threshold is a field of ``LineageThresholds`` whose default is a module constant, and
every class is reported beside its evidence columns (``LINEAGE_COLUMNS``). Controls
calibrate them: the base compared with itself must be all stable or inactive
(``class_counts``), and two seeds of the base dictionary give the births and deaths chance
alone produces (``DictionaryMatch.counts`` of that match; ``above_noise_floor``).

Invariants: identical trajectories at every step give only ``stable`` and ``inactive``; step
0 rows compare the base with itself and are therefore ``stable`` or ``inactive``; no input
frame is modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy.stats import poisson
from torch import Tensor

from ..dictionaries.matching import DictionaryMatch
from ..errors import RlinterpError

INACTIVE_FREQUENCY = 1e-3
"""A latent firing on fewer than one token in 1,000 is inactive. On the planted models (12k
tokens) latents rarer than this woke up on a handful of tokens by chance, which a cut at
1e-4 called births; lower it when each checkpoint is measured on millions of tokens and
rare features matter."""
DIED_BELOW = 0.05
"""A frequency or activity ratio (step / base) under this is a death, even above
``INACTIVE_FREQUENCY``. Measured on the planted models with a base TopK SAE: the rewired
neuron's latent kept firing on 30% of its tokens, at 0.04 of its base activity (died),
while the neuron scaled by 0.3 gave 0.37 (suppressed)."""
BORN_ABOVE = 20.0
"""A frequency or activity ratio over this is a birth (the mirror image of ``DIED_BELOW``)."""
AMPLIFIED_ABOVE = 1.5
"""An activity ratio at or over this is amplified: half as much again per token."""
SUPPRESSED_BELOW = 1 / 1.5
"""An activity ratio at or under this is suppressed (the mirror image of ``AMPLIFIED_ABOVE``)."""
MOVED_BELOW = 0.7
"""A stage-wise decoder cosine to the base under this means the decoder moved (about 45
degrees). Fine-tuning on the base itself should leave every live latent far above it."""
NOISE_ALPHA = 0.05
"""``above_noise_floor``: the chance probability under which a count is called above it."""
MIN_CHANCE_RATE = 0.5
"""``above_noise_floor``: the smallest chance rate assumed, since a control that saw no
births cannot rule out a rate of about one in two runs."""

CLASSES = (
    "stable",
    "amplified",
    "suppressed",
    "rotated",
    "repurposed",
    "new_direction",
    "born",
    "died",
    "split",
    "merged",
    "inactive",
)
CHANGES = tuple(c for c in CLASSES if c not in ("stable", "inactive"))
"""The classes that count as a change (what reports count and draw)."""
CROSSCODER_CLASSES = {
    "shared": "stable",
    "amplified": "amplified",
    "suppressed": "suppressed",
    "repurposed": "repurposed",
    "base_only": "died",
    "rl_only": "born",
    "inactive": "inactive",
}
"""Each ``crosscoder.latent_table`` kind read as a lineage class (base-only: the RL model no
longer writes it; RL-only: only the RL model does; check both with latent scaling)."""
TRAJECTORY_COLUMNS = (
    "source",
    "label",
    "step",
    "latent",
    "frequency",
    "mean_activation",
    "mass",
    "logit_norm",
    "logit_contribution",
)
"""What ``lineage_table`` needs of the trajectories: one row per (source, step, latent); step 0 is
the base; ``mean_activation`` is the mean over the tokens where the latent fires."""
STAGEWISE_COLUMNS = ("step", "latent", "dec_cos_base", "dec_cos_prev", "enc_cos_base", "enc_cos_prev")
"""What ``lineage_table`` needs of a stage-wise table (optionally also ``source``, ``frequency``,
``mean_activation`` and ``dec_cos_nearest_base``)."""
LINEAGE_COLUMNS = (
    "evidence",
    "source",
    "step",
    "label",
    "latent",
    "class",
    "base_frequency",
    "frequency",
    "frequency_ratio",
    "activation_ratio",
    "activity_ratio",
    "dec_cos_base",
    "dec_cos_prev",
    "enc_cos_base",
    "stage_frequency_ratio",
    "stage_activity_ratio",
    "dec_cos_nearest_base",
    "support",
    "partner",
    "partner_frequency",
    "partner_cosine",
    "nearest_cosine",
    "linked",
)
"""The lineage table. ``latent`` (nullable) indexes the tracked (base) dictionary; the fixed
dictionary's evidence: ``base_frequency``, ``frequency`` (at the step), ``frequency_ratio``,
``activation_ratio`` (mean activation when firing), ``activity_ratio`` (their product: mean
activation per token); stage-wise evidence (NaN without it): ``dec_cos_base``,
``dec_cos_prev``, ``enc_cos_base``, the fine-tuned dictionary's ``stage_frequency_ratio``
and ``stage_activity_ratio`` (against the base dictionary on the base) and
``dec_cos_nearest_base``; ``support``: the firing frequency a birth had to exceed; matching
evidence (``matched`` rows only): ``partner`` (the step dictionary's latent: the one-to-one
partner, or the born latent itself), ``partner_frequency`` (a born latent's firing frequency
on the step's tokens, when given), ``partner_cosine``, ``nearest_cosine`` (an unmatched
latent's best cosine with any latent of the other side), ``linked`` (the other side's latents
of a split or merge, space-separated)."""


@dataclass(frozen=True)
class LineageThresholds:
    """Every cut the lineage classes use (see the module constants for why each default)."""

    inactive_frequency: float = INACTIVE_FREQUENCY
    """Firing frequency under which a latent is inactive."""
    died_below: float = DIED_BELOW
    """Frequency or activity ratio under which an active base latent has died."""
    born_above: float = BORN_ABOVE
    """Frequency or activity ratio over which an active step latent was born."""
    amplified_above: float = AMPLIFIED_ABOVE
    """Activity ratio at or over which a latent is amplified."""
    suppressed_below: float = SUPPRESSED_BELOW
    """Activity ratio at or under which a latent is suppressed."""
    moved_below: float = MOVED_BELOW
    """Stage-wise decoder cosine to the base under which the decoder moved."""

    def __post_init__(self) -> None:
        if not 0 <= self.inactive_frequency < 1:
            raise ValueError(f"inactive_frequency must lie in [0, 1), got {self.inactive_frequency}")
        if not 0 < self.died_below < self.suppressed_below < 1 < self.amplified_above < self.born_above:
            raise ValueError(
                "need 0 < died_below < suppressed_below < 1 < amplified_above < born_above, got "
                f"{self.died_below}, {self.suppressed_below}, {self.amplified_above}, {self.born_above}"
            )
        if not -1 <= self.moved_below <= 1:
            raise ValueError(f"moved_below is a cosine and must lie in [-1, 1], got {self.moved_below}")


def lineage_table(
    trajectories: pd.DataFrame,
    stagewise: pd.DataFrame | None = None,
    matches: Mapping[int, DictionaryMatch] | None = None,
    thresholds: LineageThresholds | None = None,
    support: float | Mapping[str, float] | None = None,
    born_frequency: Mapping[int, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The lineage table (``LINEAGE_COLUMNS``; see the module docstring): ``tracked`` rows
    for every (source, step, latent) of ``trajectories``, then ``matched`` rows for every
    step of ``matches`` and every source. ``support``: the firing frequency a birth must
    exceed (one for every source, or per source; None: ``thresholds.inactive_frequency``, so
    any active latent may be born). ``born_frequency[step]``: the firing frequency of every
    latent of the step's own dictionary (of ``matches[step]``), for its births' support."""
    t = thresholds or LineageThresholds()
    tracked = _with_stagewise(_activity(trajectories), stagewise)
    tracked["support"] = _support(tracked["source"], support, t)
    tracked["class"] = _tracked_classes(tracked, t)
    tracked["evidence"] = "tracked"
    parts = [tracked]
    for step, match in sorted((matches or {}).items()):
        frequency = None if born_frequency is None else born_frequency.get(step)
        parts.append(_matched_rows(tracked, int(step), match, frequency))
    table = pd.concat(parts, ignore_index=True)
    for column in LINEAGE_COLUMNS:
        if column not in table:
            table[column] = None if column == "linked" else np.nan
    table = table.astype({"latent": "Int64", "partner": "Int64", "linked": "object"})
    return table[list(LINEAGE_COLUMNS)]


def _support(
    sources: pd.Series, support: float | Mapping[str, float] | None, t: LineageThresholds
) -> pd.Series:
    """Per row, the firing frequency a birth must exceed (never below ``inactive_frequency``)."""
    if support is None or isinstance(support, (int, float)):
        value = t.inactive_frequency if support is None else float(support)
        return pd.Series(max(value, t.inactive_frequency), index=sources.index)
    missing = sorted(set(sources) - set(support))
    if missing:
        raise RlinterpError(f"birth support is given for sources {sorted(support)}, not for {missing}")
    return sources.map(lambda s: max(float(support[s]), t.inactive_frequency)).astype(float)


def _activity(trajectories: pd.DataFrame) -> pd.DataFrame:
    """Per (source, step, latent): the step's frequency beside the base's, and the ratios."""
    missing = [c for c in TRAJECTORY_COLUMNS if c not in trajectories.columns]
    if missing:
        raise RlinterpError(
            f"the trajectories lack column(s) {missing}; they need {list(TRAJECTORY_COLUMNS)}"
        )
    keys = ["source", "step", "latent"]
    if trajectories.duplicated(keys).any():
        first = trajectories.loc[trajectories.duplicated(keys), keys].iloc[0].tolist()
        raise RlinterpError(f"the trajectories hold more than one row for (source, step, latent) = {first}")
    frame = trajectories[["source", "label", "step", "latent", "frequency", "mean_activation"]].copy()
    base = frame[frame["step"] == 0].set_index(["source", "latent"])
    lacking = sorted(set(frame["source"]) - set(base.index.get_level_values("source")))
    if lacking:
        raise RlinterpError(
            f"the trajectories of source(s) {lacking} have no step 0 (the base) to compare with"
        )
    joined = frame.join(
        base[["frequency", "mean_activation"]].rename(columns=lambda c: f"base_{c}"), on=["source", "latent"]
    )
    if joined["base_frequency"].isna().any():
        row = joined.loc[joined["base_frequency"].isna(), keys].iloc[0].tolist()
        raise RlinterpError(
            f"latent {row[2]} of source {row[0]!r} appears at step {row[1]} but not at step 0"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        joined["frequency_ratio"] = joined["frequency"] / joined["base_frequency"]
        joined["activation_ratio"] = joined["mean_activation"] / joined["base_mean_activation"]
        joined["activity_ratio"] = (joined["frequency"] * joined["mean_activation"]) / (
            joined["base_frequency"] * joined["base_mean_activation"]
        )
    return joined


def _with_stagewise(tracked: pd.DataFrame, stagewise: pd.DataFrame | None) -> pd.DataFrame:
    """The tracked rows with the stage-wise evidence beside them (NaN where there is none)."""
    stage_activity = ["stage_frequency", "stage_frequency_ratio", "stage_activity_ratio"]
    if stagewise is None:
        return tracked.assign(
            **dict.fromkeys(
                ["dec_cos_base", "dec_cos_prev", "enc_cos_base", "dec_cos_nearest_base", *stage_activity],
                np.nan,
            )
        )
    missing = [c for c in STAGEWISE_COLUMNS if c not in stagewise.columns]
    if missing:
        raise RlinterpError(
            f"the stage-wise table lacks column(s) {missing}; it needs {list(STAGEWISE_COLUMNS)}"
        )
    keys = ["source", "step", "latent"] if "source" in stagewise.columns else ["step", "latent"]
    if stagewise.duplicated(keys).any():
        raise RlinterpError(f"the stage-wise table holds more than one row for some {tuple(keys)}")
    columns = ["dec_cos_base", "dec_cos_prev", "enc_cos_base"]
    if "dec_cos_nearest_base" in stagewise.columns:
        columns.append("dec_cos_nearest_base")
    has_activity = {"frequency", "mean_activation"} <= set(stagewise.columns)
    stage = stagewise.set_index(keys)
    if has_activity:
        stage = stage.rename(
            columns={"frequency": "stage_frequency", "mean_activation": "stage_mean_activation"}
        )
        columns += ["stage_frequency", "stage_mean_activation"]
    joined = tracked.join(stage[columns], on=keys)
    if has_activity:
        with np.errstate(divide="ignore", invalid="ignore"):
            joined["stage_frequency_ratio"] = joined["stage_frequency"] / joined["base_frequency"]
            joined["stage_activity_ratio"] = (joined["stage_frequency"] * joined["stage_mean_activation"]) / (
                joined["base_frequency"] * joined["base_mean_activation"]
            )
    else:
        joined = joined.assign(**dict.fromkeys(stage_activity, np.nan))
    if "dec_cos_nearest_base" not in joined:
        joined["dec_cos_nearest_base"] = np.nan
    return joined


def _tracked_classes(frame: pd.DataFrame, t: LineageThresholds) -> np.ndarray:
    base_active = frame["base_frequency"].to_numpy() >= t.inactive_frequency
    step_active = frame["frequency"].to_numpy() >= t.inactive_frequency
    support = frame["support"].to_numpy()
    supported = frame["frequency"].to_numpy() > support
    freq_ratio = frame["frequency_ratio"].to_numpy()
    activity = _activity_classes(
        base_active, step_active, supported, freq_ratio, frame["activity_ratio"].to_numpy(), t
    )
    moved = frame["dec_cos_base"].to_numpy() < t.moved_below  # NaN (no stage-wise row) is False
    new_direction = frame["dec_cos_nearest_base"].to_numpy() < t.moved_below
    stage_known = frame["stage_frequency"].notna().to_numpy()
    stage_active = np.where(stage_known, frame["stage_frequency"].to_numpy() >= t.inactive_frequency, True)
    # A moved latent that was silent in the base is a birth only with support at the step
    # (the fine-tuned dictionary's frequency when known): else its move is noise.
    stage_supported = np.where(stage_known, frame["stage_frequency"].to_numpy() > support, supported)
    # Whether the activity stayed in the stable band: the fine-tuned dictionary's when known.
    ratio_f = np.where(stage_known, frame["stage_frequency_ratio"].to_numpy(), freq_ratio)
    ratio_a = np.where(
        stage_known, frame["stage_activity_ratio"].to_numpy(), frame["activity_ratio"].to_numpy()
    )
    with np.errstate(invalid="ignore"):
        unchanged = (
            (ratio_f >= t.died_below)
            & (ratio_f <= t.born_above)
            & (ratio_a > t.suppressed_below)
            & (ratio_a < t.amplified_above)
        )
    moved_class = np.select(
        [~base_active, new_direction, unchanged], ["born", "new_direction", "repurposed"], "rotated"
    )
    counts = moved & stage_active & (base_active | stage_supported)
    return np.where(counts, moved_class, activity)


def _activity_classes(
    base_active: np.ndarray,
    step_active: np.ndarray,
    supported: np.ndarray,
    freq_ratio: np.ndarray,
    activity_ratio: np.ndarray,
    t: LineageThresholds,
) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        conditions = [
            ~base_active & ~step_active,
            base_active & (~step_active | (freq_ratio < t.died_below) | (activity_ratio < t.died_below)),
            supported & (~base_active | (freq_ratio > t.born_above) | (activity_ratio > t.born_above)),
            activity_ratio >= t.amplified_above,
            activity_ratio <= t.suppressed_below,
        ]
    return np.select(conditions, ["inactive", "died", "born", "amplified", "suppressed"], "stable")


def match_classes(match: DictionaryMatch) -> pd.DataFrame:
    """One match read as lineage classes: a row per latent of ``a`` (split, merged, stable
    when paired, inactive when left out by ``alive_a``, died otherwise) and one per born
    latent of ``b`` (``latent`` missing):
    ``latent, partner, partner_cosine, nearest_cosine, linked, class``. For the seed control,
    its class counts are the chance births and deaths."""
    pairs = match.pairs.set_index("a")
    nearest = match.nearest.set_index(["side", "latent"])["cosine"]
    rows = []
    for a in range(match.n_a):
        links = match.links[match.links["a"] == a]
        kind = links["kind"].iloc[0] if len(links) else None
        paired = a in pairs.index
        cls = kind or ("stable" if paired else "died" if match.alive_a[a] else "inactive")
        rows.append(
            {
                "latent": a,
                "partner": int(pairs.at[a, "b"]) if paired else None,
                "partner_cosine": float(pairs.at[a, "cosine"]) if paired else np.nan,
                "nearest_cosine": np.nan if paired else float(nearest.get(("a", a), np.nan)),
                "linked": " ".join(str(b) for b in links["b"]) if len(links) else None,
                "class": cls,
            }
        )
    for b in match.born:
        rows.append(
            {
                "latent": None,
                "partner": int(b),
                "partner_cosine": np.nan,
                "nearest_cosine": float(nearest[("b", int(b))]),
                "linked": None,
                "class": "born",
            }
        )
    frame = pd.DataFrame(
        rows, columns=["latent", "partner", "partner_cosine", "nearest_cosine", "linked", "class"]
    )
    return frame.astype({"latent": "Int64", "partner": "Int64"})


def _matched_rows(
    tracked: pd.DataFrame, step: int, match: DictionaryMatch, frequency: np.ndarray | None = None
) -> pd.DataFrame:
    at_step = tracked[tracked["step"] == step]
    if at_step.empty:
        raise RlinterpError(f"matches are given for step {step}, which the trajectories do not have")
    classes = match_classes(match)
    born = classes["class"] == "born"
    if frequency is not None:
        if len(frequency) != match.n_b:
            raise RlinterpError(
                f"born_frequency at step {step} has {len(frequency)} values for a dictionary of "
                f"{match.n_b} latents"
            )
        classes["partner_frequency"] = np.nan
        partners = classes.loc[born, "partner"].astype(int).to_numpy()
        classes.loc[born, "partner_frequency"] = np.asarray(frequency, dtype=float)[partners]
    evidence = [
        "label",
        "base_frequency",
        "frequency",
        "frequency_ratio",
        "activation_ratio",
        "activity_ratio",
    ]
    parts = []
    for source, rows in at_step.groupby("source", sort=True):
        known = set(rows["latent"])
        beyond = [int(x) for x in classes["latent"].dropna() if int(x) not in known]
        if beyond:
            raise RlinterpError(
                f"the match at step {step} has base latents {beyond[:5]} that the trajectories of "
                f"{source!r} do not; was it made with the tracked dictionary as 'a'?"
            )
        joined = classes.join(rows.set_index("latent")[evidence], on="latent")
        joined["label"] = rows["label"].iloc[0]
        joined["support"] = float(rows["support"].iloc[0])
        if frequency is not None:  # a birth firing no more often than chance births is no birth
            unsupported = born & ~(joined["partner_frequency"] > joined["support"])
            joined.loc[unsupported, "class"] = "inactive"
        parts.append(joined.assign(evidence="matched", source=source, step=step))
    return pd.concat(parts, ignore_index=True)


def class_counts(table: pd.DataFrame) -> pd.DataFrame:
    """How many rows of each class per (evidence, source, step): one column per class of
    ``CLASSES``, 0 where absent. On the base-versus-itself control everything must be
    ``stable`` or ``inactive``; on the seed control, ``born`` and ``died`` are chance."""
    counts = table.groupby(["evidence", "source", "step"])["class"].value_counts().unstack(fill_value=0)
    return counts.reindex(columns=list(CLASSES), fill_value=0).reset_index().rename_axis(columns=None)


class NoiseVerdict(NamedTuple):
    """Whether an observed count of births (or deaths) exceeds what chance produces."""

    observed: int
    """The count at the step under test."""
    chance_rate: float
    """Expected count by chance: the controls' mean, at least ``MIN_CHANCE_RATE``."""
    p_value: float
    """Probability of ``observed`` or more under a Poisson law with that rate."""
    above: bool
    """``p_value < alpha``."""


def above_noise_floor(
    observed: int, control: int | Sequence[int], alpha: float = NOISE_ALPHA
) -> NoiseVerdict:
    """Compare a count of births or deaths with the control count(s) (seed controls: two
    dictionaries of one model, matched), treating chance events as Poisson."""
    counts = [control] if isinstance(control, int) else list(control)
    if not counts or any(c < 0 for c in counts) or observed < 0:
        raise RlinterpError(
            f"counts must be non-negative and a control must be given, got {observed}, {control}"
        )
    if not 0 < alpha < 1:
        raise RlinterpError(f"alpha must lie in (0, 1), got {alpha}")
    rate = max(float(np.mean(counts)), MIN_CHANCE_RATE)
    p_value = float(poisson.sf(observed - 1, rate))
    return NoiseVerdict(observed=observed, chance_rate=rate, p_value=p_value, above=p_value < alpha)


def birth_support(seed: DictionaryMatch, frequency: np.ndarray) -> float:
    """The seed control's floor for births: the largest firing frequency (on its training
    tokens) of a latent that the match of two seeds of one model's dictionary left born, 0
    when chance gave no birth. ``frequency``: the firing frequency of each latent of the
    match's second (``b``) dictionary."""
    born = np.asarray(seed.born, dtype=int)
    return float(np.max(np.asarray(frequency, dtype=float)[born])) if len(born) else 0.0


def nearest_cosines(decoder: Tensor, base_decoder: Tensor) -> np.ndarray:
    """Per row of ``decoder``, its largest absolute cosine with any row of ``base_decoder``
    (the stage-wise ``dec_cos_nearest_base``)."""
    a = torch.nn.functional.normalize(decoder.double(), dim=-1)
    b = torch.nn.functional.normalize(base_decoder.double(), dim=-1)
    return (a @ b.T).abs().max(dim=1).values.numpy()


def thresholds_record(thresholds: LineageThresholds | None = None) -> dict[str, float]:
    """The thresholds as a JSON-ready dict, for a run's summary."""
    return asdict(thresholds or LineageThresholds())
