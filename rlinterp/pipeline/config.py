"""The configuration of ``rlinterp run``: frozen dataclasses that are the single source of
the TOML keys, the command-line options and their help.

A run config is one ``RunConfig`` made of sections (``[series]``, ``[prompts]``,
``[harvest]``, ``[dictionaries]``, ``[compute]``); every field carries a docstring, which
becomes the comment in ``config_template()`` and the ``--help`` text of its generated
option (``--<section>-<field>``, underscores as dashes). Later stages add their own
section with ``register_section``. A field whose type is itself a config dataclass (a
command's own config reused inside a section) is a sub-table, ``[section.field]``, with
options ``--<section>-<field>-<subfield>``; a section may subclass a command's config
(adding ``enabled`` and redeclaring budgets), and inherits its fields' docstrings.

Invariants:
- loading checks every key and type against the dataclasses: an unknown key or a wrong
  type is a one-line ``RlinterpError`` naming the key and the expected type;
- a loaded config is immutable; overrides make a new one (``with_overrides``);
- ``fingerprint(config)`` is a hash of everything that determines a run's results (the
  output directory and the device are not part of it).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..activations.config import HarvestConfig
from ..core import schema
from ..core.schema import field_docs as field_docs
from ..dictionaries.config import DictionaryConfig
from ..errors import RlinterpError
from ..models.config import DtypeName, ExecutorConfig
from ..organism.config import BuildConfig, Preset

if TYPE_CHECKING:
    from ..activations.prompts import PromptSet
    from ..models.series import ModelSeries


@dataclass(frozen=True)
class SeriesConfig:
    """Which models: an organism (built if missing) and its regimes, or checkpoint folders."""

    organism: str | None = BuildConfig().default_dir
    """Organism directory; built there (with ``preset`` and ``seed``) if it is not finished."""
    preset: Preset = BuildConfig.preset
    """Organism preset to build when ``organism`` does not hold a finished one."""
    seed: int = BuildConfig.seed
    """Organism seed to build with."""
    regimes: tuple[str, ...] = ()
    """Organism regimes to analyse, each a series of its own (empty: every regime)."""
    checkpoints: tuple[str, ...] = ()
    """Hugging Face checkpoint folders, base first (used instead of ``organism``)."""
    name: str = "checkpoints"
    """Name of the series given by ``checkpoints`` (its column in the report)."""

    def __post_init__(self) -> None:
        if (self.organism is None) == (not self.checkpoints):
            raise RlinterpError(
                'give exactly one of series.organism or series.checkpoints (set organism = "" '
                "in the config, or pass --series, to use checkpoint folders)"
            )
        if self.checkpoints and len(self.checkpoints) < 2:
            raise RlinterpError("series.checkpoints needs a base and at least one RL checkpoint")


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
class RunConfig:
    """One run of the pipeline (``rlinterp run``)."""

    out: str = "artifacts/run/default-seed0"
    """Output directory of the run (report, tables, stage folders)."""
    series: SeriesConfig = field(default_factory=SeriesConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    harvest: HarvestSection = field(default_factory=HarvestSection)
    dictionaries: DictionariesSection = field(default_factory=DictionariesSection)
    compute: ComputeSection = field(default_factory=ComputeSection)
    extra: tuple[tuple[str, Any], ...] = ()
    """Sections registered by later stages: ``(name, config)`` pairs (see ``register_section``)."""

    def section(self, name: str) -> Any:
        """A section by name, built-in or registered."""
        if name in {f.name for f in dataclasses.fields(self)} - {"out", "extra"}:
            return getattr(self, name)
        return dict(self.extra).get(name, _REGISTERED[name]())


BUILTIN_SECTIONS = ("series", "prompts", "harvest", "dictionaries", "compute")
_REGISTERED: dict[str, type] = {}
"""Sections added by later stages (name -> frozen dataclass with defaults)."""


def register_section(name: str, cls: type) -> None:
    """Add a config section for a stage (its frozen dataclass must have defaults for
    every field). It becomes ``[name]`` in TOML and ``--name-<field>`` on the CLI."""
    if name in BUILTIN_SECTIONS or name in ("out", "extra"):
        raise ValueError(f"{name!r} is a built-in config key")
    _REGISTERED[name] = cls


def sections() -> dict[str, type]:
    """Every section name and its dataclass, built-in first."""
    hints = schema.hints(RunConfig)
    return {name: hints[name] for name in BUILTIN_SECTIONS} | dict(_REGISTERED)


def command_config(cls: type, section: Any, **changes: Any) -> Any:
    """The command's own config ``cls`` from a section that subclasses it (the section's
    extra fields dropped), with ``changes``."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)}
    return cls(**(values | changes))


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A ``RunConfig`` from parsed TOML: top-level ``out`` and one table per section."""
    known = sections()
    top = {}
    built: dict[str, Any] = {}
    for key, value in data.items():
        if key in known:
            if not isinstance(value, dict):
                raise RlinterpError(f"config key {key!r}: expected a table [{key}], got {value!r}")
            # TOML has no null: organism = "" means none, and so does giving checkpoints.
            if key == "series" and (
                value.get("organism") == "" or "organism" not in value and "checkpoints" in value
            ):
                value = {**value, "organism": None}
            built[key] = schema.build(known[key], value, f"{key}.")
        elif key == "out":
            top["out"] = schema.coerce(value, str, "out")
        else:
            close = difflib.get_close_matches(key, [*known, "out"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: out, {', '.join(known)})"
            raise RlinterpError(f"unknown config key {key!r}{hint}")
    extra = _extra({name: built.pop(name) for name in list(built) if name not in BUILTIN_SECTIONS})
    return RunConfig(**top, **built, extra=extra)


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML run config (see ``config_template`` for every key)."""
    path = Path(path)
    if not path.is_file():
        raise RlinterpError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RlinterpError(f"{path} is not valid TOML: {e}") from e
    return config_from_dict(data)


