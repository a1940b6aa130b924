"""The ``rlinterp`` command line: thin subcommands over the library.

Every command's options are generated from its dataclass in ``commands`` (``core.options``),
so a default lives once, in its config. Errors the user can fix (``RlinterpError`` and bad
arguments) print one line, ``rlinterp <command>: error: <what to do>``, and exit with
status 2; no traceback. Parsing and checking the options import no heavy library: each
command imports what it computes with once its options are checked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import commands as c
from .core import options, rundir
from .core.artifacts import OS_REMEDIES, os_error
from .core.output import progress_bars, warnings_once
from .errors import RlinterpError
from .models.forms import is_checkpoint, is_run_dir
from .models.spec import SeriesSpec

if TYPE_CHECKING:
    from .activations.prompts import PromptSet
    from .organism.layout import Organism


class _OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Version(argparse.Action):
    """``--version``: the installed version, read only when asked (``importlib.metadata`` is
    slow to import)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib import metadata

        parser.exit(message=f"rlinterp {metadata.version('rlinterp')}\n")


def _start() -> None:
    """What every command sets up once its options are checked, before it computes."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings_once()  # dependencies warn on every model they load
    for chatty in ("choreographer", "kaleido", "logistro"):  # figure export's browser driver
        logging.getLogger(chatty).setLevel(logging.WARNING)
    import transformers

    # One bar per saved checkpoint drowns the build's own progress.
    transformers.utils.logging.disable_progress_bar()


def _prompts(spec: str, series: SeriesSpec) -> PromptSet:
    """``--prompts`` / ``--texts``: a file, or ``organism`` (the series' organism's texts)."""
    from .activations.prompts import PromptSet

    if spec == "organism":
        return PromptSet.from_organism(series.require_organism("'organism' as prompts"))
    return PromptSet.from_file(spec)


def _table(frame: Any, digits: int = 4) -> str:
    return str(frame.to_string(index=False, float_format=lambda x: f"{x:.{digits}g}"))


def _organism(cmd: c.OrganismCommand) -> None:
    _start()
    from .organism.behaviour import format_table
    from .organism.build import build_organism

    out = cmd.out or cmd.build.default_dir
    organism = build_organism(out, preset=cmd.build.preset, seed=cmd.build.seed, force=cmd.force)
    sys.stdout.write(f"organism in {organism.root}\n{format_table(organism.behaviour())}\n")


def _diff(cmd: c.DiffCommand) -> None:
    _start()
    import pandas as pd

    from .diff.analysis import run_diff
    from .diff.report import write_report
    from .models.executor import make_executor

    series, prompts = cmd.series.load(), _prompts(cmd.prompts, cmd.series)
    executor = make_executor(cmd.executor)
    result = run_diff(series, prompts, cmd.out, cmd.harvest, force=cmd.force, executor=executor)
    write_report(result, Path(cmd.out) / "report.html")
    summary = _table(pd.DataFrame(result.summary()))
    sys.stdout.write(f"diff in {cmd.out} (report: {Path(cmd.out) / 'report.html'})\n{summary}\n")


def _train(cmd: c.TrainCommand) -> None:
    _start()
    from .activations.harvest import ActivationStore
    from .dictionaries.train import train_dictionary

    store = ActivationStore.load(cmd.store)
    models = list(cmd.models) if cmd.models else None
    out = train_dictionary(
        store, cmd.method, cmd.hook, cmd.out, cmd.dictionary, cmd.model, cmd.base, models, force=cmd.force
    )
    sys.stdout.write(f"{cmd.method} in {out}\n")


def _eval(cmd: c.EvalCommand) -> None:
    _start()
    from .dictionaries.train import evaluate_dictionary
    from .models.executor import make_executor

    table = evaluate_dictionary(
        cmd.dictionary, downstream=cmd.downstream, executor=make_executor(cmd.executor)
    )
    sys.stdout.write(_table(table) + "\n")


def _circuits(cmd: c.CircuitsCommand) -> None:
    # An organism metric needs the organism the checkpoints come from: found before anything runs.
    what = f"--metric {cmd.metric} (an organism metric; for other series give --prompts FILE.jsonl)"
    root = cmd.series.require_organism(what) if cmd.source.prompts is None else None
    _start()
    import pandas as pd

    from .circuits.analysis import run_circuits
    from .circuits.metrics import BehaviourMetric, BehaviourPrompts
    from .circuits.report import write_circuits_report

    series = cmd.series.load()
    if cmd.source.prompts is not None:
        metric = BehaviourMetric(cmd.metric, cmd.source.kind)
        prompts = BehaviourPrompts.from_jsonl(cmd.source.prompts)
    else:
        from .circuits.organism_metrics import organism_behaviour

        assert root is not None
        metric, prompts = organism_behaviour(root, cmd.metric)
    result = run_circuits(series, metric, prompts, cmd.out, cmd.circuits, force=cmd.force)
    write_circuits_report(result, Path(cmd.out) / "report.html")
    rows = pd.DataFrame(result.steps())[["label", "step", "change", "carriers", "overlap", "verdict"]]
    sys.stdout.write(
        f"circuits in {cmd.out} (report: {Path(cmd.out) / 'report.html'})\n{rows.to_string(index=False)}\n"
    )


def _organism_regime(series: SeriesSpec) -> tuple[Organism | None, str | None]:
    """The organism and regime a series was typed as (``--series ORGANISM --regime R``), else
    ``(None, None)``: the behaviour columns an analysis adds on the organism."""
    from .organism.layout import Organism

    root = series.organism
    if series.regime is None or root is None:
        return None, None
    return Organism.load(root), series.regime


def _selection(cmd: c.SelectionCommand) -> None:
    _start()
    import json

    from .pipeline.verdict import regime_verdict
    from .selection.analysis import CHOICE_COLUMNS, run_selection

    series, texts = cmd.series.load(), _prompts(cmd.texts, cmd.series)
    organism, regime = _organism_regime(cmd.series)
    result = run_selection(series, texts, cmd.out, cmd.selection, organism, regime, force=cmd.force)
    behavioural = json.loads((Path(cmd.out) / "summary.json").read_text())["behavioural_transition"]
    table = result.step_table()
    columns = ["label", "step", "index", "index_lo", "index_hi", "side", "layer", "dictionary_share"]
    shown = table[[*columns, *(c for c in CHOICE_COLUMNS.values() if c in table.columns)]]
    transition = result.index.transition
    verdict = (
        f"transition at step {transition['step']} (interval {transition['step_lo']}-{transition['step_hi']}) "
        f"in block {transition['layer']}"
        if transition["found"]
        else "no transition"
    )
    sys.stdout.write(
        f"selection in {cmd.out} (explanation hook {result.hook}); {verdict}; "
        f"behavioural transition: {behavioural}\n"
        + shown.to_string(index=False, float_format=lambda x: f"{x:.3f}")
        + f"\nanswer: {regime_verdict(table)}\n"
    )


def _track(cmd: c.TrackCommand) -> None:
    _start()
    from .tracking.analysis import run_track
    from .tracking.report import write_tracking_report
    from .tracking.result import summary_text

    series, prompts = cmd.series.load(), _prompts(cmd.prompts, cmd.series)
    result = run_track(series, prompts, cmd.dictionary, cmd.out, cmd.track, force=cmd.force)
    write_tracking_report(result, Path(cmd.out) / "report.html")
    sys.stdout.write(
        f"track in {cmd.out} (report: {Path(cmd.out) / 'report.html'})\n{summary_text(result)}\n"
    )


def _readings(cmd: c.ReadingsCommand) -> None:
    _start()
    from .readings.analysis import run_readings
    from .readings.report import write_readings_report

    series, prompts = cmd.series.load(), _prompts(cmd.prompts, cmd.series)
    organism, regime = _organism_regime(cmd.series)
    result = run_readings(series, prompts, cmd.out, cmd.readings, organism, regime, force=cmd.force)
    report = Path(cmd.out) / "report.html"
    write_readings_report(result, report)
    amplified = _table(result.tables["amplified"].drop(columns=["label"], errors="ignore"), digits=3)
    sys.stdout.write(f"readings in {cmd.out} (report: {report})\n{amplified}\n")


def _fidelity(cmd: c.FidelityCommand) -> None:
    from .fidelity.source import series_task

    task = series_task(cmd.task, cmd.series.organism, cmd.series.regime)  # files checked first
    _start()
    from .fidelity.analysis import run_fidelity
    from .fidelity.report import STEP_COLUMNS, write_fidelity_report

    result = run_fidelity(cmd.series.load(), task, cmd.out, cmd.fidelity, force=cmd.force)
    write_fidelity_report(result, Path(cmd.out) / "report.html")
    shown = result.steps[["label", "step", *(c for c in STEP_COLUMNS if c in result.steps)]]
    lines = "".join(f"{line}\n" for line in result.reading())
    sys.stdout.write(
        f"fidelity in {cmd.out} (report: {Path(cmd.out) / 'report.html'})\n{_table(shown, 3)}\n{lines}"
    )


def _run(cmd: c.RunCommand, args: argparse.Namespace) -> None:
    from .pipeline.config import RunConfig, config_template, load_config, with_overrides

    config = load_config(cmd.config) if cmd.config else RunConfig()
    given = options.given(args, args.config_options)
    out = given.pop("out", None)
    overrides: dict[str, dict[str, Any]] = {}
    for path, value in given.items():  # ``section.key`` (``key`` dotted for a sub-table)
        section, _, key = path.partition(".")
        overrides.setdefault(section, {})[key] = value
    if cmd.series:
        typed = overrides.setdefault("series", {})
        typed |= {k: v for k, v in _series_shortcut(cmd.series).items() if k not in typed}
    config = with_overrides(config, overrides, out=out)
    if cmd.print_config:
        sys.stdout.write(config_template(config))
        return
    _start()
    from .pipeline.result import RunResult, summary_text
    from .pipeline.runner import run_pipeline

    root = run_pipeline(config, progress=False if cmd.quiet else cmd.progress, force=cmd.force)
    sys.stdout.write(summary_text(RunResult.load(root)))


def _series_shortcut(paths: tuple[str, ...]) -> dict[str, object]:
    """``--series DIR`` (an organism, built there if missing) or your checkpoints in any form
    ``rlinterp diff`` takes (a run directory, or checkpoint folders, base first): the
    ``[series]`` keys it sets, those of the other form back at their defaults (a config
    file's organism preset does not apply to checkpoints); keys typed as options win."""
    from .pipeline.sections import SeriesConfig

    default = SeriesConfig()
    one = Path(paths[0])
    if len(paths) == 1 and not is_checkpoint(one) and not is_run_dir(one):
        return {"organism": paths[0], "checkpoints": (), "base": None, "name": default.name}
    return {
        "organism": None,
        "checkpoints": tuple(paths),
        "preset": default.preset,
        "seed": default.seed,
        "regimes": (),
    }


def _figures(cmd: c.FiguresCommand) -> None:
    _start()
    from .pipeline.figures import export_figures
    from .pipeline.result import RunResult

    run = RunResult.load(cmd.run_dir)
    rundir.read_finished(cmd.run_dir, rundir.RUN, "finish it with `rlinterp run` first")
    paths = export_figures(run, _out(cmd) or Path(cmd.run_dir) / "figures", cmd.format)
    sys.stdout.write("".join(f"{p}\n" for p in paths))


@dataclass(frozen=True)
class Command:
    """One subcommand."""

    name: str
    """What the user types: ``rlinterp <name>``."""
    options: type
    """Its options' dataclass (``commands``): every option is generated from it."""
    help: str
    """One line in ``rlinterp --help``."""
    run: Callable[..., None]
    """What it runs on the checked options (``run`` also reads its config options)."""


COMMANDS = (
    Command(
        "organism",
        c.OrganismCommand,
        "build the persona model organism (base model + RL checkpoints)",
        _organism,
    ),
    Command(
        "diff",
        c.DiffCommand,
        "weight, activation and output diffs of a checkpoint series, with a report",
        _diff,
    ),
    Command(
        "circuits",
        c.CircuitsCommand,
        "which components carry a behaviour change: patching and attribution per step",
        _circuits,
    ),
    Command(
        "selection",
        c.SelectionCommand,
        "persona features, the selection-versus-novelty index, its transition, causal checks",
        _selection,
    ),
    Command(
        "track",
        c.TrackCommand,
        "follow a dictionary's latents across RL steps, on fixed and on-policy tokens",
        _track,
    ),
    Command(
        "readings",
        c.ReadingsCommand,
        "readings without a dictionary: amplified sampling, patchscope, PCA and topics of the changes",
        _readings,
    ),
    Command(
        "fidelity",
        c.FidelityCommand,
        "reasoning fidelity, proxy against gold reward, and drift per RL step, with intervals",
        _fidelity,
    ),
    Command("run", c.RunCommand, "the whole pipeline (diffs, dictionaries, ...) with one report", _run),
    Command("figures", c.FiguresCommand, "export a run's figures for a paper (pdf, svg or png)", _figures),
)
DICTIONARIES = (
    Command("train", c.TrainCommand, "train one dictionary on an activation store", _train),
    Command("eval", c.EvalCommand, "evaluate a trained dictionary on every model of its store", _eval),
)
"""The actions of ``rlinterp dictionaries``."""


def _add(commands: argparse._SubParsersAction, command: Command) -> argparse.ArgumentParser:
    doc = " ".join((command.options.__doc__ or "").split())
    parser = commands.add_parser(command.name, help=command.help, description=doc.replace("%", "%%"))
    added = options.add_options(parser, command.options)
    parser.set_defaults(command=command, added=added)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="rlinterp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, nargs=0, help="show rlinterp's version and exit")
    commands = parser.add_subparsers(dest="name", required=True, parser_class=_OneLineParser)
    for command in COMMANDS[:2]:
        _add(commands, command)
    dictionaries = commands.add_parser(
        "dictionaries", help="SAEs, diff-SAEs and crosscoders on harvested activations"
    )
    actions = dictionaries.add_subparsers(dest="action", required=True, parser_class=_OneLineParser)
    for command in DICTIONARIES:
        _add(actions, command)
    for command in COMMANDS[2:]:
        run = _add(commands, command)
        if command.name == "run":
            run.set_defaults(config_options=_run_config_options(run))
    return parser


def _run_config_options(run: argparse.ArgumentParser) -> list[options.Option]:
    """Every key of the run config as ``--<section>-<key>`` (and ``--out``)."""
    from .pipeline.config import RunConfig

    return options.add_options(run, RunConfig)


def _out(cmd: object) -> Path | None:
    """The directory a command writes (its --out, or where it writes without one)."""
    if isinstance(cmd, c.OrganismCommand):
        return Path(cmd.out or cmd.build.default_dir)
    if isinstance(cmd, c.FiguresCommand):
        return Path(cmd.out or Path(cmd.run_dir) / "figures")
    out = getattr(cmd, "out", None)
    return Path(out) if out is not None else None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any Hugging Face library is imported
    parser = _parser()
    args = parser.parse_args(argv)
    command: Command = args.command
    try:
        cmd = options.from_args(command.options, args, args.added)
        if command.name == "run":
            _run(cmd, args)  # ``run_pipeline`` keeps its --out as found itself
        else:  # a refused or failed start leaves no claim; --quiet silences every bar
            with rundir.kept_as_found(_out(cmd)), progress_bars(False if cmd.quiet else None):
                command.run(cmd)
    except RlinterpError as e:
        sys.stderr.write(f"rlinterp {args.name}: error: {e}\n")
        return 2
    except OSError as e:  # a write of a library's own (a model, an SAE): the disk, not a bug
        if e.errno not in OS_REMEDIES:
            raise
        sys.stderr.write(f"rlinterp {args.name}: error: {os_error(e, doing='cannot use')}\n")
        return 2
    return 0


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())
