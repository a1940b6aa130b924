"""Loading Hugging Face checkpoint folders into TransformerLens, offline, with a check that
the hooked model computes what the plain ``transformers`` model computes.

``TransformerBridge.boot_transformers(local_dir)`` is the loading path (see DESIGN.md):
it opens any local checkpoint without the hub and is the only path TransformerLens 4
keeps. A diff between checkpoints is only meaningful if the loader reproduces each model
exactly, so ``logit_fidelity`` measures the largest logit difference between the bridge
and ``AutoModelForCausalLM`` on the same tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from .errors import RlinterpError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def require_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or an error naming what is missing from a checkpoint folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise RlinterpError(f"checkpoint folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise RlinterpError(f"{folder} is not a Hugging Face checkpoint: it has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise RlinterpError(
            f"{folder} has no safetensors weights ({' or '.join(WEIGHT_FILES)}); "
            "re-save it with save_pretrained(..., safe_serialization=True)"
        )
    return folder


def load_bridge(
    path: str | os.PathLike[str], device: str = "cpu", dtype: torch.dtype = torch.float32
) -> TransformerBridge:
    """A checkpoint folder as a hooked TransformerLens model, never touching the hub."""
    folder = require_checkpoint(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)


@torch.no_grad()
def logit_fidelity(
    path: str | os.PathLike[str],
    tokens: Int[Tensor, "batch pos"],
    bridge: TransformerBridge | None = None,
) -> float:
    """Largest absolute difference between the bridge's logits and those of
    ``AutoModelForCausalLM.from_pretrained(path)`` on ``tokens`` (float32, CPU)."""
    folder = require_checkpoint(path)
    bridge = bridge if bridge is not None else load_bridge(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = reference(input_ids=tokens).logits
    actual = bridge(tokens.to(bridge.cfg.device), return_type="logits").float().cpu()
    return (actual - expected).abs().max().item()
