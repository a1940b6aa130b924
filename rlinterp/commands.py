"""What each ``rlinterp`` subcommand takes: one frozen dataclass per command, made of the
library's own configs, from which ``cli`` generates the options (``core.options``).

A default lives in the config it belongs to (``HarvestConfig.batch_size``,
``SeriesSpec.dtype``, ...); the fields declared here are those only the command has: where
its inputs come from and where it writes. A config marked ``FLAT`` lends its fields as
options of their own names (``--batch-size``); any other nested config prefixes them with
its field's name (``--sampling-seed``), as ``rlinterp run`` prefixes them with the section
(``--tracking-sampling-seed``).

Torch-free: ``rlinterp --help`` and every argument error answer without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .activations.config import HarvestConfig
from .circuits.config import CircuitsConfig, MetricPrompts
from .core.options import FLAT
from .dictionaries.config import DictionaryConfig, Method
from .fidelity.config import FidelityConfig, TaskConfig
from .models.config import ExecutorConfig
from .models.spec import SeriesSpec
from .organism.config import BuildConfig
from .readings.config import ReadingsConfig
from .selection.config import SelectionConfig
from .tracking.config import TrackConfig


@dataclass(frozen=True, kw_only=True)
class Output:
    """What every command shares: how much it prints besides its results."""

    quiet: bool = False
    """No progress bars, rlinterp's or its libraries' (SAELens, transformers); without a
    terminal on stderr there are none anyway. Log lines and the results are still printed."""


@dataclass(frozen=True, kw_only=True)
class OrganismCommand(Output):
    """Build the persona model organism: a base model and RL checkpoint series in a weak and
    a strong regime, with a behaviour table."""

    build: BuildConfig = field(default_factory=BuildConfig, metadata=FLAT)
    out: str | None = None
    """Output directory (default: artifacts/organism/<preset>-seed<seed>)."""
    force: bool = False
    """Rebuild from scratch, even if --out holds an organism (of these or other inputs)."""


@dataclass(frozen=True, kw_only=True)
class DiffCommand(Output):
    """Diff every RL checkpoint of a series against its base: Parquet tables, summary.json
    and a self-contained report.html in --out."""

    series: SeriesSpec = field(metadata=FLAT)
    prompts: str
    """A .txt (one prompt per line) or .jsonl file, or 'organism' (the organism's persona texts)."""
    out: str
    """Output directory."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig, metadata=FLAT)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig, metadata=FLAT)
    force: bool = False
    """Recompute from scratch, even if --out holds a diff (of these or other inputs)."""


@dataclass(frozen=True, kw_only=True)
class TrainCommand(Output):
    """Train one dictionary on an activation store."""

    store: str
    """An activation store (e.g. <diff out>/activations)."""
    method: Method
    """What to train: an SAE on one model, a diff-SAE on one model's difference from the
    base, or a crosscoder over several models."""
    hook: str
    """A harvested hook, e.g. blocks.1.hook_resid_post."""
    out: str
    """Output directory."""
    model: str | None = None
    """Model label of an sae / diff-sae (default: the store's base for an sae, its last model
    for a diff-sae)."""
    base: str | None = None
    """Reference model of a diff-sae (default: the store's base)."""
    models: tuple[str, ...] | None = None
    """Crosscoder models, base first (default: the store's base and last model)."""
    dictionary: DictionaryConfig = field(default_factory=DictionaryConfig, metadata=FLAT)
    force: bool = False
    """Retrain from scratch, even if --out holds a dictionary (of these or other inputs)."""


@dataclass(frozen=True, kw_only=True)
class EvalCommand(Output):
    """Evaluate a trained dictionary on every model of its store."""

    dictionary: str
    """A trained dictionary folder."""
    downstream: bool = True
    """Splice the dictionary into every model for cross-entropy and KL (--no-downstream skips it)."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig, metadata=FLAT)


@dataclass(frozen=True, kw_only=True)
class CircuitsCommand(Output):
    """Cross-model activation patching, attribution patching, direct logit attribution and
    attention-pattern change for a behaviour metric: Parquet tables, summary.json and
    report.html in --out."""

    series: SeriesSpec = field(metadata=FLAT)
    metric: str
    """An organism metric (answer, persona, shortcut), or a name for the metric of --prompts."""
    source: MetricPrompts = field(default_factory=MetricPrompts, metadata=FLAT)
    out: str
    """Output directory."""
    circuits: CircuitsConfig = field(default_factory=CircuitsConfig, metadata=FLAT)
    force: bool = False
    """Recompute even if --out holds a circuits run of other inputs."""


@dataclass(frozen=True, kw_only=True)
class SelectionCommand(Output):
    """Persona directions and latents, the selection-versus-novelty index per step and block
    with its interval and side (selection, novelty, undecided), the transition step and its
    block, the dictionary explanation, and steering/ablation checks."""

    series: SeriesSpec = field(metadata=FLAT)
    texts: str
    """Persona-labelled JSONL (prompt, response, persona), or 'organism' (its persona texts)."""
    out: str
    """Output directory."""
    selection: SelectionConfig = field(default_factory=SelectionConfig, metadata=FLAT)
    force: bool = False
    """Recompute even if --out holds a selection analysis of other inputs."""


@dataclass(frozen=True, kw_only=True)
class TrackCommand(Output):
    """Trajectories, stage-wise drift, matches and lineage of every latent of --dictionary
    over the series, with controls; Parquet tables, summary.json and report.html in --out."""

    series: SeriesSpec = field(metadata=FLAT)
    prompts: str = "organism"
    """A .txt or .jsonl file, or 'organism' (the organism's persona texts)."""
    dictionary: str
    """A trained SAE or crosscoder folder."""
    out: str
    """Output directory."""
    track: TrackConfig = field(default_factory=TrackConfig, metadata=FLAT)
    force: bool = False
    """Recompute even if --out holds a track run of other inputs."""


@dataclass(frozen=True, kw_only=True)
class ReadingsCommand(Output):
    """Readings that need no dictionary: sample the RL change amplified (base + alpha
    (checkpoint - base)), read the mean activation differences and their principal
    components by patchscope and lens, and group the tokens whose next-token distribution
    changed most into topics; Parquet tables and report.html in --out."""

    series: SeriesSpec = field(metadata=FLAT)
    prompts: str
    """A .txt or .jsonl file, or 'organism' (the organism's persona texts)."""
    out: str
    """Output directory."""
    readings: ReadingsConfig = field(default_factory=ReadingsConfig, metadata=FLAT)
    force: bool = False
    """Recompute even if --out holds readings of other inputs."""


@dataclass(frozen=True, kw_only=True)
class FidelityCommand(Output):
    """Reasoning fidelity (early answering, mistake insertion, filler gap, reasoning-mediated
    share, consistency, legibility), reward overfitting (proxy against gold, Goodhart onset,
    Gao fit) and drift per RL step, on each checkpoint's own samples, with intervals:
    Parquet tables, summary.json and report.html in --out."""

    series: SeriesSpec = field(metadata=FLAT)
    task: TaskConfig = field(default_factory=TaskConfig, metadata=FLAT)
    out: str
    """Output directory."""
    fidelity: FidelityConfig = field(default_factory=FidelityConfig, metadata=FLAT)
    force: bool = False
    """Recompute even if --out holds a fidelity analysis of other inputs."""


@dataclass(frozen=True, kw_only=True)
class RunCommand(Output):
    """Run every stage on one or more series, resuming finished stages in the output
    directory, and write report.html / report.md there. Settings come from --config (TOML;
    see --print-config) and the options below, which override it."""

    config: str | None = None
    """A TOML run config."""
    series: tuple[str, ...] | None = None
    """Shortcut: an organism dir (built if missing), or checkpoint folders, base first."""
    print_config: bool = False
    """Print the resulting config as documented TOML and stop."""
    progress: bool | None = None
    """Progress bars (default: only on a terminal; else one log line per stage); --quiet
    is --no-progress."""
    force: bool = False
    """Recompute from scratch, even if the output directory holds another run."""


@dataclass(frozen=True, kw_only=True)
class FiguresCommand(Output):
    """Write each report figure of a finished run as a standalone static file in the
    publication theme (needs kaleido and a Chromium)."""

    run_dir: str = field(metadata={"positional": True})
    """A run directory (`rlinterp run --out`)."""
    format: Literal["pdf", "svg", "png"] = "pdf"
    """File format of the figures."""
    out: str | None = None
    """Output folder (default: RUN_DIR/figures): absent, empty, or a figure folder, whose
    figures the export replaces."""
