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
from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from .errors import RlinterpError
from .weight_files import WEIGHT_FILES


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


def require_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or an error if it does not name one that this
    machine has (``tpu9``, ``cuda`` on a CPU-only build, ``cuda:3`` on a 2-GPU machine)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise RlinterpError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:<n> or mps") from e
    if parsed.type == "cpu":
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    if backend is None or not backend.is_available():
        cpu_only = parsed.type == "cuda" and not torch.version.cuda
        cpu_only_note = f" (torch {torch.__version__} is a CPU-only build)" if cpu_only else ""
        raise RlinterpError(f"device {device!r} is not available on this machine{cpu_only_note}; use cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        raise RlinterpError(
            f"device {device!r} does not exist: this machine has {count} {parsed.type} device(s)"
        )
    return parsed


def load_bridge(
    path: str | os.PathLike[str], device: str = "cpu", dtype: torch.dtype = torch.float32
) -> TransformerBridge:
    """A checkpoint folder as a hooked TransformerLens model, never touching the hub."""
    folder = require_checkpoint(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)


class Fidelity(NamedTuple):
    """How closely a hooked model reproduces the ``transformers`` model's logits."""

    max_abs_diff: float
    """Largest absolute logit difference."""
    max_abs_logit: float
    """Largest absolute logit of the reference: the scale the difference is judged on."""

    @property
    def relative(self) -> float:
        """``max_abs_diff`` over the logit scale, the scale floored at 1 so that nearly
        uniform (random-init) models are judged on absolute error."""
        return self.max_abs_diff / max(self.max_abs_logit, 1.0)


@torch.no_grad()
def logit_fidelity(
    path: str | os.PathLike[str],
    tokens: Int[Tensor, "batch pos"],
    bridge: TransformerBridge | None = None,
) -> Fidelity:
    """Compare the bridge's logits with those of ``AutoModelForCausalLM.from_pretrained(path)``
    on ``tokens``, the reference loaded in the bridge's dtype and on its device (so the
    number measures the loader, not the precision)."""
    folder = require_checkpoint(path)
    bridge = bridge if bridge is not None else load_bridge(folder)
    device = torch.device(bridge.cfg.device or "cpu")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=bridge.cfg.dtype).eval()
    reference.to(device)
    expected = reference(input_ids=tokens.to(device)).logits.float()
    actual = bridge(tokens.to(device), return_type="logits").float()
    del reference
    return Fidelity((actual - expected).abs().max().item(), expected.abs().max().item())
