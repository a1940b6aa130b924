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

import ast
import dataclasses
import difflib
import hashlib
import inspect
import json
import textwrap
import tomllib
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from ..activations.prompts import PromptSet
from ..errors import RlinterpError
from ..models.series import ModelSeries


@dataclass(frozen=True)
class SeriesConfig:
    """Which models: an organism (built if missing) and its regimes, or checkpoint folders."""

    organism: str | None = "artifacts/organism/default-seed0"
    """Organism directory; built there (with ``preset`` and ``seed``) if it is not finished."""
    preset: Literal["tiny", "default"] = "default"
    """Organism preset to build when ``organism`` does not hold a finished one."""
    seed: int = 0
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
class HarvestSection:
    """Which activations are harvested, and in what batches."""

    hooks: tuple[str, ...] = ()
    """Hook names (empty: the residual stream after every block)."""
    batch_size: int = 32
    """Prompts per forward pass and per store shard (the memory bound)."""
    include_bos: bool = False
    """Keep the BOS position in statistics."""
    response_only: bool = False
    """Keep only response tokens (prompts need a prompt/response split)."""
    store_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the stored activations (bfloat16 / float16 halve the bytes)."""
    max_tokens: int | None = None
    """Token budget per store: a seeded uniform sample of at most this many tokens (None: all)."""
    token_seed: int = 0
    """Seed of the max_tokens sample."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise RlinterpError(f"harvest.batch_size must be positive, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RlinterpError(f"harvest.max_tokens must be positive, got {self.max_tokens}")


@dataclass(frozen=True)
class DictionariesSection:
    """Dictionaries: a base SAE (FVU drift and feature cards) and optional per-regime ones."""

    enabled: bool = True
    """Train dictionaries at all."""
    hook: str | None = None
    """Hook to train on (None: the hook whose activations changed most at the last step)."""
    methods: tuple[Literal["diff-sae", "crosscoder"], ...] = ()
    """Extra dictionaries per regime, base vs last checkpoint: ``diff-sae``, ``crosscoder``."""
    d_sae: int = 256
    """Latents per dictionary."""
    k: int = 8
    """Active latents per token."""
    n_tokens: int = 100_000
    """Training tokens per dictionary (the budget), repeats included. 100k is about four
    passes over the default organism's tokens and trains in a few CPU-seconds; the base SAE
    then leaves about 1% of the base's variance unexplained."""
    batch_size: int = 256
    """Tokens per training step."""
    lr: float = 3e-3
    """Adam learning rate."""
    seed: int = 0
    """Initialisation and data order."""
    top_k: int = 8
    """Top-activating contexts kept per latent and model (feature cards)."""
    cards: int = 24
    """Latents that get a feature card (those whose activity changed most)."""

    def __post_init__(self) -> None:
        for name in ("d_sae", "k", "n_tokens", "batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise RlinterpError(f"dictionaries.{name} must be positive, got {getattr(self, name)}")
        if self.cards < 0:
            raise RlinterpError(f"dictionaries.cards must be >= 0, got {self.cards}")


@dataclass(frozen=True)
class ComputeSection:
    """Where the models and dictionaries run."""

    device: str = "cpu"
    """Torch device (``cuda`` on a GPU machine)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model dtype."""
    threads: int | None = 1
    """Torch CPU threads (None: torch's default). 1 by default: the organism's matrices are
    too small to split, and on a shared 2-core machine two threads spent 20x the CPU time
    of one on the diff stage (they spin while waiting for each other); raise it for real
    models on a CPU."""
    device_map: str | None = None
    """Split each model over the GPUs in view (``auto``, ``balanced``) instead of ``device``."""
    executor: Literal["local", "ray"] = "local"
    """Where per-checkpoint work runs: this process, or one Ray task per checkpoint."""
    address: str | None = None
    """Ray cluster (``auto``, ``ray://<head>:10001``; None: RAY_ADDRESS or a local one)."""
    task_cpus: float = 1.0
    """CPUs each Ray task requests."""
    task_gpus: float = 0.0
    """GPUs each Ray task requests (with device = "cuda")."""


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
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in BUILTIN_SECTIONS} | dict(_REGISTERED)


# -- docstrings and types ------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (from its source), those of
    its dataclass bases included (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object and dataclasses.is_dataclass(base):
            docs |= _own_field_docs(base)
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def is_table(tp: Any) -> bool:
    """Whether a field of type ``tp`` is a nested config (a TOML sub-table)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp: Any) -> str:
    """How a field's type reads in messages and help: ``int``, ``list of str``, ``one of 'a', 'b'``."""
    if is_table(tp):
        return "a table"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from TOML or the CLI) as ``tp``, or a one-line error naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except RlinterpError:
                continue
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    elif _is_a(value, tp):
        return float(value) if tp is float else value
    raise RlinterpError(f"config key {key!r}: expected {type_name(tp)}, got {value!r}")


def _is_a(value: Any, tp: Any) -> bool:
    """Whether a scalar ``value`` is a ``tp`` (an int is a float; a bool is not a number)."""
    if typing.get_origin(tp) is Literal:
        return value in typing.get_args(tp)
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, int | float)
    return isinstance(value, tp)


