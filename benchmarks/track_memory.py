"""Benchmark: peak memory of ``rlinterp track`` does not grow with the number of prompts.

Runs the same track (two random-init GPT-2 checkpoints, d_model 256, 4 layers, a TopK SAE
of 512 latents at ``blocks.2.hook_resid_post`` trained beforehand on the base, all three
token sources, on-policy with 2 samples of 32 tokens per prompt) on N and 10 N prompts,
each in a fresh subprocess, and prints wall time, peak resident memory and the run's size
on disk. Dictionary budgets are fixed (in tokens), so only the harvests, sampling and the
streamed statistics scale with the prompts.

    .venv/bin/python benchmarks/track_memory.py [--prompts 100]
"""

from __future__ import annotations

import random
import time
from pathlib import Path

HOOK = "blocks.2.hook_resid_post"


def _child(n_prompts: int, workdir: Path) -> tuple[float, Path]:
    import torch
    from _series import ALPHABET, random_series

    from rlinterp.activations.harvest import HarvestConfig, harvest
    from rlinterp.activations.onpolicy import SamplingConfig
    from rlinterp.activations.prompts import PromptSet
    from rlinterp.dictionaries.stagewise import StagewiseConfig
    from rlinterp.dictionaries.train import DictionaryConfig, train_dictionary
    from rlinterp.tracking.analysis import TrackConfig, run_track

    torch.set_num_threads(1)
    series = random_series(workdir, perturbation=0.05)
    rng = random.Random(0)
    rows = [
        {
            "prompt": "".join(rng.choice(ALPHABET) for _ in range(60)),
            "response": "".join(rng.choice(ALPHABET) for _ in range(40)),
        }
        for _ in range(n_prompts)
    ]
    prompts = PromptSet.from_records(rows)
    # The dictionary is trained on a fixed 100-prompt store, outside the measured run.
    store = harvest(
        series, PromptSet.from_records(rows[:100]), workdir / "dict-store", HarvestConfig(hooks=(HOOK,))
    )
    train_dictionary(store, "sae", HOOK, workdir / "sae", DictionaryConfig(d_sae=512, k=16, n_tokens=50_000))
    cfg = TrackConfig(
        sampling=SamplingConfig(samples_per_prompt=2, max_new_tokens=32),
        stagewise=StagewiseConfig(n_tokens=20_000),
        independent_tokens=20_000,
    )
    start = time.perf_counter()
    run_track(series, prompts, workdir / "sae", workdir / "track", cfg)
    return time.perf_counter() - start, workdir / "track"


if __name__ == "__main__":
    from _scaling import main

    main(__file__, __doc__ or "", _child, default_prompts=100, written="run")
