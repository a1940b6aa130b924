"""The configuration of ``rlinterp run``: frozen dataclasses that are the single source of
the TOML keys, the command-line options and their help.

A run config is one ``RunConfig`` made of sections (``sections``: ``[series]``,
``[prompts]``, ``[harvest]``, ``[dictionaries]``, ``[compute]``, then one per analysis stage,
``[tracking]``, ``[selection]``, ``[circuits]``, ``[fidelity]``, ``[readings]``), plain
fields all, so the schema never depends on what was imported. Every field carries a
docstring, which becomes the comment in ``config_template()`` and the ``--help`` text of
its generated option (``--<section>-<field>``, underscores as dashes). A field whose type
is itself a config dataclass (a command's own config reused inside a section) is a
sub-table, ``[section.field]``, with options ``--<section>-<field>-<subfield>``.

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
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import schema
from ..core.schema import field_docs as field_docs
from ..dictionaries.config import DictionaryConfig
from ..errors import RlinterpError
from .sections import (
    CircuitsSection,
    ComputeSection,
    DictionariesSection,
    FidelitySection,
    HarvestSection,
    PromptsConfig,
    ReadingsSection,
    SelectionSection,
    SeriesConfig,
    TrackingSection,
    TransitionSection,
)

if TYPE_CHECKING:
    from ..activations.prompts import PromptSet
    from ..models.series import ModelSeries


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
    tracking: TrackingSection = field(default_factory=TrackingSection)
    selection: SelectionSection = field(default_factory=SelectionSection)
    circuits: CircuitsSection = field(default_factory=CircuitsSection)
    fidelity: FidelitySection = field(default_factory=FidelitySection)
    readings: ReadingsSection = field(default_factory=ReadingsSection)
    transition: TransitionSection = field(default_factory=TransitionSection)

    def __post_init__(self) -> None:
        hook, hooks = self.dictionaries.hook, self.harvest.hooks
        # The base SAE trains on the diff stage's store: every block's resid_post by default.
        harvested = hook in hooks if hooks else re.fullmatch(r"blocks\.\d+\.hook_resid_post", hook or "")
        if hook is not None and not harvested:
            shown = list(hooks) if hooks else "blocks.<i>.hook_resid_post"
            raise RlinterpError(
                f"dictionaries.hook {hook} is not harvested (harvest.hooks: {shown}); add it to "
                "--harvest-hooks or choose one of those"
            )


def sections() -> dict[str, type]:
    """Every section name and its dataclass, in the order of ``RunConfig``."""
    return {
        f.name: t
        for f in dataclasses.fields(RunConfig)
        if schema.is_table(t := schema.hints(RunConfig)[f.name])
    }


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A ``RunConfig`` from parsed TOML: top-level ``out`` and one table per section."""
    known = sections()
    top = {}
    built: dict[str, Any] = {}
    for key, value in data.items():
        if key in known:
            if not isinstance(value, dict):
                raise RlinterpError(f"config key {key!r}: expected a table [{key}], got {value!r}")
            # TOML has no null: organism = "" means none, and so does giving checkpoints; so
            # does base = "" or steps = "" (as the template writes them, commented out).
            if key == "series":
                value = {
                    k: None if k in ("organism", "base", "steps") and v == "" else v for k, v in value.items()
                }
                if "organism" not in value and "checkpoints" in value:
                    value["organism"] = None
            built[key] = schema.build(known[key], value, f"{key}.")
        elif key == "out":
            top["out"] = schema.coerce(value, str, "out")
        else:
            close = difflib.get_close_matches(key, [*known, "out"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: out, {', '.join(known)})"
            raise RlinterpError(f"unknown config key {key!r}{hint}")
    return RunConfig(**top, **built)


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
    for name, values in overrides.items():
        if values:
            replaced[name] = schema.merge(getattr(config, name), values)
    return dataclasses.replace(config, **replaced)


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON-able form (tuples as lists), every section included."""
    data: dict[str, Any] = {"out": config.out}
    for name in sections():
        data[name] = schema.to_data(getattr(config, name))
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
    still match. A dictionary ``recipe`` counts unless it is ``legacy``, the one every run
    directory written before it trained with: such a directory resumes under the legacy
    recipe and is refused under the fitted one; those of ``series`` without the ``base``
    and ``steps`` it gained still match."""
    if name == "compute":
        return {"dtype": settings["dtype"]}
    if name == "series":
        return {k: v for k, v in settings.items() if k not in ("base", "steps") or v is not None}
    if name == "harvest":
        hooks = settings["hooks"] or []
        return {k: v for k, v in settings.items() if k != "max_length" or v is not None} | {"hooks": hooks}
    if name == "dictionaries":
        return {
            k: v
            for k, v in _without_legacy_recipe(settings).items()
            if k != "device" and (k != "architecture" or v != DictionaryConfig.architecture)
        }
    if name == "selection":
        return settings | {"dictionary_config": _without_legacy_recipe(settings["dictionary_config"])}
    return settings


def _without_legacy_recipe(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "recipe" or v != "legacy"}


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
        lines += schema.template_lines(name, cls, getattr(config, name), ' ""' if name == "series" else "")
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
