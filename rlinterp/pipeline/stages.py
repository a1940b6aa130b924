"""The analysis stages of ``rlinterp run`` after the dictionaries: ``tracking``,
``selection``, ``circuits``, ``fidelity`` and ``readings``, each the library call of its
command (``run_track``, ``run_selection``, ``run_circuits``, ``run_fidelity``,
``run_readings``) once per series, wired to what the earlier stages left on disk
(``fidelity`` samples each checkpoint itself; ``readings`` reads only the diff stage's
activations); then ``transition``, which reads the analyses' tables
(``pipeline.transition``).

Why they share the run's base SAE: one dictionary for the whole run means a latent number
names the same direction in the feature cards, in the lineage table (tracking) and in the
persona latents (selection), so a card can show a latent's lineage beside its contexts.
The SAE is read from ``dictionaries/sae``, never retrained.

Each stage reads its section of the run config (``sections``), which subclasses its
command's config.

Layout (besides each command's own directory per series, ``<stage>/<series>/``, which
resumes by itself): the tables the report reads, one row per series and step at least,
with a ``series`` column, written when every series is done:

- ``tracking/summary.parquet`` (``TrackResult.summary()`` rows), ``tracking/lineage.parquet``
  (the tracked latents' lineage);
- ``selection/index.parquet`` (per step), ``selection/index_layers.parquet`` (per step and
  block), ``selection/persona_latents.parquet``, ``selection/causal.parquet``,
  ``selection/transition.parquet``;
- ``circuits/steps.parquet`` (``CircuitsResult.steps()`` rows, one per metric and step);
- ``fidelity/steps.parquet``, ``fidelity/early_curve.parquet``, ``fidelity/legibility.parquet``
  (``FidelityResult`` tables), ``fidelity/onsets.parquet`` (``FidelityResult.onsets``, one
  row per series), ``fidelity/readings.parquet`` (``series, line``: the reading of each
  series) and ``fidelity/controls.parquet`` (the steps rows of a reasoning organism's
  controls, ``series`` = ``control-<rule>``);
- ``readings/<table>.parquet`` for every table of ``readings.analysis.TABLES``;
- ``transition/signals.parquet`` (one row per series, step and signal) and
  ``transition/change_points.parquet`` (one per series), ``pipeline.transition``;
- ``<stage>/skipped.json``: series the stage cannot analyse, with the reason (e.g.
  checkpoint folders without persona labels for ``selection``), shown in the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..activations.prompts import PromptSet
from ..circuits.result import CircuitsConfig
from ..core.artifacts import read_json_object, write_json, write_parquet
from ..errors import RlinterpError
from ..fidelity.config import FidelityConfig, TaskConfig
from ..readings.config import ReadingsConfig
from ..selection.config import SelectionConfig
from ..tracking.analysis import TrackConfig
from .sections import command_config

if TYPE_CHECKING:
    from ..organism.layout import Organism
    from .config import RunConfig, RunContext
    from .result import RunResult

log = logging.getLogger(__name__)

SKIPPED = "skipped.json"


# -- shared helpers ------------------------------------------------------------------------


def base_sae(ctx: RunContext) -> tuple[Path, str]:
    """The run's base SAE folder and its hook (the dictionaries stage must have run)."""
    info = ctx.stage_dir("dictionaries") / "info.json"
    if not info.is_file():
        raise RlinterpError(
            "the tracking and selection stages read the run's base SAE; enable the dictionaries stage "
            "(dictionaries.enabled = true) or disable them (tracking.enabled / selection.enabled = false)"
        )
    found = read_json_object(info, "delete stages/dictionaries.json to train the base SAE again")
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
    from ..organism.layout import Organism
    from ..tracking.analysis import run_track

    section = ctx.config.tracking
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
            series,
            ctx.prompts,
            sae,
            out / name,
            command_config(TrackConfig, section, sources=sources),
            questions,
        )
        tables["summary"].append(pd.DataFrame(result.summary()).assign(series=name))
        tracked = result.lineage[result.lineage["evidence"] == "tracked"]
        tables["lineage"].append(tracked.assign(series=name))
    _finish(out, tables, skipped)


