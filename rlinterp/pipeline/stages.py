"""The analysis stages of ``rlinterp run`` after the dictionaries: ``tracking``,
``selection`` and ``circuits``, each the library call of its command (``run_track``,
``run_selection``, ``run_circuits``) once per series, wired to what the earlier stages
left on disk.

Why they share the run's base SAE: one dictionary for the whole run means a latent number
names the same direction in the feature cards, in the lineage table (tracking) and in the
persona latents (selection), so a card can show a latent's lineage beside its contexts.
The SAE is read from ``dictionaries/sae``, never retrained.

Each stage's config section subclasses its command's config (the same fields, docstrings
and validation), adding ``enabled`` and redeclaring the budgets ``rlinterp run`` uses by
default, with the reason in the docstring (it becomes the comment in
``configs/default.toml``).

Layout (besides each command's own directory per series, ``<stage>/<series>/``, which
resumes by itself): the tables the report reads, one row per series and step at least,
with a ``series`` column, written when every series is done:

- ``tracking/summary.parquet`` (``TrackResult.summary()`` rows), ``tracking/lineage.parquet``
  (the tracked latents' lineage);
- ``selection/index.parquet`` (per step), ``selection/index_layers.parquet`` (per step and
  block), ``selection/persona_latents.parquet``, ``selection/causal.parquet``,
  ``selection/transition.parquet``;
- ``circuits/steps.parquet`` (``CircuitsResult.steps()`` rows, one per metric and step);
- ``<stage>/skipped.json``: series the stage cannot analyse, with the reason (e.g.
  checkpoint folders without persona labels for ``selection``), shown in the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from ..activations.onpolicy import SamplingConfig
from ..activations.prompts import PromptSet
from ..circuits.organism_metrics import METRICS as ORGANISM_METRICS
from ..circuits.result import CircuitsConfig
from ..core.artifacts import write_json, write_parquet
from ..dictionaries.stagewise import StagewiseConfig
from ..errors import RlinterpError
from ..selection.analysis import SelectionConfig
from ..tracking.analysis import SourceName, TrackConfig
from .result import RunResult, register_headline

if TYPE_CHECKING:
    from .config import RunContext

log = logging.getLogger(__name__)

SKIPPED = "skipped.json"


# -- config sections -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingSection(TrackConfig):
    """Feature tracking (``rlinterp track``): every latent of the run's base SAE followed
    over each series' steps, with its lineage and the seed and self controls."""

    sources: tuple[SourceName, ...] = ("texts", "on-policy")
    """Token sources: ``texts`` (the persona answers, skipped for prompts without answers)
    and ``on-policy`` (each checkpoint's own answers). ``prompts`` (the questions alone) is
    left out by default: the organism's questions are a few short templates that show
    little of what RL changed, and each source costs a harvest and a dozen SAEs per series."""
    independent_tokens: int | None = 30_000
    """Training tokens of each independent per-checkpoint SAE (the matched evidence). A
    source trains one per checkpoint and control (about 15 per series); 30k tokens keeps
    that a few seconds each on one CPU core."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(samples_per_prompt=16))
    """How each checkpoint samples its own answers. The organism asks a few dozen distinct
    questions, so one answer each is a few hundred tokens, too few for the SAEs trained on
    them; 16 give several thousand, and sampling a tiny model costs well under a second."""
    stagewise: StagewiseConfig = field(default_factory=lambda: StagewiseConfig(n_tokens=10_000))
    """Budget of each stage-wise fine-tune (12 per series and source with its self control);
    a stage only follows its checkpoint from the previous stage's SAE, so 10k tokens do."""
    enabled: bool = True
    """Run the tracking stage."""


@dataclass(frozen=True)
class SelectionSection(SelectionConfig):
    """Persona features, the selection-versus-novelty index and its causal checks
    (``rlinterp selection``), per series, on the run's prompts (they need persona labels)."""

    hook: str | None = None
    """Hook of the dictionary explanation; None: the dictionaries stage's hook, with the run's
    base SAE. The index reads every block whatever the hook, as ``rlinterp selection`` does."""
    dictionary: str | None = None
    """A trained base SAE at ``hook``; None: the run's base SAE when ``hook`` is its hook,
    else one trained here with ``dictionary_config``."""
    behaviour_edits: tuple[str, ...] = ("persona_choice",)
    """Causal edits whose behaviour is re-sampled (organism series). Only the persona-choice
    patch by default: the behaviour evaluations were two thirds of the stage's time on the
    default organism (345 CPU-s with all three edits); ``rlinterp selection`` does all."""
    n_random: int = 2
    """Random subspaces averaged for the persona-choice patch's control."""
    enabled: bool = True
    """Run the selection stage."""


