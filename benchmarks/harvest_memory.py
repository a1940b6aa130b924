"""Benchmark: peak memory of harvesting does not grow with the number of prompts.

Runs the same harvest (two random-init GPT-2 checkpoints, d_model 256, 4 layers, every
resid_post hook, batch 32) on N and 10 N prompts, each in a fresh subprocess, and prints
wall time, peak resident memory and the store's size on disk.

    .venv/bin/python benchmarks/harvest_memory.py [--prompts 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(n_prompts: int, workdir: Path) -> dict[str, float]:
    import torch
    from _series import random_prompts, random_series

    from rlinterp.harvest import HarvestConfig, harvest

    torch.set_num_threads(1)
    series, prompts = random_series(workdir, perturbation=0.01), random_prompts(n_prompts)
    start = time.perf_counter()
    harvest(series, prompts, workdir / "store", HarvestConfig(batch_size=32))
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in (workdir / "store").rglob("*") if f.is_file())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "prompts": n_prompts,
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "store_mib": size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        with tempfile.TemporaryDirectory() as tmp:
            sys.stdout.write(json.dumps(_child(args.child, Path(tmp))) + "\n")
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for n in (args.prompts, 10 * args.prompts):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True, env=env
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        sys.stdout.write(
            f"{row['prompts']:>6} prompts: {row['seconds']:6.1f} s, peak RSS {row['peak_rss_mib']:7.1f} MiB, "
            f"store {row['store_mib']:7.1f} MiB\n"
        )


if __name__ == "__main__":
    main()
