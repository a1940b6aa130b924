"""Benchmark: training throughput (tokens/s) of the three dictionary methods.

Harvests the residual stream of two random-init GPT-2 checkpoints (d_model 256, 4 layers;
the second with one MLP perturbed) on 400 random prompts of 100 characters, then trains
an SAE (TopK), a diff-SAE and a crosscoder on ``blocks.3.hook_resid_post`` with 1,024
latents, k 32, batch 1,024, and prints tokens/s for each. One torch thread.

    .venv/bin/python benchmarks/dictionaries.py [--n-tokens 200000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _series import random_prompts, random_series

from rlinterp.dictionaries import DictionaryConfig, train_dictionary
from rlinterp.harvest import HarvestConfig, harvest

HOOK = "blocks.3.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=200_000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        series, prompts = random_series(root), random_prompts(400)
        store = harvest(series, prompts, root / "store", HarvestConfig(hooks=(HOOK,), batch_size=32))
        cfg = DictionaryConfig(d_sae=1024, k=32, n_tokens=args.n_tokens, batch_size=1024, lr=1e-3)
        for method in ("sae", "diff-sae", "crosscoder"):
            start = time.perf_counter()
            train_dictionary(store, method, HOOK, root / method, cfg)
            seconds = time.perf_counter() - start
            sys.stdout.write(
                f"{method:>10}: {args.n_tokens / seconds:9.0f} tokens/s "
                f"({args.n_tokens} tokens, {seconds:.1f} s, top-context extraction included)\n"
            )


if __name__ == "__main__":
    main()
