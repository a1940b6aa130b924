"""``rlinterp run``: the whole analysis of one or more checkpoint series as a list of named,
resumable stages over one output directory.

A stage is a function of a ``RunContext`` that writes under ``<out>/<stage name>/``; the
built-in ones, in order: ``diff`` (harvest, weight/activation/output diffs per series),
``dictionaries`` (a base SAE, its FVU drift, feature-card tables), then ``tracking``,
``selection`` and ``circuits`` (``pipeline.stages``: the commands of those names per series,
reading the run's base SAE), ``fidelity`` (reasoning fidelity, proxy against gold reward
and drift, on a reasoning organism or a series given a task), ``readings`` (the readings
that need no dictionary, on the diff stage's activations) and ``transition`` (one reading
over the signals of the analysis stages, ``pipeline.transition``). The stages are declared
in one ordered tuple, ``STAGES``, each naming the config sections its results depend on; a
new stage is a new entry there and a new section field of ``RunConfig``.

Layout of ``<out>/`` (claimed through ``rundir`` as kind ``rlinterp.run``, once the config,
the checkpoint folders and a prompt file are checked and before anything is computed):

- ``.run.json``: the claim, written first and kept: kind ``rlinterp.run``, the config's
  fingerprint (one hash per section), the config, and once the series are known the
  digests of the weights read; a directory claimed by another config or other weights is
  refused, never mixed, and a section added to rlinterp since simply runs;
- ``stages/<name>.json``: a finished stage (its fingerprint, wall ``seconds`` and
  ``cpu_seconds``); a stage whose marker matches is skipped on resume;
- ``diff/<series>/``: one ``run_diff`` output per series (regime);
- ``dictionaries/``: see ``dictionaries_stage``;
- ``report.html``, ``report.md``: rendered from the files above (always re-rendered);
- ``manifest.json``: written last; its presence marks the run finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..activations.prompts import PromptSet
from ..circuits.metrics import BehaviourPrompts
from ..core import rundir
from ..core.artifacts import environment_versions, read_json_object, sha256_file, write_json
from ..core.output import progress_bars
from ..dictionaries.sae import sae_hook_on
from ..errors import RlinterpError
from ..models.forms import enclosing_organism, organism_root
from ..models.series import ModelSeries
from ..models.spec import SeriesSpec, steps_selection
from ..selection.personas import PersonaSplit
from .config import (
    RunConfig,
    RunContext,
    config_from_dict,
    fingerprint,
    to_dict,
)
from .sections import command_config
from .stages import (
    check_fidelity_task,
    circuits_stage,
    fidelity_stage,
    readings_stage,
    selection_stage,
    tracking_stage,
    transition_stage,
)

if TYPE_CHECKING:
    from .result import RunResult

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Stage:
    """One named step of the pipeline."""

    name: str
    """Folder name under the run directory, and the name in logs and markers."""
    run: Callable[[RunContext], None]
    """Computes the stage's results and writes them under ``ctx.stage_dir(name)``."""
    sections: tuple[str, ...]
    """Config sections its results depend on (with those of the stages before it)."""


# -- the run directory ---------------------------------------------------------------------


def _entries() -> tuple[str, ...]:
    """Everything a run directory holds besides its manifest and claim."""
    return (*(s.name for s in STAGES), "stages", "report.html", "report.md", "figures")


def _check_inputs(ctx: RunContext) -> None:
    """Record the weights the run reads; refuse to resume on other weights at the same paths.
    The digests are read from the weight files themselves, for every kind of series (an
    organism's manifest says what its weights were when it was built, not what they are)."""
    digests: dict[str, list[list[object]]] = {
        name: [[c.label, c.step, _weights_digest(c.path)] for c in series]
        for name, series in ctx.series.items()
    }
    recorded = rundir.read_record(ctx.out, rundir.RUN).get("inputs")
    if recorded is not None and recorded != digests:
        before = {
            (name, str(row[0])): row[-1]
            for name, rows in (recorded.items() if isinstance(recorded, dict) else [])
            for row in rows
            if isinstance(row, list) and row
        }
        changed = [
            f"{name}/{row[0]}"
            for name, rows in digests.items()
            for row in rows
            if before.get((name, str(row[0]))) != row[-1]
        ]
        raise RlinterpError(
            f"{ctx.out} holds results for other weights at the same checkpoint paths (changed: "
            f"{', '.join(changed[:4]) or 'the series'}); choose another output directory or pass --force"
        )
    organism = str(ctx.organism_root.resolve()) if ctx.organism_root else None
    rundir.annotate(
        ctx.out, rundir.RUN, {"inputs": digests, "series": list(ctx.series), "organism": organism}
    )