@dataclass(frozen=True)
class CircuitsSection(CircuitsConfig):
    """Circuit diffs (``rlinterp circuits``): which components carry each behaviour metric's
    change, per series and step, by cross-model patching and attribution."""

    metrics: tuple[str, ...] = ("answer", "persona", "shortcut")
    """Organism metrics to measure (``answer``, ``persona``, ``shortcut``); ignored when
    ``prompts`` is given."""
    prompts: str | None = None
    """A ``.jsonl`` of ``{prompt, positive, negative?, corrupted?}`` rows: the metric for
    checkpoint series (None: the organism's metrics)."""
    kind: Literal["logit_diff", "logprob"] = "logit_diff"
    """Metric of ``prompts``: positive minus negative logits, or the log-prob of positive."""
    max_prompts: int | None = 32
    """Prompts per metric the stage analyses, evenly spaced over the metric's prompts (None:
    all). The organism's ``shortcut`` metric has 280 (every word boundary of 20 questions),
    the others 20; with per-component attribution 64 took 229 CPU-s on the default
    organism, 32 keep the stage near two minutes."""
    enabled: bool = True
    """Run the circuits stage."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_prompts is not None and self.max_prompts < 1:
            raise RlinterpError(f"circuits.max_prompts must be positive or none, got {self.max_prompts}")
        unknown = [m for m in self.metrics if m not in ORGANISM_METRICS]
        if unknown or not self.metrics:
            raise RlinterpError(
                f"circuits.metrics must name organism metrics ({', '.join(ORGANISM_METRICS)}), got "
                f"{list(self.metrics)}; for your own metric give circuits.prompts"
            )


def _plain(cls: type, section: Any, **changes: Any) -> Any:
    """The command's own config from a section (the section's extra fields dropped)."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)}
    return cls(**(values | changes))


# -- shared helpers ------------------------------------------------------------------------


def base_sae(ctx: RunContext) -> tuple[Path, str]:
    """The run's base SAE folder and its hook (the dictionaries stage must have run)."""
    info = ctx.stage_dir("dictionaries") / "info.json"
    if not info.is_file():
        raise RlinterpError(
            "the tracking and selection stages read the run's base SAE; enable the dictionaries stage "
            "(dictionaries.enabled = true) or disable them (tracking.enabled / selection.enabled = false)"
        )
    found = json.loads(info.read_text())
    return ctx.stage_dir("dictionaries") / found["sae"], str(found["hook"])


def _finish(out: Path, tables: dict[str, list[pd.DataFrame]], skipped: dict[str, str]) -> None:
    for name, frames in tables.items():
        frames = [f for f in frames if len(f)]
        write_parquet(
            out / f"{name}.parquet", pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        )
    write_json(out / SKIPPED, skipped)


# -- the stages ----------------------------------------------------------------------------


def tracking_stage(ctx: RunContext) -> None:
    """``run_track`` of the base SAE over every series into ``tracking/<series>/``."""
    from ..organism import Organism
    from ..tracking.analysis import run_track

    section = ctx.config.section("tracking")
    if not section.enabled:
        return
    assert ctx.prompts is not None
    sae, _ = base_sae(ctx)
    out = ctx.stage_dir("tracking")
    tables: dict[str, list[pd.DataFrame]] = {"summary": [], "lineage": []}
    skipped = {}
    with_answers = ctx.prompts.response_starts is not None
    sources = tuple(s for s in section.sources if s != "texts" or with_answers)
    # An organism's checkpoints answer its behaviour questions (single turns), not the persona
    # texts' prompts, whose persona turn would steer what they write.
    organism = Organism.load(ctx.organism_root) if ctx.organism_root is not None else None
    questions = PromptSet.from_list(organism.question_prompts()) if organism is not None else None
    for name, series in ctx.series.items():
        if not sources:
            skipped[name] = "the only source asked for is 'texts', and the prompts have no answers"
            continue
        log.info("tracking %s: %d checkpoints on %s", name, len(series) - 1, ", ".join(sources))
        result = run_track(
            series, ctx.prompts, sae, out / name, _plain(TrackConfig, section, sources=sources), questions
        )
        tables["summary"].append(pd.DataFrame(result.summary()).assign(series=name))
        tracked = result.lineage[result.lineage["evidence"] == "tracked"]
        tables["lineage"].append(tracked.assign(series=name))
    _finish(out, tables, skipped)