def with_overrides(
    config: RunConfig, overrides: dict[str, dict[str, Any]], out: str | None = None
) -> RunConfig:
    """A new config with ``{section: {field: value}}`` replaced (values already typed; nested
    fields dotted, ``sampling.seed``), each section changed at once (its validation sees
    the result, never an in-between state)."""
    replaced: dict[str, Any] = {"out": out} if out is not None else {}
    extra = dict(config.extra)
    for name, values in overrides.items():
        if not values:
            continue
        new = schema.merge(config.section(name), values)
        if name in BUILTIN_SECTIONS:
            replaced[name] = new
        else:
            extra[name] = new
    return dataclasses.replace(config, **replaced, extra=_extra(extra))


def _extra(found: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Registered sections as ``RunConfig.extra``: in registration order, those equal to
    their defaults left out (``section`` gives the defaults), so two configs that mean
    the same compare equal however they were written."""
    return tuple(
        (name, found[name]) for name in _REGISTERED if name in found and found[name] != _REGISTERED[name]()
    )


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON-able form (tuples as lists), every section included."""
    data: dict[str, Any] = {"out": config.out}
    for name in sections():
        data[name] = schema.to_data(config.section(name))
    return data


def fingerprint(config: RunConfig) -> dict[str, str]:
    """Per section, a hash of its settings (``_fingerprinted``)."""
    data = to_dict(config)
    return {
        name: hashlib.sha256(
            json.dumps(_fingerprinted(name, data[name]), sort_keys=True).encode()
        ).hexdigest()[:16]
        for name in sections()
    }


def _fingerprinted(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A section's settings as its fingerprint hashes them. Of ``compute`` only the dtype
    counts, nor does ``dictionaries.device`` (where a run computes, on how many threads or
    through which executor does not change what it means). The fields ``harvest`` and
    ``dictionaries`` gained when they became their commands' configs count only when set
    (``max_length``, another ``architecture`` than topk), and "every block" is hashed as the
    empty hook list it was written as: the fingerprints of run directories written before
    still match."""
    if name == "compute":
        return {"dtype": settings["dtype"]}
    if name == "harvest":
        hooks = settings["hooks"] or []
        return {k: v for k, v in settings.items() if k != "max_length" or v is not None} | {"hooks": hooks}
    if name == "dictionaries":
        return {
            k: v
            for k, v in settings.items()
            if k != "device" and (k != "architecture" or v != DictionaryConfig.architecture)
        }
    return settings


def config_template(config: RunConfig | None = None) -> str:
    """A TOML file with every key, its value in ``config`` (default: the defaults) and its
    documentation as a comment. Keys whose value is None are commented out."""
    config = config or RunConfig()
    lines = [
        "# rlinterp run configuration. Every key is optional; shown with its default.",
        "# Generated by `rlinterp run --print-config` from rlinterp/pipeline/config.py.",
        "",
        f"# {field_docs(RunConfig)['out']}",
        f"out = {schema.toml_value(config.out)}",
    ]
    for name, cls in sections().items():
        lines += schema.template_lines(name, cls, config.section(name), ' ""' if name == "series" else "")
    return "\n".join(lines) + "\n"


@dataclass
class RunContext:
    """What every stage sees: the config, the output directory, the series and prompts."""

    config: RunConfig
    out: Path
    series: dict[str, ModelSeries] = field(default_factory=dict)
    """Series name (an organism regime, or ``series.name``) -> the models, base first."""
    prompts: PromptSet | None = None
    organism_root: Path | None = None
    """The organism's directory when the series come from one."""

    def stage_dir(self, name: str) -> Path:
        return self.out / name