def _weights_digest(path: Path) -> str:
    """The sha256 of each weight file of a checkpoint folder, joined (one file: its sha256,
    the value an organism's manifest records)."""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    return ",".join(sha256_file(f) for f in files)


# -- stages --------------------------------------------------------------------------------


def check(config: RunConfig) -> RunContext:
    """What can be checked before the run claims its directory: the checkpoints (in any
    form ``rlinterp diff --series`` takes, resolved by ``SeriesSpec``), a finished
    organism's regimes and steps, that a missing organism can be built where asked, and the
    prompts (a file, or the persona texts of the organism the series comes from). The
    organism itself is built (if missing) by ``prepare``, after the claim."""
    s, p = config.series, config.prompts
    ctx = RunContext(config=config, out=Path(config.out))
    if s.organism is None:
        if organism_root(s.checkpoints) is not None:
            raise RlinterpError(
                f"series.checkpoints names the organism {s.checkpoints[0]}; give it as series.organism "
                "(--series DIR) to analyse its regimes"
            )
        ctx.series[s.name] = _checked(SeriesSpec(**_spec_fields(config)).load(), s.name)
    elif _finished(Path(s.organism)):
        _organism_series(ctx, Path(s.organism))
    else:
        rundir.require_claimable(s.organism, rundir.ORGANISM)  # built there after the run's claim
    if p.source == "organism":
        root = ctx.organism_root if s.organism is not None else enclosing_organism(_named_paths(config))
        if s.organism is None and root is None:
            raise RlinterpError(
                "prompts.source = 'organism' takes the persona texts of the organism the checkpoints come "
                "from, and these come from none; give a prompt file (--prompts-source FILE)"
            )
        if root is not None:
            ctx.prompts = _budgeted(PromptSet.from_organism(root), config)
    else:
        ctx.prompts = _budgeted(PromptSet.from_file(p.source), config)
    _check_fit(ctx)
    check_fidelity_task(config)
    return ctx


def _budgeted(prompts: PromptSet, config: RunConfig) -> PromptSet:
    """The first ``prompts.max_prompts`` prompts, refused if the cut drops every text of a
    persona the selection stage would analyse (or leaves one too few to fit)."""
    kept = _first(prompts, config.prompts.max_prompts)
    label, selection = config.selection.label, config.selection
    if selection.enabled and label in prompts.labels and kept is not prompts:
        lost = sorted(set(prompts.labels[label]) - set(kept.labels[label]))
        if lost:
            raise RlinterpError(
                f"prompts.max_prompts = {config.prompts.max_prompts} keeps the first {len(kept)} texts, "
                f"which hold no {label} {', '.join(map(repr, lost))}; raise --prompts-max-prompts or put "
                "every persona's texts early in the file"
            )
        try:
            PersonaSplit.make(kept.labels[label], selection.held_out_fraction, selection.seed)
        except RlinterpError as e:
            raise RlinterpError(f"prompts.max_prompts = {config.prompts.max_prompts} leaves {e}") from e
    return kept


def _check_fit(ctx: RunContext) -> None:
    """What the stages read, checked against the series before the claim: every prompt
    (and circuits prompt and target) in the tokenizer's vocabulary, and a given selection
    dictionary reading a hook of the models' width. A series still to build (the organism)
    is checked as its stages start."""
    config = ctx.config
    behaviour = None
    if config.circuits.enabled and config.circuits.prompts is not None:
        behaviour = BehaviourPrompts.from_jsonl(config.circuits.prompts).spread(config.circuits.max_prompts)
    for series in ctx.series.values():
        tokenizer = series.tokenizer()
        if ctx.prompts is not None:
            ctx.prompts.check_vocabulary(tokenizer)
        if behaviour is not None:
            behaviour.encode(tokenizer)
        if config.selection.enabled and config.selection.dictionary is not None:
            sae_hook_on(series, config.selection.dictionary, config.selection.hook)


def prepare(ctx: RunContext) -> RunContext:
    """The context of a checked run (``check``) with the organism built if it was missing,
    its regimes' series and its prompts."""
    from ..organism.build import build_organism  # the builder: only when it is missing

    s = ctx.config.series
    if s.organism is None or ctx.organism_root is not None:
        return ctx  # everything was checked before the claim
    root = Path(s.organism)
    log.info("building the %s organism (seed %d) in %s", s.preset, s.seed, root)
    _organism_series(ctx, build_organism(root, s.preset, s.seed).root)
    if ctx.prompts is None:  # ``check`` refused the organism source without an organism
        ctx.prompts = _budgeted(PromptSet.from_organism(root), ctx.config)
    _check_fit(ctx)
    return ctx


