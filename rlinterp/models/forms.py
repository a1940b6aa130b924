"""Which form a series takes, from what a user typed after ``--series``: the one place that
reads it (``ModelSeries.from_spec``, every command and the run config go through it).

The forms (``form``), checked from the files alone, in this order:

- ``folders``: several checkpoint folders, base first (or one or several with ``--base``),
  or one folder that is a checkpoint;
- ``organism``: one organism directory, or its ``manifest.json`` (``organism_root``); the
  series is the base and one regime;
- ``run``: one training run directory holding ``checkpoint-<N>/`` (or ``step-<N>/``,
  ``global_step<N>/``, ``<N>/``) folders, full checkpoints or PEFT adapters; the base is its
  step-0 folder, ``--base``, or the local model its adapters name.

Checkpoints of an organism given in another form (a regime's folder as a run directory,
its checkpoint folders) still come from that organism: ``enclosing_organism`` finds it, so
its persona texts can be the prompts of any series made of its models.

Torch-free: the standard library, ``rlinterp.errors`` and ``core.rundir`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..core.rundir import ORGANISM
from ..errors import RlinterpError
from .checkpoint import ADAPTER_CONFIG, STEP_DIR

Form = Literal["organism", "folders", "run"]


def organism_root(paths: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The organism directory that ``paths`` name (one directory holding a ``manifest.json``,
    or that file itself); None for every other form."""
    if len(paths) != 1:
        return None
    root = Path(paths[0])
    root = root.parent if root.name == "manifest.json" else root
    return root if (root / "manifest.json").is_file() else None


def enclosing_organism(paths: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The organism directory every one of ``paths`` names or lies inside (the organism
    itself, a regime's run directory, its checkpoint folders); None if they do not share one."""
    if organism_root(paths) is not None:
        return organism_root(paths)
    found = {_organism_above(Path(p)) for p in paths}
    return found.pop() if len(found) == 1 and None not in found else None


def _organism_above(path: Path) -> Path | None:
    for folder in Path(os.path.abspath(path)).parents:
        try:
            manifest = json.loads((folder / ORGANISM.manifest).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("kind") == ORGANISM.name:
            return folder
    return None


def is_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is one checkpoint (a model config or an adapter config)."""
    return (Path(folder) / "config.json").is_file() or (Path(folder) / ADAPTER_CONFIG).is_file()


def is_run_dir(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a training run directory: it holds checkpoint folders named by
    step (``checkpoint-<N>``, ``step-<N>``, ``global_step<N>``, ``<N>``)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_dir() and STEP_DIR.match(p.name) for p in folder.iterdir())


def form(paths: Sequence[str | os.PathLike[str]]) -> Form:
    """Which form ``paths`` (``--series``) are; a one-line error naming the forms when they
    are none of them."""
    if not paths:
        raise RlinterpError("--series names no checkpoint; give an organism, a run directory or folders")
    first = Path(paths[0])
    if len(paths) > 1 or is_checkpoint(first):
        return "folders"
    if organism_root(paths) is not None:
        return "organism"
    if first.is_dir():
        return "run"
    raise RlinterpError(
        f"{first}: give an organism directory, a run directory with checkpoint-<N> folders, "
        "or checkpoint folders (base first, or the base with --base)"
    )
