"""A random-init checkpoint series and random prompts, shared by the benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries
from rlinterp.organism.model import build_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz "


def random_checkpoints(
    root: Path,
    d_model: int = 256,
    n_layer: int = 4,
    perturbation: float = 0.05,
    n_steps: int = 1,
    n_positions: int = 128,
) -> list[Path]:
    """A GPT-2 base (``root/base``) and ``n_steps`` 'RL steps' (``root/step-<i>``), each
    adding Gaussian noise to the layer-2 (or last) MLP input weights of the one before."""
    tokenizer = build_tokenizer(ALPHABET)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_ctx=n_positions,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=4,
    )
    model = GPT2LMHeadModel(config).eval()
    weight = model.transformer.h[min(2, n_layer - 1)].mlp.c_fc.weight
    folders = [root / "base", *(root / f"step-{i}" for i in range(1, n_steps + 1))]
    for folder in folders:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with torch.no_grad():
            weight.add_(perturbation * torch.randn_like(weight))
    return folders


def random_series(
    root: Path, d_model: int = 256, n_layer: int = 4, perturbation: float = 0.05
) -> ModelSeries:
    """A GPT-2 base and one 'RL step' whose layer-2 MLP input weights got Gaussian noise."""
    return ModelSeries.from_paths(random_checkpoints(root, d_model, n_layer, perturbation))


def random_prompts(n: int, length: int = 100, seed: int = 0) -> PromptSet:
    """``n`` prompts of ``length`` random characters (one token each: with BOS, a prompt is
    ``length + 1`` tokens)."""
    rng = random.Random(seed)
    return PromptSet.from_list(["".join(rng.choice(ALPHABET) for _ in range(length)) for _ in range(n)])