def _spec_fields(config: RunConfig) -> dict[str, Any]:
    s, c = config.series, config.compute
    return {
        "series": tuple(s.checkpoints),
        "base": s.base,
        "steps": s.steps,
        "device": c.device,
        "dtype": c.dtype,
        "device_map": c.device_map,
    }


def _named_paths(config: RunConfig) -> list[str]:
    return [*config.series.checkpoints, *([config.series.base] if config.series.base else [])]


def _organism_series(ctx: RunContext, root: Path) -> None:
    """The series of a finished organism's regimes (``series.regimes``, else every one: RL
    regimes in build order, then the planted positive control(s), e.g. ``novel``), each cut
    to ``series.steps``."""
    from ..organism.layout import Organism

    s, c = ctx.config.series, ctx.config.compute
    organism = Organism.load(root)
    built = [r["name"] for r in organism.manifest["config"]["regimes"]]
    built += [r for r in organism.regimes if r not in built]
    unknown = [r for r in s.regimes if r not in organism.regimes]
    if unknown:
        raise RlinterpError(
            f"series.regimes names {unknown}, which the organism in {root} does not have (it has "
            f"{', '.join(organism.regimes)}); fix --series-regimes"
        )
    kwargs: dict[str, Any] = {"device": c.device, "dtype": DTYPES[c.dtype], "device_map": c.device_map}
    ctx.organism_root = organism.root
    for regime in s.regimes or tuple(r for r in built if r in organism.regimes):
        series = ModelSeries.from_organism(organism.root, regime, **kwargs)
        series = series.select(**steps_selection(s.steps)) if s.steps else series
        ctx.series[regime] = _checked(series, regime)


def _checked(series: ModelSeries, name: str) -> ModelSeries:
    if len(series) < 2:
        raise RlinterpError(
            f"series {name} has no RL checkpoint besides its base ({series.base.path}); give the "
            "checkpoints to compare with it"
        )
    return series


def _finished(root: Path) -> bool:
    return (root / "manifest.json").is_file() and not (root / ".building").exists()


def _first(prompts: PromptSet, n: int | None) -> PromptSet:
    """The first ``n`` prompts (``prompts.max_prompts``; None: all)."""
    if n is None or n >= len(prompts):
        return prompts
    return dataclasses.replace(
        prompts,
        texts=prompts.texts[:n],
        response_starts=prompts.response_starts[:n] if prompts.response_starts else None,
        labels={k: v[:n] for k, v in prompts.labels.items()},
    )


def diff_stage(ctx: RunContext) -> None:
    """``run_diff`` per series into ``diff/<series>/`` (a finished one is kept)."""
    from ..activations.harvest import ActivationStore, HarvestConfig
    from ..diff.analysis import run_diff
    from ..models.executor import make_executor

    harvest_cfg = command_config(HarvestConfig, ctx.config.harvest)
    executor = make_executor(ctx.config.compute.executor_config())
    assert ctx.prompts is not None
    done: list[ActivationStore] = []  # every series shares the base: harvested once
    for name, series in ctx.series.items():
        out = ctx.stage_dir("diff") / name
        if not (out / "manifest.json").is_file():
            log.info("diff %s: %d checkpoints against the base", name, len(series) - 1)
            run_diff(series, ctx.prompts, out, harvest_cfg, executor=executor, reuse=done)
        done.append(ActivationStore.load(out / "activations"))


def dictionaries_stage(ctx: RunContext) -> None:
    from .base_sae import run_dictionaries

    if ctx.config.dictionaries.enabled:
        run_dictionaries(ctx)


STAGES = (
    Stage("diff", diff_stage, ("series", "prompts", "harvest", "compute")),
    Stage("dictionaries", dictionaries_stage, ("dictionaries",)),
    Stage("tracking", tracking_stage, ("tracking",)),
    Stage("selection", selection_stage, ("selection",)),
    Stage("circuits", circuits_stage, ("circuits",)),
    Stage("fidelity", fidelity_stage, ("fidelity",)),
    Stage("readings", readings_stage, ("readings",)),
    Stage("transition", transition_stage, ("transition",)),
)
"""The pipeline, in order. A stage's fingerprint is that of its sections and those of the
stages before it, so a changed budget reruns its stage and the ones after, never those
before. A stage comes after every stage whose results it reads. ``fidelity`` reads no
earlier stage's results (it samples each checkpoint itself) and ``readings`` only the diff
stage's; both come after the dictionaries and the analyses (minutes), so a change to either
budget never reruns those. ``readings`` is the cheaper (about 30 CPU-s on the default
organism) and comes after fidelity: a change to its budget never reruns the fidelity
stage's generations. ``transition`` reads the tracking, selection and circuits tables and
the base SAE, and comes last: it is cheap too (the FVU drift's resamples), and a run made
before it existed resumes by running only it."""


# -- running -------------------------------------------------------------------------------


