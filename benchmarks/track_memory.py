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

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOK = "blocks.2.hook_resid_post"


def _child(n_prompts: int, workdir: Path) -> dict[str, float]:
    import torch
    from _series import ALPHABET, random_series

    from rlinterp.dictionaries import DictionaryConfig, train_dictionary
    from rlinterp.harvest import HarvestConfig, harvest
    from rlinterp.onpolicy import SamplingConfig
    from rlinterp.prompts import PromptSet
    from rlinterp.stagewise import StagewiseConfig
    from rlinterp.track import TrackConfig, run_track

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
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in (workdir / "track").rglob("*") if f.is_file())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "prompts": n_prompts,
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "run_mib": size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
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
            f"run {row['run_mib']:7.1f} MiB\n"
        )


if __name__ == "__main__":
    main()
