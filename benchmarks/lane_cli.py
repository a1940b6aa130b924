"""Lane CLI: how long the command line takes to answer, and what ``import rlinterp`` costs.

Each contender is a fresh interpreter (``subprocess``), as a user's shell starts one, run
``repeats`` times one after another; wall seconds and CPU seconds (user + system of the
child, from ``resource.getrusage``) are recorded per run and summarised by their median.
The CPU time says what the command costs on a shared machine, where the wall time also
counts the wait for a core.

- ``python``: ``python -c pass``, the floor every command pays;
- ``import``: ``import rlinterp`` (the facade; its names are imported when used);
- ``help``: ``rlinterp --help``; ``run-help``: ``rlinterp run --help`` (every generated option);
- ``wrong-option``: ``rlinterp diff --bogus`` (an argument error, exit status 2);
- ``print-config``: ``rlinterp run --print-config`` (the whole run config built and printed);
- ``library``: ``import rlinterp; rlinterp.ModelSeries`` (torch, transformers,
  TransformerLens, SAELens): what a command pays once it starts computing.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rlinterp"]
CONTENDERS = {
    "python": [sys.executable, "-c", "pass"],
    "import": [sys.executable, "-c", "import rlinterp"],
    "help": [*CLI, "--help"],
    "run-help": [*CLI, "run", "--help"],
    "wrong-option": [*CLI, "diff", "--bogus"],
    "print-config": [*CLI, "run", "--print-config"],
    "library": [sys.executable, "-c", "import rlinterp; rlinterp.ModelSeries"],
}
EXPECTED_STATUS = {"wrong-option": 2}
TARGET_SECONDS = 1.0
"""``--help``, ``--version``, ``--print-config`` and every argument or config error answer in
under a second (median wall time)."""


def run_once(argv: list[str]) -> dict[str, float]:
    """Wall and CPU seconds of one fresh interpreter running ``argv``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    expected = EXPECTED_STATUS.get(_name(argv), 0)
    if done.returncode != expected:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def _name(argv: list[str]) -> str:
    return next(name for name, command in CONTENDERS.items() if command == argv)


def lane_cli(repeats: int = 5, library_repeats: int | None = None) -> dict[str, Any]:
    """Every contender ``repeats`` times (the heavy ``library`` import ``library_repeats``
    times); medians, values and whether the answering commands meet ``TARGET_SECONDS``."""
    lane: dict[str, Any] = {}
    for name, argv in CONTENDERS.items():
        count = (library_repeats or repeats) if name == "library" else repeats
        runs = [run_once(argv) for _ in range(count)]
        lane[name] = {
            key: {"median": statistics.median(r[key] for r in runs), "values": [r[key] for r in runs]}
            for key in ("wall", "cpu")
        }
    answering = ("help", "run-help", "wrong-option", "print-config")
    lane["target_seconds"] = TARGET_SECONDS
    lane["within_target"] = {name: lane[name]["wall"]["median"] < TARGET_SECONDS for name in answering}
    return lane


def summary(lane: dict[str, Any]) -> list[str]:
    """One line per contender: median wall and CPU seconds."""
    return [
        f"     cli {name:>12}: {stats['wall']['median']:6.2f} s wall, {stats['cpu']['median']:6.2f} CPU-s "
        f"(median of {len(stats['wall']['values'])})"
        for name, stats in lane.items()
        if isinstance(stats, dict) and "wall" in stats
    ]
