"""The sections of the ``rlinterp run`` config, one per concern and stage, each a frozen
dataclass whose fields are the section's TOML keys (``[harvest]``, ``[tracking.sampling]``)
and command-line options (``--harvest-batch-size``, ``--tracking-sampling-seed``).

A stage's section subclasses its command's config (the same fields, docstrings and
validation), adding ``enabled`` and redeclaring the budgets ``rlinterp run`` uses by
default, with the reason in the docstring (it becomes the comment in
``configs/default.toml``): ``HarvestSection(HarvestConfig)``,
``DictionariesSection(DictionaryConfig)``, ``TrackingSection(TrackConfig)``,
``SelectionSection(SelectionConfig)``, ``CircuitsSection(CircuitsConfig)``,
``FidelitySection(TaskConfig, FidelityConfig)``, ``ReadingsSection(ReadingsConfig)``; a
stage hands its command the plain config (``command_config``). ``ComputeSection`` and
``TransitionSection`` have no command of their own (the transition reads the other stages'
tables). Torch-free, like every config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..activations.config import HarvestConfig, SamplingConfig
from ..circuits.config import METRICS as ORGANISM_METRICS
from ..circuits.config import SHARED_METRICS, CircuitsConfig, MetricPrompts
from ..core.rundir import folder_name_problem
from ..dictionaries.config import DictionaryConfig, StagewiseConfig
from ..errors import RlinterpError
from ..fidelity.config import FidelityConfig, TaskConfig
from ..models.config import DtypeName, ExecutorConfig
from ..models.spec import STEPS
from ..organism.config import BuildConfig, Preset
from ..readings.config import AmplifyConfig, ReadingsConfig, TopicsConfig
from ..selection.config import SelectionConfig
from ..tracking.config import SourceName, TrackConfig


@dataclass(frozen=True)
class SeriesConfig:
    """Which models: an organism (built if missing) and its regimes, or your checkpoints."""

    organism: str | None = BuildConfig().default_dir
    """Organism directory; built there (with ``preset`` and ``seed``) if it is not finished."""
    preset: Preset = BuildConfig.preset
    """Organism preset to build when ``organism`` does not hold a finished one."""
    seed: int = BuildConfig.seed
    """Organism seed to build with."""
    regimes: tuple[str, ...] = ()
    """Organism regimes to analyse, each a series of its own (empty: every regime)."""
    checkpoints: tuple[str, ...] = ()
    """Your checkpoints instead of ``organism``, as ``rlinterp diff --series`` takes them: a
    training run directory (``checkpoint-<N>/`` folders, full or PEFT adapters), or
    checkpoint folders, base first (unless ``base``)."""
    base: str | None = None
    """The base model folder of ``checkpoints`` (default: the first folder, the run
    directory's step-0 folder, or the local base its adapters name)."""
    steps: str | None = None
    """Only some checkpoints: every:<k> (every k-th, and the last) or a list of steps like
    100,200,500 (default: all)."""
    name: str = "checkpoints"
    """Name of the series given by ``checkpoints`` (its folder and column in the report)."""

    def __post_init__(self) -> None:
        if (self.organism is None) == (not self.checkpoints):
            raise RlinterpError(
                'give exactly one of series.organism or series.checkpoints (set organism = "" '
                "in the config, or pass --series, to use checkpoint folders)"
            )
        if self.steps is not None and not STEPS.match(self.steps.replace(" ", "")):
            raise RlinterpError(
                f"series.steps {self.steps!r} is neither every:<k> nor a list like 100,200,500; "
                "fix --series-steps"
            )
        if self.checkpoints:
            # What only an organism has, said of checkpoints, would be silently ignored.
            given = [
                key
                for key, default in (("preset", BuildConfig.preset), ("seed", BuildConfig.seed))
                if getattr(self, key) != default
            ] + (["regimes"] if self.regimes else [])
            if given:
                raise RlinterpError(
                    f"series.{given[0]} applies to an organism, but the series is checkpoints; "
                    f"drop --series-{given[0]} (or set series.organism instead of checkpoints)"
                )
        elif self.base is not None:
            raise RlinterpError(
                f"series.base applies to checkpoints, but the series is the organism {self.organism}; "
                "drop --series-base (an organism's base is its own)"
            )
        elif self.name != "checkpoints":
            raise RlinterpError(
                "series.name names a checkpoint series; an organism's series are named after its "
                "regimes, so drop --series-name"
            )
        problem = (
            "is what every series calls its base model"
            if self.name == "base"
            else folder_name_problem(self.name)
        )
        if problem:
            raise RlinterpError(f"series.name {self.name!r} {problem}; choose another with --series-name")


@dataclass(frozen=True)
class PromptsConfig:
    """The tokens every model is run on."""

    source: str = "organism"
    """``organism`` (the organism's persona texts) or a ``.txt`` / ``.jsonl`` prompt file."""
    max_prompts: int | None = None
    """Use only the first this many prompts (None: all). All by default: the default
    organism's 600 persona texts (about 23k kept tokens per model) cost the diff stage about
    15 CPU-s for every regime together, and the selection stage needs every persona."""

    def __post_init__(self) -> None:
        if self.max_prompts is not None and self.max_prompts < 1:
            raise RlinterpError(f"prompts.max_prompts must be positive, got {self.max_prompts}")


@dataclass(frozen=True)
class HarvestSection(HarvestConfig):
    """Which activations are harvested, and in what batches."""

    def __post_init__(self) -> None:
        if self.hooks == ():  # ``hooks = []``, how configs written before said "every block"
            object.__setattr__(self, "hooks", None)
        super().__post_init__()


@dataclass(frozen=True)
class DictionariesSection(DictionaryConfig):
    """Dictionaries: a base SAE (FVU drift and feature cards) and optional per-regime ones."""

    n_tokens: int = 100_000
    """Training tokens per dictionary (the budget), repeats included. 100k is about four
    passes over the default organism's tokens and trains in a few CPU-seconds; the base SAE
    then leaves about 1% of the base's variance unexplained."""
    device: str | None = None  # type: ignore[assignment]
    """Where the dictionaries train (None: ``compute.device``)."""
    enabled: bool = True
    """Train dictionaries at all."""
    hook: str | None = None
    """Hook to train on (None: the hook whose activations changed most at the last step)."""
    methods: tuple[Literal["diff-sae", "crosscoder"], ...] = ()
    """Extra dictionaries per regime, base vs last checkpoint: ``diff-sae``, ``crosscoder``."""
    top_k: int = 8
    """Top-activating contexts kept per latent and model (feature cards)."""
    cards: int = 24
    """Latents that get a feature card (those whose activity changed most)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise RlinterpError(f"dictionaries.top_k must be positive, got {self.top_k}")
        if self.cards < 0:
            raise RlinterpError(f"dictionaries.cards must be >= 0, got {self.cards}")

    def dictionary_config(self, device: str) -> DictionaryConfig:
        """The base SAE's config: the section's knobs, on its device (else ``device``)."""
        return command_config(DictionaryConfig, self, device=self.device or device)


@dataclass(frozen=True)
class ComputeSection:
    """Where the models and dictionaries run."""

    device: str = "cpu"
    """Torch device (``cuda`` on a GPU machine)."""
    dtype: DtypeName = "float32"
    """Model dtype."""
    threads: int | None = 1
    """Torch CPU threads (None: torch's default). 1 by default: the organism's matrices are
    too small to split, and on a shared 2-core machine two threads spent 20x the CPU time
    of one on the diff stage (they spin while waiting for each other); raise it for real
    models on a CPU."""
    device_map: str | None = None
    """Split each model over the GPUs in view (``auto``, ``balanced``) instead of ``device``."""
    executor: Literal["local", "ray"] = field(
        default=ExecutorConfig.kind, metadata={"aliases": ("executor",)}
    )
    """Where per-checkpoint work runs: this process, or one Ray task per checkpoint."""
    address: str | None = field(default=ExecutorConfig.address, metadata={"aliases": ("address",)})
    """Ray cluster (``auto``, ``ray://<head>:10001``; None: RAY_ADDRESS or a local one)."""
    task_cpus: float = ExecutorConfig.num_cpus
    """CPUs each Ray task requests."""
    task_gpus: float = ExecutorConfig.num_gpus
    """GPUs each Ray task requests (with device = "cuda")."""

    def executor_config(self) -> ExecutorConfig:
        """The executor these settings ask for."""
        return ExecutorConfig(
            kind=self.executor, address=self.address, num_cpus=self.task_cpus, num_gpus=self.task_gpus
        )


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
class CircuitsSection(MetricPrompts, CircuitsConfig):
    """Circuit diffs (``rlinterp circuits``): which components carry each behaviour metric's
    change, per series and step, by cross-model patching and attribution."""

    metrics: tuple[str, ...] = SHARED_METRICS
    """Organism metrics to measure on every regime (``answer``, ``persona``, ``shortcut``,
    ``rule``, ``marker``); ignored when ``prompts`` is given."""
    regime_metric: bool = True
    """Also measure each organism regime on the metric of what it was made to do (``rule``
    for a regime rewarded for the rule, ``marker`` for a planted one): the one metric its
    change must show in, one more metric for those regimes only."""
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


@dataclass(frozen=True)
class FidelitySection(TaskConfig, FidelityConfig):
    """Reasoning fidelity, reward overfitting and drift (``rlinterp fidelity``) per series, on
    each checkpoint's own samples. It measures a reasoning organism's regimes (on the
    organism's questions, format and rewards, with its faithful and decorative controls) and
    any series given ``prompts`` (with ``reasoning`` and ``answer`` for the reasoning metrics);
    other series are skipped, with the reason in the report."""

    max_prompts: int | None = 32
    """Prompts analysed per series, evenly spaced (None: all). 32 of the reasoning-tiny
    organism's 64 questions: every checkpoint re-answers each sample after every cut of its
    reasoning, edit and filler (about ten greedy generations a sample); ``rlinterp fidelity``
    takes them all."""
    controls: bool = True
    """Also measure a reasoning organism's faithful and decorative controls: the metrics'
    known answers, shown beside the regimes (a control is one checkpoint, so it costs about
    what one RL step does)."""
    enabled: bool = True
    """Run the fidelity stage."""

    def __post_init__(self) -> None:
        TaskConfig.__post_init__(self)
        FidelityConfig.__post_init__(self)


@dataclass(frozen=True)
class ReadingsSection(ReadingsConfig):
    """Readings without a dictionary (``rlinterp readings``): amplified sampling, principal
    components of the activation differences with their patchscope and lens readings, and
    topics of the changed tokens, per series, on the diff stage's activations."""

    amplify: AmplifyConfig = field(
        default_factory=lambda: AmplifyConfig(
            checkpoints="last", sampling=SamplingConfig(samples_per_prompt=1)
        )
    )
    """Amplified sampling. The last checkpoint, one answer per question: each amplified
    checkpoint samples every alpha (about 2 CPU-s per alpha for 256 answers of the organism),
    the last shows where RL went, and the default organism asks 128 questions;
    ``rlinterp readings`` amplifies every step with four answers each."""
    topics: TopicsConfig = field(default_factory=lambda: TopicsConfig(checkpoints="last"))
    """Topics of the last checkpoint's changed tokens (each checkpoint costs a forward pass over
    the prompts, like the diff stage's KL pass)."""
    batch_size: int = ReadingsConfig.batch_size
    """Unused by the run: its readings read the diff stage's activations and harvest none
    (``rlinterp readings`` harvests in batches of this many prompts)."""
    enabled: bool = True
    """Run the readings stage."""


@dataclass(frozen=True)
class TransitionSection:
    """One transition reading over the signals of the stages before it
    (``pipeline.transition``): per step each signal with its interval and its test against
    its control, and a change point combining them."""

    n_resamples: int = 500
    """Resamples of the prompts for the FVU drift's interval."""
    confidence: float = 0.9
    """Coverage of the intervals (the index's own is ``selection.index.confidence``)."""
    seed: int = 0
    """Seed of the resampling."""
    enabled: bool = True
    """Run the transition stage."""

    def __post_init__(self) -> None:
        if self.n_resamples < 10:
            raise RlinterpError(f"transition.n_resamples must be at least 10, got {self.n_resamples}")
        if not 0 < self.confidence < 1:
            raise RlinterpError(f"transition.confidence must lie in (0, 1), got {self.confidence}")


def command_config(cls: type, section: Any, **changes: Any) -> Any:
    """The command's own config ``cls`` from a section that subclasses it (the section's
    extra fields dropped), with ``changes``."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)}
    return cls(**(values | changes))
