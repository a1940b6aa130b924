"""A config dataclass as a schema: the one source of its TOML table, its command-line
options and their documentation.

rlinterp's configs are frozen dataclasses with a docstring under every field. This module
reads them generically, so that a default, a type or a help text is written once, in the
dataclass, and everything else is derived:

- ``field_docs`` (the docstrings, from the source), ``type_name`` and ``metavar`` (how a
  type reads in messages and help);
- ``coerce`` (a TOML/JSON value as the field's type) and ``parse_text`` (a command-line
  string as the field's type), both failing with one line that names the key;
- ``build`` (a dataclass from a nested dict, every key and type checked, sub-tables
  starting from the field's default) and ``merge`` (a new dataclass with dotted fields
  replaced, all in one change, so no in-between value has to pass validation);
- ``template_lines`` (a documented TOML table, each field's docstring as a comment).

A field whose type is itself a config dataclass is a nested table (``[a.b]``). The
command-line side (argparse options) lives in ``options``.

Invariants: nothing here imports more than the standard library and ``rlinterp.errors``,
so a command can describe its options without importing torch; every failure is an
``RlinterpError`` of one line.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import sys
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

from ..errors import RlinterpError

# -- docstrings and types ------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (from its source), those of
    its dataclass bases included (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        source = getattr(sys.modules.get(base.__module__), "__file__", None)
        if base is not object and dataclasses.is_dataclass(base) and source:
            docs |= _class_docs(source).get(base.__qualname__, {})
    return docs


@cache
def _class_docs(path: str) -> dict[str, dict[str, str]]:
    """``class qualname -> {field: docstring}`` for every class of one source file (parsed
    once, however many of its classes are asked about)."""
    found: dict[str, dict[str, str]] = {}

    def visit(nodes: list[ast.stmt], prefix: str) -> None:
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                found[prefix + node.name] = _docs_of(node.body)
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body, f"{prefix}{node.name}.<locals>.")

    visit(ast.parse(Path(path).read_text()).body, "")
    return found


def _docs_of(body: list[ast.stmt]) -> dict[str, str]:
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


@cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass."""
    return typing.get_type_hints(cls)


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


def metavar(tp: Any) -> str:
    """A short placeholder for an option's value: ``N``, ``X``, ``TEXT``, ``{a,b}``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType, tuple):
        return metavar(next(a for a in args if a is not type(None) and a is not Ellipsis))
    return {int: "N", float: "X"}.get(tp, "TEXT")


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` (``dataclasses.MISSING`` when it has none)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return found.default


# -- values --------------------------------------------------------------------------------


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from TOML, JSON or an already typed option) as ``tp``, or a one-line
    error naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and typing.get_origin(rest[0]) is tuple and isinstance(value, list | tuple):
            return coerce(value, rest[0], key)  # the list's own error names the item
        for arg in rest:
            try:
                return coerce(value, arg, key)
            except RlinterpError:
                continue
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
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


def parse_text(text: str, tp: Any) -> Any:
    """One command-line word as ``tp`` (a scalar or ``X | None``; lists are one word per
    item); ``ValueError`` with the expected type when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_text(text, arg)
            except ValueError:
                continue
    elif origin is Literal:
        if text in [str(a) for a in args]:
            return next(a for a in args if str(a) == text)
    elif tp is bool:
        if text.lower() in ("true", "false", "1", "0", "yes", "no"):
            return text.lower() in ("true", "1", "yes")
    else:
        try:
            return {int: int, float: float}.get(tp, str)(text)
        except ValueError:
            pass
    raise ValueError(f"expected {type_name(tp)}, got {text!r}")


# -- dataclasses from tables ----------------------------------------------------------------


def build(
    cls: type, values: dict[str, Any], prefix: str = "", default: Any = None, tables: bool = True
) -> Any:
    """A config dataclass from a (nested) dict, every key and type checked. A sub-table
    starts from the field's default in ``default`` (the class's own defaults unless given),
    so a section's budgets hold for the keys a file leaves out. Keys are named
    ``prefix + key`` in errors; a failing ``__post_init__`` is reported as
    ``config [prefix]: ...`` when ``prefix`` is given and ``tables`` (a TOML file's tables;
    options name themselves)."""
    found = hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(names)})"
            raise RlinterpError(f"unknown config key {prefix + key!r}{hint}")
        if is_table(found[key]):
            if not isinstance(value, dict):
                raise RlinterpError(
                    f"config key {prefix + key!r}: expected a table [{prefix + key}], got {value!r}"
                )
            inner = getattr(default, key) if default is not None else default_of(cls, key)
            inner = None if inner is dataclasses.MISSING else inner  # a required table
            kwargs[key] = build(found[key], value, f"{prefix}{key}.", inner, tables)
        else:
            kwargs[key] = coerce(value, found[key], prefix + key)
    try:
        return dataclasses.replace(default, **kwargs) if default is not None else cls(**kwargs)
    except (ValueError, RlinterpError) as e:  # the dataclass's own validation
        raise RlinterpError(f"config [{prefix.rstrip('.')}]: {e}" if prefix and tables else str(e)) from e


def merge(obj: Any, changes: dict[str, Any]) -> Any:
    """``obj`` with dotted fields (``"sampling.seed"``) replaced by typed values, each
    dataclass rebuilt once with all of its changes: the result is validated, in-between
    combinations never are (setting ``organism`` to None and ``checkpoints`` together)."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = merge(getattr(obj, head), inner)
    try:
        return dataclasses.replace(obj, **direct)
    except ValueError as e:
        raise RlinterpError(str(e)) from e


def to_data(obj: Any) -> Any:
    """A config as plain JSON-able data (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


# -- the documented TOML ----------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def template_lines(name: str, cls: type, value: Any, none: str = "") -> list[str]:
    """``[name]`` with its scalar keys (each under its docstring and type as a comment),
    then its sub-tables ``[name.field]``. A key whose value is None is commented out, as
    ``# key =`` followed by ``none`` (TOML has no null)."""
    lines = ["", f"[{name}]", f"# {' '.join((cls.__doc__ or '').split())}"]
    docs, found = field_docs(cls), hints(cls)
    tables = []
    for f in dataclasses.fields(cls):
        current, tp = getattr(value, f.name), found[f.name]
        if is_table(tp):
            tables.append((f.name, tp, current))
            continue
        lines.append(f"# {docs.get(f.name, '')} ({type_name(tp)})")
        lines.append(f"# {f.name} ={none}" if current is None else f"{f.name} = {toml_value(current)}")
    for key, tp, current in tables:
        sub = template_lines(f"{name}.{key}", tp, current, none)
        sub[2] = f"# {docs.get(key, '')}"  # what the field is for, not the reused class's doc
        lines += sub
    return lines
