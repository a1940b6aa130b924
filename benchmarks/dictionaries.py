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
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlinterp.dictionaries import DictionaryConfig, train_dictionary
from rlinterp.harvest import HarvestConfig, harvest
from rlinterp.organism.model import build_tokenizer
from rlinterp.prompts import PromptSet
from rlinterp.series import ModelSeries

HOOK = "blocks.3.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=200_000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        alphabet = "abcdefghijklmnopqrstuvwxyz "
        tokenizer = build_tokenizer(alphabet)
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=128, n_ctx=128, n_embd=256, n_layer=4, n_head=4
        )
        model = GPT2LMHeadModel(config).eval()
        for name in ("base", "step-1"):
            model.save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
            with torch.no_grad():
                model.transformer.h[2].mlp.c_fc.weight.add_(
                    0.05 * torch.randn_like(model.transformer.h[2].mlp.c_fc.weight)
                )
        rng = random.Random(0)
        prompts = PromptSet.from_list(["".join(rng.choice(alphabet) for _ in range(100)) for _ in range(400)])
        series = ModelSeries.from_paths([root / "base", root / "step-1"])
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
