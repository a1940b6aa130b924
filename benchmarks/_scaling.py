"""The driver of benchmarks/track_memory.py: one child process per size, so that each peak
resident memory is that size's own, and one line of results per size."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

Child = Callable[[int, Path], tuple[float, Path]]
"""Runs the measured work on N prompts in a scratch folder; returns its wall seconds and
the folder it wrote (whose size on disk is reported)."""


def main(script: str, doc: str, child: Child, default_prompts: int, written: str) -> None:
    """``script`` run with ``--prompts N`` measures N and 10 N prompts in children of itself;
    with ``--child N`` it is one such child and prints its measurement as JSON."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=default_prompts)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, out = child(args.child, Path(tmp))
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row = {"prompts": args.child, "seconds": seconds, "peak_rss_mib": peak_kib / 1024}
            sys.stdout.write(json.dumps({**row, "written_mib": size / 2**20}) + "\n")
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for n in (args.prompts, 10 * args.prompts):
        out = subprocess.run(
            [sys.executable, script, "--child", str(n)], capture_output=True, text=True, check=True, env=env
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        sys.stdout.write(
            f"{row['prompts']:>6} prompts: {row['seconds']:6.1f} s, peak RSS {row['peak_rss_mib']:7.1f} MiB, "
            f"{written} {row['written_mib']:7.1f} MiB\n"
        )
