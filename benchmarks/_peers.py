"""Peer libraries the benchmark runs as contenders without making them dependencies.

dictionary_learning (Marks, Karvonen, Mueller) is the field's reference for SAE trainers;
its package pins nnsight and pulls torchvision, which breaks ``transformers`` imports on a
CPU torch, so it is never installed into rlinterp's environment. The benchmark installs the
released wheel without its dependencies into a folder of its own (``artifacts/peers`` by
default) and imports just the trainer modules it needs (``trainers/batch_top_k.py`` and
what it imports: ``dictionary.py``, ``trainers/trainer.py``, which need only torch and
einops), bypassing the package's ``__init__`` files (which import nnsight). Nothing of it is
committed; where PyPI cannot be reached the contender is skipped, and the result says why.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

DICTIONARY_LEARNING = "dictionary-learning==0.1.0"
"""The released version the benchmark runs (its BatchTopK trainer is the repository's, up
to a k-annealing option it leaves off)."""


def dictionary_learning(root: Path, install: bool = True) -> tuple[Any | None, str]:
    """dictionary_learning's ``trainers.batch_top_k`` module (installed into ``root`` when
    missing and ``install``), or None and why not."""
    package = root / "dictionary_learning"
    if not (package / "trainers" / "batch_top_k.py").is_file():
        if not install:
            return None, f"{DICTIONARY_LEARNING} is not installed in {root} (make bench installs it)"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--target", str(root), DICTIONARY_LEARNING],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return None, f"pip could not install {DICTIONARY_LEARNING}: {done.stderr.strip()[-300:]}"
    # Stand-in packages with the real folders as their path: submodules import as usual,
    # the package __init__ files (and their nnsight import) never run.
    for name, folder in (
        ("dictionary_learning", package),
        ("dictionary_learning.trainers", package / "trainers"),
    ):
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        sys.modules.setdefault(name, stub)
    return importlib.import_module("dictionary_learning.trainers.batch_top_k"), DICTIONARY_LEARNING