def selection_stage(ctx: RunContext) -> None:
    """``run_selection`` per series into ``selection/<series>/``, at the base SAE's hook with
    the base SAE unless the section names another."""
    from ..organism import Organism
    from ..selection.analysis import run_selection

    section = ctx.config.section("selection")
    if not section.enabled:
        return
    assert ctx.prompts is not None
    sae, sae_hook = base_sae(ctx)
    hook = section.hook or sae_hook
    cfg = _plain(
        SelectionConfig,
        section,
        hook=hook,
        dictionary=section.dictionary or (str(sae) if hook == sae_hook else None),
        dictionary_config=dataclasses.replace(section.dictionary_config, device=ctx.config.compute.device),
    )
    organism = Organism.load(ctx.organism_root) if ctx.organism_root is not None else None
    out = ctx.stage_dir("selection")
    tables: dict[str, list[pd.DataFrame]] = {
        n: [] for n in ("index", "index_layers", "persona_latents", "causal", "transition")
    }
    skipped = {}
    for name, series in ctx.series.items():
        if section.label not in ctx.prompts.labels or ctx.prompts.response_starts is None:
            skipped[name] = (
                f"the prompts have no {section.label!r} label or no answers; the selection analysis "
                "needs persona-labelled texts with a prompt/response split"
            )
            continue
        log.info("selection %s: %d checkpoints at %s", name, len(series) - 1, hook)
        regime = name if organism is not None else None
        result = run_selection(series, ctx.prompts, out / name, cfg, organism, regime)
        summary = json.loads((out / name / "summary.json").read_text())
        tables["index"].append(result.step_table().assign(series=name))
        tables["index_layers"].append(result.index.layers.assign(series=name))
        tables["persona_latents"].append(result.latents.assign(series=name))
        tables["causal"].append(result.causal.assign(series=name))
        transition = {f"index_{k}": v for k, v in result.index.transition.items()}
        tables["transition"].append(
            pd.DataFrame(
                [
                    {
                        "series": name,
                        "hook": result.hook,
                        **transition,
                        "behavioural_step": summary.get("behavioural_transition"),
                    }
                ]
            )
        )
    _finish(out, tables, skipped)


def circuits_stage(ctx: RunContext) -> None:
    """``run_circuits`` per series and metric into ``circuits/<series>/<metric>/``."""
    from ..circuits.analysis import run_circuits
    from ..circuits.metrics import BehaviourMetric, BehaviourPrompts

    section = ctx.config.section("circuits")
    if not section.enabled:
        return
    cfg = _plain(CircuitsConfig, section)
    out = ctx.stage_dir("circuits")
    steps: list[pd.DataFrame] = []
    skipped = {}
    for name, series in ctx.series.items():
        if section.prompts is not None:
            metrics = [
                (
                    BehaviourMetric(Path(section.prompts).stem, section.kind),
                    BehaviourPrompts.from_jsonl(section.prompts),
                )
            ]
        elif ctx.organism_root is not None:
            from ..circuits.organism_metrics import organism_behaviour

            metrics = [organism_behaviour(ctx.organism_root, m) for m in section.metrics]
        else:
            skipped[name] = "checkpoint series need circuits.prompts (a .jsonl of behaviour prompts)"
            continue
        for metric, prompts in metrics:
            log.info("circuits %s: metric %s", name, metric.name)
            subset = prompts.spread(section.max_prompts)
            result = run_circuits(series, metric, subset, out / name / metric.name, cfg)
            steps.append(_steps_frame(result.steps()).assign(series=name, metric=metric.name))
    _finish(out, {"steps": steps}, skipped)


def _steps_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``CircuitsResult.steps()`` as a flat table: component lists joined into text."""
    flat = []
    for row in rows:
        flat.append(
            {
                **row,
                "top_sufficiency": ", ".join(f"{c} ({v:.2f})" for c, v in row["top_sufficiency"]),
                "top_necessity": ", ".join(f"{c} ({v:.2f})" for c, v in row["top_necessity"]),
                "carriers": ", ".join(row["carriers"]),
                "base_used": ", ".join(row["base_used"]),
            }
        )
    return pd.DataFrame(flat)


# -- headline columns of the run summary ------------------------------------------------------

CHANGED = (
    "amplified",
    "suppressed",
    "rotated",
    "repurposed",
    "new_direction",
    "born",
    "died",
    "split",
    "merged",
)
"""Lineage classes that count as a change (all but ``stable`` and ``inactive``)."""


def tracking_headline(run: RunResult) -> pd.DataFrame:
    """``changed_latents``: tracked latents in a changing lineage class at each step, on the
    on-policy source where it was measured (what the checkpoint writes), else the first."""
    summary = run.tables.get("tracking/summary", pd.DataFrame())
    if summary.empty:
        return summary
    preferred = "on-policy" if "on-policy" in set(summary["source"]) else summary["source"].iloc[0]
    rows = summary[summary["source"] == preferred]
    changed = rows[[f"n_{c}" for c in CHANGED if f"n_{c}" in rows]].sum(axis=1)
    return pd.DataFrame({"series": rows["series"], "step": rows["step"], "changed_latents": changed})


def index_headline(run: RunResult) -> pd.DataFrame:
    """``index``: the selection-versus-novelty index (0 selection, 1 novelty) per step."""
    index = run.tables.get("selection/index", pd.DataFrame())
    return index[["series", "step", "index"]] if not index.empty else index


def circuits_headline(run: RunResult) -> pd.DataFrame:
    """``circuits_<metric>``: the circuits verdict per metric (enhanced, new, unclear, no change)."""
    steps = run.tables.get("circuits/steps", pd.DataFrame())
    if steps.empty:
        return steps
    wide = steps.pivot_table(index=["series", "step"], columns="metric", values="verdict", aggfunc="first")
    return wide.rename(columns=lambda m: f"circuits_{m}").reset_index().rename_axis(columns=None)


register_headline(tracking_headline)
register_headline(index_headline)
register_headline(circuits_headline)
