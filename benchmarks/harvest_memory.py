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
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(n_prompts: int, workdir: Path) -> dict[str, float]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlinterp.harvest import HarvestConfig, harvest
    from rlinterp.organism.model import build_tokenizer
    from rlinterp.prompts import PromptSet
    from rlinterp.series import ModelSeries

    torch.set_num_threads(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    tokenizer = build_tokenizer(alphabet)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_ctx=128, n_embd=256, n_layer=4, n_head=4
    )
    model = GPT2LMHeadModel(config).eval()
    for name in ("base", "step-1"):
        model.save_pretrained(workdir / name)
        tokenizer.save_pretrained(workdir / name)
        with torch.no_grad():
            model.transformer.h[2].mlp.c_fc.weight.add_(0.01)
    rng = random.Random(0)
    prompts = PromptSet.from_list(
        ["".join(rng.choice(alphabet) for _ in range(100)) for _ in range(n_prompts)]
    )
    series = ModelSeries.from_paths([workdir / "base", workdir / "step-1"])
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