def selection_stage(ctx: RunContext) -> None:
    """``run_selection`` per series into ``selection/<series>/``, at the base SAE's hook with
    the base SAE unless the section names another."""
    from ..organism.layout import Organism
    from ..selection.analysis import run_selection

    section = ctx.config.selection
    if not section.enabled:
        return
    assert ctx.prompts is not None
    sae, sae_hook = base_sae(ctx)
    # A given dictionary is read at its own hook (``run_selection`` finds it).
    hook = section.hook or (None if section.dictionary else sae_hook)
    cfg = command_config(
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
    from ..circuits.organism_metrics import YES_NO_ONLY, organism_behaviour
    from ..organism.layout import Organism

    section = ctx.config.circuits
    if not section.enabled:
        return
    cfg = command_config(CircuitsConfig, section)
    out = ctx.stage_dir("circuits")
    steps: list[pd.DataFrame] = []
    skipped = {}
    reasoning = ctx.organism_root is not None and Organism.load(ctx.organism_root).reasoning is not None
    for name, series in ctx.series.items():
        if section.prompts is not None:
            metrics = [
                (
                    BehaviourMetric(Path(section.prompts).stem, section.kind),
                    BehaviourPrompts.from_jsonl(section.prompts),
                )
            ]
        elif reasoning:
            skipped[name] = YES_NO_ONLY.replace("--prompts", "circuits.prompts")
            continue
        elif ctx.organism_root is not None:
            from ..circuits.organism_metrics import organism_behaviour, regime_metric
            from ..organism.layout import Organism

            names = list(section.metrics)
            own = regime_metric(Organism.load(ctx.organism_root), name) if section.regime_metric else None
            names += [own] if own is not None and own not in names else []
            metrics = [
                organism_behaviour(ctx.organism_root, m, name if m == "marker" else None) for m in names
            ]
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
                "neuron_carriers": ", ".join(row.get("neuron_carriers", [])),
                "base_used": ", ".join(row["base_used"]),
            }
        )
    return pd.DataFrame(flat)


NO_REASONING = (
    "not a reasoning organism, and no fidelity.prompts given: the reasoning metrics need answers "
    "that state their reasoning (build a reasoning preset, e.g. series.preset = 'reasoning-tiny', "
    "or give fidelity.prompts with fidelity.reasoning and fidelity.answer)"
)
"""Why the fidelity stage skips a series (a yes/no organism's regimes, or checkpoint folders
without a task)."""


def check_fidelity_task(config: RunConfig) -> None:
    """What the fidelity stage reads of the user's task, checked before the run claims its
    directory: the prompts file and the reward script (imported, and called once)."""
    from ..fidelity.source import series_task

    section = config.fidelity
    if section.enabled and section.prompts is not None:
        series_task(command_config(TaskConfig, section))


def fidelity_stage(ctx: RunContext) -> None:
    """``run_fidelity`` per series into ``fidelity/<series>/`` (a reasoning organism's
    controls into ``fidelity/control-<rule>/``), on the user's task when
    ``fidelity.prompts`` is given, else on a reasoning organism's own; other series are
    skipped with ``NO_REASONING``."""
    from ..fidelity.analysis import run_fidelity
    from ..fidelity.organism import organism_task
    from ..fidelity.source import series_task
    from ..models.series import Checkpoint, ModelSeries
    from ..organism.layout import Organism

    section = ctx.config.fidelity
    if not section.enabled:
        return
    cfg, task_cfg = command_config(FidelityConfig, section), command_config(TaskConfig, section)
    organism = Organism.load(ctx.organism_root) if ctx.organism_root is not None else None
    reasoning = organism is not None and organism.reasoning is not None
    out = ctx.stage_dir("fidelity")
    names = ("steps", "early_curve", "legibility", "onsets", "readings", "controls")
    tables: dict[str, list[pd.DataFrame]] = {n: [] for n in names}
    skipped = {}
    for name, series in ctx.series.items():
        if section.prompts is None and not reasoning:
            skipped[name] = NO_REASONING
            continue
        log.info("fidelity %s: %d checkpoints", name, len(series) - 1)
        task = series_task(task_cfg, ctx.organism_root, name if organism is not None else None)
        result = run_fidelity(series, task, out / name, cfg)
        for table in ("steps", "early_curve", "legibility"):
            tables[table].append(getattr(result, table).assign(series=name))
        tables["onsets"].append(pd.DataFrame([{"series": name, **result.onsets()}]))
        tables["readings"].append(pd.DataFrame({"series": name, "line": result.reading()}))
    if reasoning and section.controls and section.prompts is None and tables["steps"]:
        assert organism is not None
        for rule, folder in organism.controls.items():
            log.info("fidelity: the %s control", rule)
            control = ModelSeries((Checkpoint(rule, 0, folder),), **_loading(ctx))
            result = run_fidelity(control, organism_task(organism), out / f"control-{rule}", cfg)
            tables["controls"].append(result.steps.assign(series=f"control-{rule}"))
    _finish(out, tables, skipped)


