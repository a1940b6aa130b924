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
is imported as one, and so is any public subpackage the face does not list
(``rlinterp.organism`` after a bare ``import rlinterp``). A name another face exports is
resolved through that face's list, not read off the package: importing a submodule binds it
on its package under its own name, so after ``import rlinterp.activations.harvest`` the
attribute ``rlinterp.activations.harvest`` is that module (as Python has it), while
``rlinterp.harvest`` stays the function the faces list.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lazy_exports(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` of ``package`` from the re-exports of its
    ``if TYPE_CHECKING:`` block (see the module docstring)."""
    module = sys.modules[package]
    exports = _type_checking_imports(Path(module.__file__ or ""), package)
    _FACES[package] = exports

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = _resolve(package, name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__, sorted(exports)


_FACES: dict[str, dict[str, tuple[str, str]]] = {}
"""Package -> its exports (``name -> (module, attribute)``), for every face made so far."""


def _resolve(package: str, name: str) -> Any:
    """What ``package``'s export ``name`` names, following other faces' lists."""
    source, attribute = _FACES[package][name]
    if source == package:  # ``from . import submodule``
        return importlib.import_module(f"{source}.{attribute}")
    owner = importlib.import_module(source)
    if attribute in _FACES.get(source, {}):  # not ``getattr``: a submodule may shadow it
        return _resolve(source, attribute)
    try:
        return getattr(owner, attribute)
    except AttributeError:  # a submodule its package does not import
        return importlib.import_module(f"{source}.{attribute}")


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