def _build(cls: type, values: dict[str, Any], prefix: str, default: Any = None) -> Any:
    """A section dataclass from a TOML table, every key and type checked. A sub-table
    starts from the field's default in ``default`` (the section's own defaults unless
    given), so a section's budgets hold for the keys a file leaves out."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(names)})"
            raise RlinterpError(f"unknown config key {prefix + key!r}{hint}")
        if is_table(hints[key]):
            if not isinstance(value, dict):
                raise RlinterpError(
                    f"config key {prefix + key!r}: expected a table [{prefix + key}], got {value!r}"
                )
            inner = getattr(default if default is not None else cls(), key)
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.", inner)
        else:
            kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        if default is not None:
            return dataclasses.replace(default, **kwargs)
        return cls(**kwargs)
    except (ValueError, RlinterpError) as e:  # a section's own validation
        raise RlinterpError(f"config [{prefix.rstrip('.')}]: {e}") from e


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
            built[key] = _build(known[key], value, f"{key}.")
        elif key == "out":
            top["out"] = _coerce(value, str, "out")
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
    """A new config with ``{section: {field: value}}`` replaced (values already typed)."""
    replaced: dict[str, Any] = {"out": out} if out is not None else {}
    extra = dict(config.extra)
    for name, values in overrides.items():
        if not values:
            continue
        new = config.section(name)
        try:
            for key, value in values.items():  # nested fields are dotted: ``sampling.seed``
                new = _replace_path(new, key.split("."), value)
        except ValueError as e:
            raise RlinterpError(str(e)) from e
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


def _replace_path(obj: Any, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON-able form (tuples as lists), every section included."""
    data: dict[str, Any] = {"out": config.out}
    for name in sections():
        data[name] = json.loads(json.dumps(dataclasses.asdict(config.section(name))))
    return data


def fingerprint(config: RunConfig) -> dict[str, str]:
    """Per section, a hash of its settings; of ``compute`` only the dtype counts (where a
    run computes, on how many threads or through which executor does not change what it
    means)."""
    data = to_dict(config)
    data["compute"] = {"dtype": data["compute"]["dtype"]}
    return {
        name: hashlib.sha256(json.dumps(data[name], sort_keys=True).encode()).hexdigest()[:16]
        for name in sections()
    }


# -- the documented TOML ----------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def config_template(config: RunConfig | None = None) -> str:
    """A TOML file with every key, its value in ``config`` (default: the defaults) and its
    documentation as a comment. Keys whose value is None are commented out."""
    config = config or RunConfig()
    lines = [
        "# rlinterp run configuration. Every key is optional; shown with its default.",
        "# Generated by `rlinterp run --print-config` from rlinterp/pipeline/config.py.",
        "",
        f"# {field_docs(RunConfig)['out']}",
        f"out = {_toml_value(config.out)}",
    ]
    for name, cls in sections().items():
        lines += _template_table(name, cls, config.section(name))
    return "\n".join(lines) + "\n"


def _template_table(name: str, cls: type, section: Any) -> list[str]:
    """``[name]`` with its scalar keys, then its sub-tables ``[name.field]``."""
    lines = ["", f"[{name}]", f"# {' '.join((cls.__doc__ or '').split())}"]
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    nested = []
    for f in dataclasses.fields(cls):
        value, tp = getattr(section, f.name), hints[f.name]
        if is_table(tp):
            nested.append((f.name, tp, value))
            continue
        lines.append(f"# {docs.get(f.name, '')} ({type_name(tp)})")
        if value is None:
            lines.append(f'# {f.name} = ""' if name == "series" else f"# {f.name} =")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for key, tp, value in nested:
        sub = _template_table(f"{name}.{key}", tp, value)
        sub[2] = f"# {docs.get(key, '')}"  # what the field is for, not the reused class's doc
        lines += sub
    return lines


# -- the command line ----------------------------------------------------------------------


def cli_options() -> list[tuple[str, str, Any, str]]:
    """``(section, field, type, help)`` of every generated ``--<section>-<field>`` option;
    a nested field is dotted (``sampling.seed``: ``--track-sampling-seed``)."""
    options = []
    for name, cls in sections().items():
        options += [(name, *option) for option in _fields(cls)]
    return options


def command_options(cls: type) -> list[tuple[str, Any, str]]:
    """``(field, type, help)`` of every option a command's config dataclass generates
    (``--<field>``; a nested field is dotted: ``amplify.alphas`` is ``--amplify-alphas``)."""
    return _fields(cls)


def with_fields(config: Any, values: dict[str, Any]) -> Any:
    """A command's ``config`` with dotted fields replaced (values already typed)."""
    try:
        for key, value in values.items():
            config = _replace_path(config, key.split("."), value)
    except ValueError as e:
        raise RlinterpError(str(e)) from e
    return config


def _fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_table(tp):
            found += _fields(tp, f"{prefix}{f.name}.")
        else:
            found.append((prefix + f.name, tp, f"{docs.get(f.name, '')} [{type_name(tp)}]"))
    return found


def metavar(tp: Any) -> str:
    """A short placeholder for an option's value: ``N``, ``X``, ``TEXT``, ``{a,b}``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType, tuple):
        return metavar(next(a for a in args if a is not type(None) and a is not Ellipsis))
    return {int: "N", float: "X"}.get(tp, "TEXT")


def parse_cli_value(text: str | list[str], tp: Any, key: str) -> Any:
    """A command-line string (or list, for list-typed options) as ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        items = text if isinstance(text, list) else [text]
        return tuple(parse_cli_value(t, args[0], key) for t in items)
    if origin in (typing.Union, types.UnionType):
        if text in ("none", "None", ""):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_cli_value(text, arg, key)
            except RlinterpError:
                continue
        raise RlinterpError(f"option --{key}: expected {type_name(tp)}, got {text!r}")
    assert isinstance(text, str)
    try:
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        value: Any = {int: int, float: float}.get(tp, str)(text)
    except ValueError:
        raise RlinterpError(f"option --{key}: expected {type_name(tp)}, got {text!r}") from None
    return _coerce(value, tp, f"--{key}")


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
