"""A package face whose names are imported when first used (PEP 562), so that
``import rlinterp`` (or ``rlinterp.organism``) costs nothing until a name is asked for:
the command line answers at once, and reading an organism does not import its trainer.

A face lists its names once, as explicit re-exports under ``if TYPE_CHECKING:``
(``from .harvest import ActivationStore as ActivationStore``), which type checkers and IDEs
read as ordinary imports; ``lazy_exports(__name__)`` reads that same block from the
package's source and returns the module's ``__getattr__``, ``__dir__`` and ``__all__``::

    from typing import TYPE_CHECKING

    from ..core.lazy import lazy_exports

    if TYPE_CHECKING:
        from .build import build_organism as build_organism

    __getattr__, __dir__, __all__ = lazy_exports(__name__)

A name is imported on first access and then set on the package, so later lookups are
ordinary attribute reads. A name that is a submodule (``from .pipeline import figures``)
is imported as one. A name that shares its submodule's name (``harvest`` the function, in
``activations/harvest.py``) stays the name: importing the submodule, which binds it on its
package, does not replace the exported function with the module (an eager face gets this
from re-binding the name after the import; a lazy one has to refuse the binding).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _Face(types.ModuleType):
    """A lazy package whose exported names are not replaced by same-named submodules."""

    _shadowed: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._shadowed and isinstance(value, types.ModuleType):
            return  # the import system binding ``package.name`` to the submodule
        super().__setattr__(name, value)


def lazy_exports(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` of ``package`` from the re-exports of its
    ``if TYPE_CHECKING:`` block (see the module docstring)."""
    module = sys.modules[package]
    exports = _type_checking_imports(Path(module.__file__ or ""), package)
    module.__class__ = _Face
    module._shadowed = frozenset(  # type: ignore[attr-defined]
        name for name, (source, _) in exports.items() if source == f"{package}.{name}"
    )

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        source, attribute = exports[name]
        if source == package:  # ``from . import submodule``
            value = importlib.import_module(f"{source}.{attribute}")
        else:
            owner = importlib.import_module(source)
            try:
                value = getattr(owner, attribute)
            except AttributeError:  # a submodule its package does not import
                value = importlib.import_module(f"{source}.{attribute}")
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__, sorted(exports)


def _type_checking_imports(path: Path, package: str) -> dict[str, tuple[str, str]]:
    """``name -> (module, attribute)`` of every ``from X import attribute as name`` under a
    top-level ``if TYPE_CHECKING:`` of the package's source, relative modules resolved."""
    found: dict[str, tuple[str, str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    source = importlib.util.resolve_name(
                        "." * statement.level + (statement.module or ""), package
                    )
                    for alias in statement.names:
                        found[alias.asname or alias.name] = (source, alias.name)
    return found