def _stage_fingerprint(config: RunConfig, upto: int) -> dict[str, str]:
    prints = fingerprint(config)
    names = {n for stage in STAGES[: upto + 1] for n in stage.sections}
    return {n: prints[n] for n in sorted(names)}


def run_pipeline(config: RunConfig, progress: bool | None = None, *, force: bool = False) -> Path:
    """Run every stage of ``config`` (resuming finished ones), render the report; return
    the run directory. ``progress``: a bar over the stages, and every bar rlinterp's
    libraries draw (None: only on a terminal; otherwise one log line per stage; False:
    none, ``core.output.progress_bars``). ``force``: recompute a directory that holds
    another run (its outputs are removed first)."""
    # A refused or failed start leaves no claim behind; bars (ours and our libraries') as asked.
    with rundir.kept_as_found(config.out), progress_bars(progress) as show:
        return _run_pipeline(config, show, force=force)


def _run_pipeline(config: RunConfig, show: bool, *, force: bool) -> Path:
    from .report import write_reports

    started = time.perf_counter()
    out = Path(config.out)
    ctx = check(config)
    if not force:  # a damaged stage marker is refused before the claim writes anything
        for marker in sorted((out / "stages").glob("*.json")):
            read_json_object(marker, STAGE_REMEDY)
    entries = _entries()
    record = {"config": to_dict(config)}
    rundir.claim(out, rundir.RUN, fingerprint(config), entries, resumable=entries, force=force, record=record)
    previous_threads = torch.get_num_threads()
    if config.compute.threads:
        torch.set_num_threads(config.compute.threads)
    try:
        with _timed() as preparing:  # the organism build, when it is missing
            prepare(ctx)
        _check_inputs(ctx)
        with tqdm(total=len(STAGES), desc="rlinterp run", unit="stage", disable=not show) as bar:
            for i, stage in enumerate(STAGES):
                bar.set_postfix_str(stage.name)
                _run_stage(ctx, stage, _stage_fingerprint(config, i))
                bar.update()
        write_reports(out)
    finally:
        torch.set_num_threads(previous_threads)
    rundir.finish(
        out,  # last: marks the run finished
        rundir.RUN,
        {
            "fingerprint": fingerprint(config),
            "config": to_dict(config),
            "series": list(ctx.series),
            "stages": [s.name for s in STAGES],
            "seconds": round(time.perf_counter() - started, 1),
            "prepare": preparing,  # the organism build, when it was missing
            "versions": environment_versions(),
        },
    )
    return out


def run(
    config: RunConfig | str | os.PathLike[str] | None = None,
    *,
    out: str | None = None,
    progress: bool | None = None,
    force: bool = False,
    **sections: dict[str, Any],
) -> RunResult:
    """Run the pipeline and return its result: the notebook entry point.

    ``config`` is a ``RunConfig``, a TOML file or None (the defaults); ``out`` and keyword
    sections override it, e.g. ``run("tiny.toml", dictionaries={"n_tokens": 20_000})``.
    Keys and types are checked as in a TOML file."""
    from .result import RunResult

    if isinstance(config, RunConfig):
        data = to_dict(config)
    elif config is not None:
        path = Path(config)
        if not path.is_file():
            raise RlinterpError(f"config file {path} does not exist")
        data = tomllib.loads(path.read_text())
    else:
        data = {}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    if out is not None:
        data["out"] = out
    root = run_pipeline(config_from_dict(data), progress=progress, force=force)
    return RunResult.load(root)


STAGE_REMEDY = "delete it to run the stage again"
"""What a damaged ``stages/<name>.json`` message says to do."""


def _run_stage(ctx: RunContext, stage: Stage, expected: dict[str, str]) -> None:
    marker = ctx.out / "stages" / f"{stage.name}.json"
    if marker.is_file() and read_json_object(marker, STAGE_REMEDY).get("fingerprint") == expected:
        log.info("stage %s: finished earlier, kept", stage.name)
        return
    with _timed() as spent:
        stage.run(ctx)
    write_json(marker, {"fingerprint": expected, **spent})
    log.info("stage %s: done in %.1f s (%.1f CPU-s)", stage.name, spent["seconds"], spent["cpu_seconds"])


@contextmanager
def _timed() -> Iterator[dict[str, float]]:
    """Wall and CPU seconds of the block (this process, all its threads, and finished child
    processes), filled in when it ends: the CPU time says what a stage costs on a machine
    shared with other work, where the wall time does not."""
    spent: dict[str, float] = {}
    begin, cpu = time.perf_counter(), _cpu_seconds()
    yield spent
    spent["seconds"] = round(time.perf_counter() - begin, 1)
    spent["cpu_seconds"] = round(_cpu_seconds() - cpu, 1)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
