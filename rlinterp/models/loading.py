"""Loading Hugging Face checkpoint folders into TransformerLens, offline, with a check that
the hooked model computes what the plain ``transformers`` model computes.

``TransformerBridge.boot_transformers(local_dir)`` is the loading path (see DESIGN.md):
it opens any local checkpoint without the hub and is the only path TransformerLens 4
keeps. A diff between checkpoints is only meaningful if the loader reproduces each model
exactly, so ``logit_fidelity`` measures the largest logit difference between the bridge
and ``AutoModelForCausalLM`` on the same tokens.

A PEFT LoRA adapter checkpoint (see ``adapters``) is loaded over its ``base``: the merged
``transformers`` model is handed to the same ``boot_transformers`` (``hf_model=``; with the
base folder's config and tokenizer), and its fidelity reference is base + adapter unmerged.

Large checkpoints load in the dtype they store (``series_checks.series_dtype``) and, with a
Hugging Face ``device_map`` (``"auto"``, ``"balanced"`` or an explicit map), split over the
GPUs this process sees (the bridge's accelerate dispatch); the fidelity reference is then
dispatched with the same map.
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

from ..errors import RlinterpError
from .adapters import ADAPTER_WEIGHTS, is_adapter, merged_model, reference_model
from .device import require_device as require_device
from .weight_files import WEIGHT_FILES


def require_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or an error naming what is missing from a checkpoint folder (a
    full checkpoint, or a PEFT adapter)."""
    folder = Path(path)
    if not folder.is_dir():
        raise RlinterpError(f"checkpoint folder {folder} does not exist")
    if is_adapter(folder):
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise RlinterpError(
                f"{folder} is an adapter checkpoint without {ADAPTER_WEIGHTS}; "
                "re-save it with save_pretrained(..., safe_serialization=True)"
            )
        return folder
    if not (folder / "config.json").is_file():
        raise RlinterpError(
            f"{folder} is not a Hugging Face checkpoint: it has no config.json (nor adapter_config.json)"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        zero = (
            " (DeepSpeed ZeRO shards: convert them with zero_to_fp32.py)" if any(folder.glob("*.pt")) else ""
        )
        raise RlinterpError(
            f"{folder} has no safetensors weights ({' or '.join(WEIGHT_FILES)}){zero}; "
            "re-save it with save_pretrained(..., safe_serialization=True)"
        )
    return folder


def load_bridge(
    path: str | os.PathLike[str],
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    base: str | os.PathLike[str] | None = None,
    device_map: str | None = None,
) -> TransformerBridge:
    """A checkpoint folder as a hooked TransformerLens model, never touching the hub. An
    adapter checkpoint needs the ``base`` folder it is merged into. ``device_map`` (instead
    of ``device``) splits a full checkpoint over several devices."""
    folder = require_checkpoint(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if device_map is not None and is_adapter(folder):
        raise RlinterpError(
            f"{folder} is an adapter checkpoint, which loads on one device; drop the device map"
        )
    if device_map is not None:
        return TransformerBridge.boot_transformers(str(folder), device_map=device_map, dtype=dtype)
    if not is_adapter(folder):
        return TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)
    if base is None:
        raise RlinterpError(f"{folder} is an adapter checkpoint; give the base model folder it applies to")
    merged = merged_model(require_checkpoint(base), folder, dtype, device)
    return TransformerBridge.boot_transformers(str(base), hf_model=merged, device=device, dtype=dtype)


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
    base: str | os.PathLike[str] | None = None,
    device_map: str | None = None,
) -> Fidelity:
    """Compare the bridge's logits with those of ``AutoModelForCausalLM.from_pretrained(path)``
    (for an adapter: ``base`` with the adapter applied unmerged) on ``tokens``, the reference
    loaded in the bridge's dtype and on its device (so the number measures the loader, not
    the precision)."""
    folder = require_checkpoint(path)
    bridge = bridge if bridge is not None else load_bridge(folder, base=base)
    device = torch.device(bridge.cfg.device or "cpu")
    if is_adapter(folder):
        if base is None:
            raise RlinterpError(
                f"{folder} is an adapter checkpoint; give the base model folder it applies to"
            )
        reference = reference_model(base, folder, bridge.cfg.dtype, str(device))
    elif device_map is not None:  # dispatched like the bridge; inputs go to its first device
        reference = AutoModelForCausalLM.from_pretrained(
            folder, dtype=bridge.cfg.dtype, device_map=device_map
        ).eval()
        device = reference.get_input_embeddings().weight.device
    else:
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=bridge.cfg.dtype).eval()
        reference.to(device)
    expected = reference(input_ids=tokens.to(device)).logits.float()
    actual = bridge(tokens.to(device), return_type="logits").float()
    del reference
    return Fidelity((actual - expected).abs().max().item(), expected.abs().max().item())