def _loading(ctx: RunContext) -> dict[str, Any]:
    """How the run's series load their models (device, dtype), for a series built here."""
    first = next(iter(ctx.series.values()))
    return {"device": first.device, "dtype": first.dtype, "device_map": first.device_map}


def readings_stage(ctx: RunContext) -> None:
    """``run_readings`` per series into ``readings/<series>/``, on ``diff/<series>/activations``.
    A series whose tokenizer cannot write the patchscope's prompt skips the patchscope (the
    reason in ``skipped.json``); its other readings still run."""
    from ..activations.harvest import ActivationStore
    from ..organism.layout import Organism
    from ..readings.analysis import TABLES, run_readings
    from ..readings.patchscope import unknown_text

    section = ctx.config.readings
    if not section.enabled:
        return
    assert ctx.prompts is not None
    cfg = command_config(ReadingsConfig, section)
    organism = Organism.load(ctx.organism_root) if ctx.organism_root is not None else None
    out = ctx.stage_dir("readings")
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    skipped = {}
    for name, series in ctx.series.items():
        chosen = cfg
        unknown = (
            unknown_text(series.tokenizer(), cfg.patchscope.prompt) if "patchscope" in cfg.readings else []
        )
        if unknown:
            chosen = dataclasses.replace(cfg, readings=tuple(r for r in cfg.readings if r != "patchscope"))
            skipped[name] = (
                f"patchscope: the prompt has text the tokenizer does not know ({unknown}); "
                "set readings.patchscope.prompt"
            )
        log.info("readings %s: %s", name, ", ".join(chosen.readings))
        store = ActivationStore.load(ctx.stage_dir("diff") / name / "activations")
        regime = name if organism is not None else None
        result = run_readings(series, ctx.prompts, out / name, chosen, organism, regime, store)
        for table_name, frame in result.tables.items():
            tables[table_name].append(frame.assign(series=name))
    _finish(out, tables, skipped)


def transition_stage(ctx: RunContext) -> None:
    """The transition reading of every series from the earlier stages' tables, with the
    base SAE's FVU drift (and its interval) computed here."""
    from ..activations.harvest import ActivationStore
    from ..dictionaries.sae import TrainedSAE
    from ..organism.layout import Organism
    from ..organism.personas import RULE_LEARNED
    from .result import RunResult
    from .transition import SIGNAL_COLUMNS, change_point, fvu_drift, point_row, signals_of

    section = ctx.config.transition
    if not section.enabled:
        return
    run = RunResult.load(ctx.out)
    organism = Organism.load(ctx.organism_root) if ctx.organism_root is not None else None
    sae_info = ctx.stage_dir("dictionaries") / "info.json"
    sae = None
    if sae_info.is_file():
        sae_dir, hook = base_sae(ctx)
        sae = TrainedSAE.load(sae_dir).sae
    signals, points = [], []
    for name in ctx.series:
        drift = pd.DataFrame()
        if sae is not None:
            store = ActivationStore.load(ctx.stage_dir("diff") / name / "activations")
            drift = fvu_drift(sae, store, hook, section.n_resamples, section.confidence, section.seed)
        probes = (
            pd.DataFrame(organism.manifest["regimes"].get(name, {}).get("probe", [])) if organism else None
        )
        rows = signals_of(name, run.tables, drift, probes, section.confidence)
        signals.append(rows)
        point = change_point(rows)
        points.append(point_row(name, point, _behavioural_step(run, organism, name, RULE_LEARNED)))
    out = ctx.stage_dir("transition")
    frames = [f for f in signals if len(f)]
    write_parquet(
        out / "signals.parquet",
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SIGNAL_COLUMNS)),
    )
    write_parquet(out / "change_points.parquet", pd.DataFrame(points))


def _behavioural_step(run: RunResult, organism: Organism | None, name: str, learned: float) -> int | None:
    """Where the behaviour changes kind: for a regime rewarded for a rule, the first step whose
    rule accuracy interval lies above ``learned``; else the selection stage's behavioural
    transition (most answers match no persona)."""
    entry = organism.manifest["regimes"].get(name, {}) if organism is not None else {}
    if entry.get("config", {}).get("answer") == "rule":
        rows = run.behaviour[run.behaviour["regime"] == name].sort_values("step")
        passed = rows[rows["rule_accuracy_lo"] > learned]
        return None if passed.empty else int(passed["step"].iloc[0])
    transition = run.tables.get("selection/transition", pd.DataFrame())
    rows = transition[transition["series"] == name] if "series" in transition else transition.iloc[0:0]
    step = rows["behavioural_step"].iloc[0] if len(rows) and "behavioural_step" in rows else None
    return None if step is None or pd.isna(step) else int(step)
