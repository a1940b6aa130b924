"""The ``rlinterp`` command line: thin subcommands over the library.

Errors the user can fix (``RlinterpError`` and bad arguments) print one line,
``rlinterp <command>: error: <what to do>``, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd
import transformers

from .activations.harvest import ActivationStore, HarvestConfig
from .activations.prompts import PromptSet
from .dictionaries.train import METHODS, DictionaryConfig, evaluate_dictionary, train_dictionary
from .diff.analysis import run_diff
from .diff.report import write_report
from .errors import RlinterpError
from .models.executor import Executor, ExecutorConfig, make_executor
from .models.series import DTYPES, ModelSeries
from .organism import PRESETS, Organism, build_organism, format_table
from .selection.analysis import CHOICE_COLUMNS, SelectionConfig, run_selection
from .selection.index import IndexConfig


class _OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _organism(args: argparse.Namespace) -> None:
    out = args.out or Path("artifacts") / "organism" / f"{args.preset}-seed{args.seed}"
    organism = build_organism(out, preset=args.preset, seed=args.seed, force=args.force)
    sys.stdout.write(f"organism in {organism.root}\n{format_table(organism.behaviour())}\n")


def _steps(text: str) -> dict[str, object]:
    """``--steps``: ``every:K`` or a comma-separated list of steps, as ``ModelSeries.select``
    keyword arguments."""
    try:
        if text.startswith("every:"):
            return {"every": int(text.removeprefix("every:"))}
        return {"steps": [int(step) for step in text.split(",") if step.strip()]}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither every:<k> nor a list like 100,200,500"
        ) from None


def _diff(args: argparse.Namespace) -> None:
    series = ModelSeries.from_spec(
        args.series,
        regime=args.regime,
        base=args.base,
        device=args.device,
        dtype=DTYPES.get(args.dtype),  # auto: None
        on_identical=args.on_identical,
        device_map=args.device_map,
    )
    if args.steps is not None:
        series = series.select(**args.steps)
    if args.prompts == "organism":
        root = Path(args.series[0])
        prompts = PromptSet.from_organism(root.parent if root.name == "manifest.json" else root)
    else:
        prompts = PromptSet.from_file(args.prompts)
    config = HarvestConfig(
        hooks=tuple(args.hooks) if args.hooks else None,
        batch_size=args.batch_size,
        include_bos=args.include_bos,
        response_only=args.response_only,
        store_dtype=args.store_dtype,
        max_tokens=args.max_tokens,
        token_seed=args.token_seed,
    )
    result = run_diff(series, prompts, args.out, config, force=args.force, executor=_executor(args))
    write_report(result, Path(args.out) / "report.html")
    summary = pd.DataFrame(result.summary()).to_string(index=False, float_format=lambda x: f"{x:.4g}")
    sys.stdout.write(f"diff in {args.out} (report: {Path(args.out) / 'report.html'})\n{summary}\n")


def _executor(args: argparse.Namespace) -> Executor:
    """The executor of ``--executor``, ``--address``, ``--task-cpus``, ``--task-gpus``."""
    return make_executor(
        ExecutorConfig(
            kind=args.executor, address=args.address, num_cpus=args.task_cpus, num_gpus=args.task_gpus
        )
    )


def _dictionaries_train(args: argparse.Namespace) -> None:
    cfg = DictionaryConfig(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(DictionaryConfig)}
    )
    store = ActivationStore.load(args.store)
    out = train_dictionary(
        store, args.method, args.hook, args.out, cfg, args.model, args.base, args.models, force=args.force
    )
    sys.stdout.write(f"{args.method} in {out}\n")


def _dictionaries_eval(args: argparse.Namespace) -> None:
    table = evaluate_dictionary(args.dictionary, downstream=not args.no_downstream, executor=_executor(args))
    sys.stdout.write(table.to_string(index=False, float_format=lambda x: f"{x:.4g}") + "\n")


def _circuits(args: argparse.Namespace) -> None:
    from .circuits.analysis import CircuitsConfig, run_circuits
    from .circuits.metrics import BehaviourMetric, BehaviourPrompts

    series = ModelSeries.from_spec(
        args.series, regime=args.regime, device=args.device, dtype=DTYPES[args.dtype]
    )
    if args.prompts is not None:
        metric, prompts = BehaviourMetric(args.metric, args.kind), BehaviourPrompts.from_jsonl(args.prompts)
    else:
        from .circuits.organism_metrics import organism_behaviour

        root = Path(args.series[0])
        root = root.parent if root.name == "manifest.json" else root
        if len(args.series) > 1 or not (root / "manifest.json").is_file():
            raise RlinterpError(
                "--metric names an organism metric; for other series give --prompts FILE.jsonl"
            )
        metric, prompts = organism_behaviour(root, args.metric)
    try:
        config = CircuitsConfig(
            batch_size=args.batch_size,
            exact_prompts=args.exact_prompts,
            exact_components=args.exact_components,
            attribution_steps=args.attribution_steps,
            attribution_interpolation=args.attribution_interpolation,
        )
    except ValueError as e:
        raise RlinterpError(str(e)) from e
    result = run_circuits(series, metric, prompts, args.out, config, force=args.force)
    rows = pd.DataFrame(result.steps())[["label", "step", "change", "carriers", "overlap", "verdict"]]
    sys.stdout.write(
        f"circuits in {args.out} (report: {Path(args.out) / 'report.html'})\n{rows.to_string(index=False)}\n"
    )


def _add_circuits(commands: argparse._SubParsersAction) -> None:
    from .circuits.result import CircuitsConfig

    circuits = commands.add_parser(
        "circuits",
        help="which components carry a behaviour change: patching and attribution per step",
        description="Cross-model activation patching, attribution patching, direct logit attribution "
        "and attention-pattern change for a behaviour metric: Parquet tables, summary.json and "
        "report.html in --out.",
    )
    circuits.add_argument("--series", nargs="+", required=True, help="as for `rlinterp diff`")
    circuits.add_argument("--regime", default=None, help="which regime of an organism (e.g. weak, strong)")
    circuits.add_argument(
        "--metric",
        required=True,
        help="an organism metric (answer, persona, shortcut), or a name for the metric of --prompts",
    )
    circuits.add_argument(
        "--prompts",
        default=None,
        help="a .jsonl of {prompt, positive, negative?, corrupted?} rows (default: the organism's)",
    )
    circuits.add_argument(
        "--kind",
        choices=("logit_diff", "logprob"),
        default="logit_diff",
        help="metric of --prompts: positive minus negative logits, or log-prob of positive",
    )
    circuits.add_argument("--out", type=Path, required=True, help="output directory")
    circuits.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default: 16)")
    circuits.add_argument(
        "--exact-prompts", type=int, default=64, help="prompts for exact patching (default: 64)"
    )
    circuits.add_argument(
        "--force", action="store_true", help="recompute even if --out holds a circuits run of other inputs"
    )
    circuits.add_argument(
        "--exact-components",
        type=int,
        default=None,
        help="exact-patch only the N components with the largest attribution (default: all)",
    )
    circuits.add_argument(
        "--attribution-steps",
        type=int,
        default=CircuitsConfig.attribution_steps,
        help="interpolation steps of attribution patching: 1 is the plain gradient estimate, more "
        f"integrate the gradient (default: {CircuitsConfig.attribution_steps})",
    )
    circuits.add_argument(
        "--attribution-interpolation",
        choices=("component", "site"),
        default=CircuitsConfig.attribution_interpolation,
        help="with more than 1 step, move one component at a time (converges to exact patching) or "
        f"one site (layer attention, MLP, ...) at a time, cheaper (default: "
        f"{CircuitsConfig.attribution_interpolation})",
    )
    circuits.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    circuits.add_argument(
        "--dtype", choices=tuple(DTYPES), default="float32", help="model dtype (default: float32)"
    )
    circuits.set_defaults(run=_circuits)


def _selection(args: argparse.Namespace) -> None:
    series = ModelSeries.from_spec(args.series, regime=args.regime, device=args.device)
    root = Path(args.series[0])
    organism_root = root.parent if root.name == "manifest.json" else root
    texts = (
        PromptSet.from_organism(organism_root)
        if args.texts == "organism"
        else PromptSet.from_file(args.texts)
    )
    organism = None
    if args.regime is not None and (organism_root / "manifest.json").is_file():
        organism = Organism.load(organism_root)
    cfg = SelectionConfig(
        label=args.label,
        hook=args.hook,
        dictionary=args.dictionary,
        decision_hook=args.decision_hook,
        index=IndexConfig(n_bootstrap=args.n_bootstrap, seed=args.seed),
        seed=args.seed,
    )
    result = run_selection(series, texts, args.out, cfg, organism, args.regime if organism else None)
    behavioural = json.loads((Path(args.out) / "summary.json").read_text())["behavioural_transition"]
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
        f"selection in {args.out} (hook {result.hook}); {verdict}; behavioural transition: {behavioural}\n"
        + shown.to_string(index=False, float_format=lambda x: f"{x:.3f}")
        + "\n"
    )


def _track(args: argparse.Namespace) -> None:
    from .activations.onpolicy import SamplingConfig
    from .dictionaries.stagewise import StagewiseConfig
    from .tracking.analysis import TrackConfig, run_track
    from .tracking.result import summary_text

    cfg = TrackConfig(
        sources=tuple(args.sources),
        sampling=SamplingConfig(
            samples_per_prompt=args.samples_per_prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
        ),
        batch_size=args.batch_size,
        stagewise=StagewiseConfig(n_tokens=args.stage_tokens),
        independent_tokens=args.independent_tokens,
    )
    series = ModelSeries.from_spec(args.series, regime=args.regime, device=args.device)
    result = run_track(series, _prompts(args.prompts, args.series), args.dictionary, args.out, cfg)
    sys.stdout.write(
        f"track in {args.out} (report: {Path(args.out) / 'report.html'})\n{summary_text(result)}\n"
    )


def _prompts(spec: str, series: list[str]) -> PromptSet:
    if spec == "organism":
        root = Path(series[0])
        return PromptSet.from_organism(root.parent if root.name == "manifest.json" else root)
    return PromptSet.from_file(spec)


def _run(args: argparse.Namespace) -> None:
    from .pipeline.config import (
        RunConfig,
        cli_options,
        config_template,
        load_config,
        parse_cli_value,
        with_overrides,
    )
    from .pipeline.result import RunResult, summary_text
    from .pipeline.runner import run_pipeline

    config = load_config(args.config) if args.config else RunConfig()
    overrides: dict[str, dict[str, object]] = {}
    for section, name, tp, _ in cli_options():
        given = getattr(args, f"{section}_{name}")
        if given is not None:
            value = (
                given
                if isinstance(given, bool)
                else parse_cli_value(given, tp, f"{section}-{name}".replace(".", "-"))
            )
            overrides.setdefault(section, {})[name] = value
    if args.series:
        overrides.setdefault("series", {}).update(_series_shortcut(args.series))
    for name in ("executor", "address"):  # shortcuts for --compute-executor, --compute-address
        if getattr(args, name) is not None:
            overrides.setdefault("compute", {})[name] = getattr(args, name)
    config = with_overrides(config, overrides, out=str(args.out) if args.out else None)
    if args.print_config:
        sys.stdout.write(config_template(config))
        return
    root = run_pipeline(config, progress=args.progress)
    sys.stdout.write(summary_text(RunResult.load(root)))


def _series_shortcut(paths: list[str]) -> dict[str, object]:
    """``--series DIR`` (an organism) or ``--series BASE CKPT...`` (checkpoint folders)."""
    if len(paths) == 1 and not (Path(paths[0]) / "config.json").is_file():
        return {"organism": paths[0], "checkpoints": ()}
    return {"organism": None, "checkpoints": tuple(paths)}


def _figures(args: argparse.Namespace) -> None:
    from .pipeline.figures import export_figures
    from .pipeline.result import RunResult

    paths = export_figures(
        RunResult.load(args.run_dir), args.out or Path(args.run_dir) / "figures", args.format
    )
    sys.stdout.write("".join(f"{p}\n" for p in paths))


def _add_run(commands: argparse._SubParsersAction) -> None:
    from .pipeline.config import cli_options, metavar

    run = commands.add_parser(
        "run",
        help="the whole pipeline (diffs, dictionaries, ...) with one report",
        description="Run every stage on one or more series, resuming finished stages in the output "
        "directory, and write report.html / report.md there. Settings come from --config (TOML; "
        "see --print-config) and the options below, which override it.",
    )
    run.add_argument("--config", type=Path, default=None, help="a TOML run config")
    run.add_argument(
        "--series",
        nargs="+",
        default=None,
        help="shortcut: an organism dir (built if missing), or checkpoint folders, base first",
    )
    run.add_argument("--out", type=Path, default=None, help="shortcut for the run's output directory")
    run.add_argument(
        "--executor", choices=("local", "ray"), default=None, help="shortcut for --compute-executor"
    )
    run.add_argument("--address", default=None, help="shortcut for --compute-address (auto, ray://...)")
    run.add_argument(
        "--print-config", action="store_true", help="print the resulting config as documented TOML and stop"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only on a terminal; else one log line per stage)",
    )
    for section, name, tp, help_text in cli_options():
        flag = f"--{section}-{name}".replace("_", "-").replace(".", "-")
        dest = f"{section}_{name}"
        if tp is bool:
            run.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif getattr(tp, "__origin__", None) is tuple:
            run.add_argument(flag, dest=dest, nargs="*", default=None, metavar=metavar(tp), help=help_text)
        else:
            run.add_argument(flag, dest=dest, default=None, metavar=metavar(tp), help=help_text)
    run.set_defaults(run=_run)

    figures = commands.add_parser(
        "figures",
        help="export a run's figures for a paper (pdf, svg or png)",
        description="Write each report figure of a finished run as a standalone static file in the "
        "publication theme (needs kaleido and a Chromium).",
    )
    figures.add_argument("run_dir", type=Path, help="a run directory (`rlinterp run --out`)")
    figures.add_argument("--format", choices=("pdf", "svg", "png"), default="pdf")
    figures.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/figures)")
    figures.set_defaults(run=_figures)


def _add_storage_and_executor(command: argparse.ArgumentParser) -> None:
    storage = command.add_argument_group("storage of the activation store")
    storage.add_argument(
        "--store-dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="dtype of the stored activations; bfloat16/float16 halve the bytes (default: float32)",
    )
    storage.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="token budget: store a seeded random sample of this many tokens (default: all)",
    )
    storage.add_argument("--token-seed", type=int, default=0, help="seed of the --max-tokens sample")
    _add_executor(command)


def _add_executor(command: argparse.ArgumentParser) -> None:
    scale = command.add_argument_group("where per-checkpoint work runs")
    scale.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one checkpoint after another here (default); ray: one Ray task per checkpoint "
        "(pip install 'rlinterp[ray]')",
    )
    scale.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto, or ray://<head>:10001 (default: RAY_ADDRESS, else a local cluster)",
    )
    scale.add_argument("--task-cpus", type=float, default=1.0, help="CPUs per Ray task (default: 1)")
    scale.add_argument(
        "--task-gpus", type=float, default=0.0, help="GPUs per Ray task (default: 0; use with --device cuda)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="rlinterp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    organism = commands.add_parser(
        "organism",
        help="build the persona model organism (base model + RL checkpoints)",
        description="Build the persona model organism: a base model and RL checkpoint "
        "series in a weak and a strong regime, with a behaviour table.",
    )
    organism.add_argument(
        "--preset", choices=PRESETS, default="default", help="size of the build (default: default)"
    )
    organism.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    organism.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: artifacts/organism/<preset>-seed<seed>)",
    )
    organism.add_argument(
        "--force",
        action="store_true",
        help="rebuild from scratch, even if --out holds an organism (of these or other inputs)",
    )
    organism.set_defaults(run=_organism)

    diff = commands.add_parser(
        "diff",
        help="weight, activation and output diffs of a checkpoint series, with a report",
        description="Diff every RL checkpoint of a series against its base: Parquet tables, "
        "summary.json and a self-contained report.html in --out.",
    )
    diff.add_argument(
        "--series",
        nargs="+",
        required=True,
        help="an organism dir (with --regime), a run dir with checkpoint-<N> (or step-<N>, "
        "global_step<N>, <N>) folders holding full checkpoints or PEFT adapters, or checkpoint "
        "folders (base first, unless --base)",
    )
    diff.add_argument(
        "--base",
        default=None,
        help="the base model folder (default: the first --series folder, a run's step-0 folder, "
        "or the local base its adapters name)",
    )
    diff.add_argument(
        "--steps",
        type=_steps,
        default=None,
        help="diff only some checkpoints: every:<k> (every k-th, and the last) or a list of steps "
        "like 100,200,500",
    )
    diff.add_argument(
        "--regime", default=None, help="which regime of an organism to diff (e.g. weak, strong)"
    )
    diff.add_argument(
        "--prompts", required=True, help="a .txt (one prompt per line) or .jsonl file, or 'organism'"
    )
    diff.add_argument("--out", type=Path, required=True, help="output directory")
    diff.add_argument(
        "--hooks", nargs="+", default=None, help="hook names (default: resid_post of every block)"
    )
    diff.add_argument(
        "--batch-size", type=int, default=32, help="prompts per batch and per shard (default: 32)"
    )
    diff.add_argument("--include-bos", action="store_true", help="keep the BOS position in statistics")
    diff.add_argument("--response-only", action="store_true", help="keep only response tokens")
    diff.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    diff.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="dtype the models run in (default: auto, the widest dtype the checkpoints store; "
        "float32 upcasts half-precision checkpoints)",
    )
    diff.add_argument(
        "--device-map",
        default=None,
        help="split each model over this machine's (or Ray task's) GPUs: auto, balanced "
        "(Hugging Face device maps; instead of --device)",
    )
    diff.add_argument(
        "--on-identical",
        choices=("warn", "error", "ignore"),
        default="warn",
        help="checkpoints holding byte-identical weights: warn (default), stop, or skip the check",
    )
    diff.add_argument(
        "--force",
        action="store_true",
        help="recompute from scratch, even if --out holds a diff (of these or other inputs)",
    )
    _add_storage_and_executor(diff)
    diff.set_defaults(run=_diff)

    dictionaries = commands.add_parser(
        "dictionaries", help="SAEs, diff-SAEs and crosscoders on harvested activations"
    )
    actions = dictionaries.add_subparsers(dest="action", required=True, parser_class=_OneLineParser)
    train = actions.add_parser("train", help="train one dictionary on an activation store")
    train.add_argument("--store", required=True, help="an activation store (e.g. <diff out>/activations)")
    train.add_argument("--method", choices=METHODS, required=True)
    train.add_argument("--hook", required=True, help="a harvested hook, e.g. blocks.1.hook_resid_post")
    train.add_argument("--out", type=Path, required=True, help="output directory")
    train.add_argument("--model", default=None, help="model label of an sae / diff-sae")
    train.add_argument(
        "--base", default=None, help="reference model of a diff-sae (default: the store's base)"
    )
    train.add_argument("--models", nargs="+", default=None, help="crosscoder models, base first")
    defaults = DictionaryConfig()
    train.add_argument(
        "--architecture", choices=("topk", "batchtopk", "jumprelu", "standard"), default=defaults.architecture
    )
    train.add_argument("--d-sae", type=int, default=defaults.d_sae, help="number of latents")
    train.add_argument("--k", type=int, default=defaults.k, help="active latents per token")
    train.add_argument("--n-tokens", type=int, default=defaults.n_tokens, help="training tokens")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--device", default=defaults.device, help="torch device (default: cpu)")
    train.add_argument(
        "--force",
        action="store_true",
        help="retrain from scratch, even if --out holds a dictionary (of these or other inputs)",
    )
    train.set_defaults(run=_dictionaries_train)
    evaluate = actions.add_parser("eval", help="evaluate a trained dictionary on every model of its store")
    evaluate.add_argument("--dictionary", type=Path, required=True)
    evaluate.add_argument("--no-downstream", action="store_true", help="skip splicing into the models")
    _add_executor(evaluate)
    evaluate.set_defaults(run=_dictionaries_eval)
    _add_circuits(commands)
    selection = commands.add_parser(
        "selection",
        help="persona features, the selection-versus-novelty index, its transition, causal checks",
        description="Persona directions and latents, the selection-versus-novelty index per step "
        "with a bootstrap interval, the transition step, and steering/ablation checks.",
    )
    selection.add_argument("--series", nargs="+", required=True, help="as for `rlinterp diff`")
    selection.add_argument("--regime", default=None, help="which regime of an organism")
    selection.add_argument(
        "--texts", required=True, help="persona-labelled JSONL (prompt, response, persona) or 'organism'"
    )
    selection.add_argument("--label", default="persona", help="the label naming each text's persona")
    selection.add_argument("--out", type=Path, required=True, help="output directory")
    selection.add_argument(
        "--hook",
        default=None,
        help="hook of the dictionary explanation (default: after the block the index names; "
        "the index reads every block)",
    )
    selection.add_argument(
        "--dictionary", default=None, help="a trained base SAE at --hook (default: train one)"
    )
    selection.add_argument(
        "--decision-hook",
        default=None,
        help="blocks.<i>.hook_resid_post where the persona-choice patch runs (default: the last block's)",
    )
    selection.add_argument("--n-bootstrap", type=int, default=500, help="bootstrap resamples (default: 500)")
    selection.add_argument("--seed", type=int, default=0)
    selection.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    selection.set_defaults(run=_selection)
    _track_parser(commands)
    _add_run(commands)
    return parser


def _track_parser(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    from .activations.onpolicy import SamplingConfig
    from .dictionaries.stagewise import StagewiseConfig
    from .tracking.analysis import SOURCES, TrackConfig

    track = commands.add_parser(
        "track",
        help="follow a dictionary's latents across RL steps, on fixed and on-policy tokens",
        description="Trajectories, stage-wise drift, matches and lineage of every latent of --dictionary "
        "over the series, with controls; Parquet tables, summary.json and report.html in --out.",
    )
    track.add_argument("--series", nargs="+", required=True, help="as for `rlinterp diff`")
    track.add_argument("--regime", default=None, help="which regime of an organism to track")
    track.add_argument("--prompts", default="organism", help="a .txt or .jsonl file, or 'organism' (default)")
    track.add_argument("--dictionary", type=Path, required=True, help="a trained SAE or crosscoder folder")
    track.add_argument("--out", type=Path, required=True, help="output directory")
    track.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="token sources")
    sampling, defaults = SamplingConfig(), TrackConfig()
    track.add_argument("--samples-per-prompt", type=int, default=sampling.samples_per_prompt)
    track.add_argument("--max-new-tokens", type=int, default=sampling.max_new_tokens)
    track.add_argument("--temperature", type=float, default=sampling.temperature)
    track.add_argument("--seed", type=int, default=sampling.seed, help="sampling seed")
    track.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="prompts per harvest batch"
    )
    track.add_argument(
        "--stage-tokens", type=int, default=StagewiseConfig().n_tokens, help="tokens per stage-wise fine-tune"
    )
    track.add_argument(
        "--independent-tokens",
        type=int,
        default=defaults.independent_tokens,
        help="tokens per independently trained SAE",
    )
    track.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    track.set_defaults(run=_track)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("choreographer", "kaleido", "logistro"):  # figure export's browser driver
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # One bar per saved checkpoint drowns the build's own progress.
    transformers.utils.logging.disable_progress_bar()
    try:
        args.run(args)
    except RlinterpError as e:
        sys.stderr.write(f"rlinterp {args.command}: error: {e}\n")
        return 2
    return 0


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())
