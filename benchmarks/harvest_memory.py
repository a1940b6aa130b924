"""Benchmark: peak memory of harvesting does not grow with the number of prompts.

Runs the same harvest (two random-init GPT-2 checkpoints, d_model 256, 4 layers, every
resid_post hook, batch 32) on N and 10 N prompts, each in a fresh subprocess, and prints
wall time, peak resident memory and the store's size on disk.

    .venv/bin/python benchmarks/harvest_memory.py [--prompts 200]
"""

from __future__ import annotations

import time
from pathlib import Path


def _child(n_prompts: int, workdir: Path) -> tuple[float, Path]:
    import torch
    from _series import random_prompts, random_series

    from rlinterp.harvest import HarvestConfig, harvest

    torch.set_num_threads(1)
    series, prompts = random_series(workdir, perturbation=0.01), random_prompts(n_prompts)
    start = time.perf_counter()
    harvest(series, prompts, workdir / "store", HarvestConfig(batch_size=32))
    return time.perf_counter() - start, workdir / "store"


if __name__ == "__main__":
    from _scaling import main

    main(__file__, __doc__ or "", _child, default_prompts=200, written="store")
