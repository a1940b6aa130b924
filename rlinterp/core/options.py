"""Command-line options generated from config dataclasses: every command's options come
from its config (``schema``), so a default, a type and a help text are written once.

``add_options(parser, cls)`` adds one option per field of ``cls``; ``from_args`` turns what
was typed back into the config (``schema.build``: every value checked, the dataclass's own
validation run, one line per mistake). The rules:

- a field's flag is its name, dashed (``batch_size``: ``--batch-size``); a field of a nested
  config is prefixed by the field that holds it (``sampling.seed``: ``--sampling-seed``),
  unless that field is declared ``FLAT`` (an option group: its fields keep their own
  names), and a field may name its own flag (``field(metadata={"flag": "executor"})``) and
  add top-level ``aliases``; ``positional`` makes it an argument;
- a field without a default is a required option; an option not typed is left out of the
  parsed arguments (so the config's default, or a file's value, applies), and its help says
  the config's default;
- the type decides the option: ``bool`` is a ``--x/--no-x`` pair, ``Literal`` a choice,
  ``tuple[T, ...]`` takes several words, ``T | None`` also takes ``none``;
- help texts are the fields' docstrings, safe for argparse's ``%`` formatting.

Like ``schema``, this module imports only the standard library and ``rlinterp.errors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from . import schema

FLAT = MappingProxyType({"flat": True})
"""``field(metadata=FLAT)``: a nested config whose fields are options of their own names."""


@dataclass(frozen=True)
class Option:
    """One generated option."""

    path: str
    """The field's dotted path in the config (``sampling.seed``); also the argparse dest."""
    flags: tuple[str, ...]
    """``--sampling-seed`` (and aliases), or the argument's name when positional."""
    tp: Any
    """The field's type."""
    default: Any
    """The config's default (``dataclasses.MISSING``: required)."""
    help: str
    """The field's docstring."""


def options(cls: type, default: Any = None, path: str = "", flag: str = "") -> list[Option]:
    """Every option of ``cls`` (see the module docstring); ``default``: an instance whose
    values are the defaults shown (a nested config's own, e.g. a section's budgets)."""
    docs, hints = schema.field_docs(cls), schema.hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name) if default is not None else schema.default_of(cls, f.name)
        name = f.metadata.get("flag", f.name).replace("_", "-")
        if schema.is_table(hints[f.name]):
            inner = value if value is not dataclasses.MISSING else None
            prefix = flag if f.metadata.get("flat") else f"{flag}{name}-"
            found += options(hints[f.name], inner, f"{path}{f.name}.", prefix)
            continue
        flags: tuple[str, ...] = (f.name,) if f.metadata.get("positional") else (f"--{flag}{name}",)
        flags += tuple(f"--{alias}" for alias in f.metadata.get("aliases", ()))
        found.append(Option(path + f.name, flags, hints[f.name], value, docs.get(f.name, "")))
    return found


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    default: Any = None,
    skip: Iterable[str] = (),
) -> list[Option]:
    """Add the options of ``cls`` (those whose path is not in ``skip``) to ``parser``."""
    added = [o for o in options(cls, default) if o.path not in set(skip)]
    for option in added:
        parser.add_argument(*option.flags, **argparse_keywords(option))
    return added


def given(args: argparse.Namespace, added: Iterable[Option]) -> dict[str, Any]:
    """``{path: value}`` of the options the user typed, as their fields' types (several
    words as a tuple)."""
    typed = {}
    for option in added:
        if hasattr(args, option.path):  # not given: absent (``argparse.SUPPRESS``)
            typed[option.path] = schema.coerce(getattr(args, option.path), option.tp, option.flags[0])
    return typed


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted paths as nested tables (``{"a.b": 1}``: ``{"a": {"b": 1}}``), for ``schema.build``."""
    tables: dict[str, Any] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        table = tables
        for parent in parents:
            table = table.setdefault(parent, {})
        table[leaf] = value
    return tables


def from_args(cls: type, args: argparse.Namespace, added: Iterable[Option]) -> Any:
    """The config ``cls`` of what was typed (defaults for the rest), checked."""
    return schema.build(cls, nested(given(args, added)), tables=False)


def argparse_keywords(option: Option) -> dict[str, Any]:
    """The ``add_argument`` keywords of one option (see the module docstring)."""
    tp, required = option.tp, option.default is dataclasses.MISSING
    kwargs: dict[str, Any] = {"help": _help(option)}
    if option.flags[0].startswith("--"):
        kwargs |= {"dest": option.path, "default": argparse.SUPPRESS}
        if required:
            kwargs["required"] = True
    if _optional(tp) is bool:
        return kwargs | {"action": argparse.BooleanOptionalAction}
    item = tp
    if typing.get_origin(_optional(tp)) is tuple:
        item = typing.get_args(_optional(tp))[0]
        kwargs["nargs"] = "+" if required else "*"
    if typing.get_origin(_optional(item)) is Literal:  # argparse says which choices there are
        kwargs["choices"] = typing.get_args(_optional(item))
        if type(None) in typing.get_args(item):
            kwargs["choices"] = (*kwargs["choices"], None)
        kwargs["type"] = _chooser(item)
        return kwargs
    if option.flags[0].startswith("--"):
        kwargs["metavar"] = schema.metavar(item)
    kwargs["type"] = _converter(item)
    return kwargs


def _optional(tp: Any) -> Any:
    """``T`` of ``T | None`` (``tp`` itself otherwise)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _converter(tp: Any) -> Callable[[str], Any]:
    """Parse one word as ``tp``; argparse reports a failure as ``argument --x: <why>``."""

    def convert(text: str) -> Any:
        try:
            return schema.parse_text(text, tp)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = schema.type_name(tp)
    return convert


def _chooser(tp: Any) -> Callable[[str], Any]:
    """One word as the choice of ``tp`` it spells (itself if none: argparse then names the
    choices)."""

    def choose(text: str) -> Any:
        try:
            return schema.parse_text(text, tp)
        except ValueError:
            return text

    return choose


def _help(option: Option) -> str:
    """The docstring (without its reST literal marks), with the default where the field has
    one worth saying, escaped for argparse's ``%`` formatting."""
    text, default = option.help, option.default
    unsaid = default is dataclasses.MISSING or default is None or default == () or isinstance(default, bool)
    if not unsaid:
        value = ", ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        text = f"{text} (default: {value})" if text else f"default: {value}"
    return text.replace("``", "").replace("%", "%%")
