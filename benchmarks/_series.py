"""A random-init checkpoint series and random prompts, shared by the benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlinterp.organism.model import build_tokenizer
from rlinterp.prompts import PromptSet
from rlinterp.series import ModelSeries

ALPHABET = "abcdefghijklmnopqrstuvwxyz "


def random_series(
    root: Path, d_model: int = 256, n_layer: int = 4, perturbation: float = 0.05
) -> ModelSeries:
    """A GPT-2 base and one 'RL step' whose layer-2 MLP input weights got Gaussian noise."""
    tokenizer = build_tokenizer(ALPHABET)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_ctx=128, n_embd=d_model, n_layer=n_layer, n_head=4
    )
    model = GPT2LMHeadModel(config).eval()
    weight = model.transformer.h[2].mlp.c_fc.weight
    for name in ("base", "step-1"):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        with torch.no_grad():
            weight.add_(perturbation * torch.randn_like(weight))
    return ModelSeries.from_paths([root / "base", root / "step-1"])


def random_prompts(n: int, length: int = 100) -> PromptSet:
    rng = random.Random(0)
    return PromptSet.from_list(["".join(rng.choice(ALPHABET) for _ in range(length)) for _ in range(n)])
