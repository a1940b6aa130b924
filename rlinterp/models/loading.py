"""Loading Hugging Face checkpoint folders, offline: once, as a plain ``transformers``
model, with TransformerLens' bridge built over the same weights when a stage needs it, and a
check that the bridge computes what the plain model computes.

``load_model`` opens a checkpoint as ``AutoModelForCausalLM`` at its default attention: the
model a harvest runs (``hooked``). ``bridge_over`` builds ``TransformerBridge`` over a
structural copy of that model that shares its weights (``hooked.shared_clone``), and
returns with it the hook sites its names map to, so one copy of each checkpoint's weights
serves both. A diff between checkpoints is only meaningful if the bridge reproduces each
model exactly, so ``compare_logits`` measures the largest logit difference between the
bridge and the plain model on the same tokens (the model already in memory: never a second
copy). ``load_bridge`` and ``logit_fidelity`` are the standalone forms
(``TransformerBridge.boot_transformers(local_dir)``, DESIGN.md; a reference loaded from disk).

A PEFT LoRA adapter checkpoint (see ``adapters``) is loaded over its ``base``: base +
adapter unmerged is run on the check's tokens, merged in place (``merge_and_unload``) and
run again (``merge_fidelity``); the merged model is the checkpoint's model, and its bridge
takes the base folder's config and tokenizer.

Large checkpoints load in the dtype they store (``series_checks.series_dtype``) and, with a
Hugging Face ``device_map`` (``"auto"``, ``"balanced"`` or an explicit map), split over the
GPUs this process sees (the bridge's accelerate dispatch); the fidelity reference is then
dispatched with the same map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..errors import RlinterpError
from .adapters import ADAPTER_WEIGHTS, is_adapter, merged_model, reference_model
from .device import require_device as require_device
from .hooked import Site, hook_sites, shared_clone
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


def load_model(
    path: str | os.PathLike[str],
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    device_map: str | None = None,
) -> PreTrainedModel:
    """A full checkpoint folder as a plain ``transformers`` model (default attention, eval
    mode), never touching the hub; ``device_map`` (instead of ``device``) splits it over
    several devices. Adapters: ``load_adapter``."""
    folder = require_checkpoint(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if is_adapter(folder):
        raise RlinterpError(f"{folder} is an adapter checkpoint; load it over its base with load_adapter")
    if device_map is not None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to hides its signature
    return model.eval()


@torch.no_grad()
def load_adapter(
    path: str | os.PathLike[str],
    base: str | os.PathLike[str],
    tokens: Int[Tensor, "batch pos"],
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, Fidelity]:
    """The adapter checkpoint at ``path`` merged into ``base`` (one copy of the weights),
    and how closely the merged model reproduces base + adapter unmerged on ``tokens`` (run
    before the merge, on the same weights)."""
    folder, base_folder = require_checkpoint(path), require_checkpoint(base)
    os.environ["HF_HUB_OFFLINE"] = "1"
    unmerged = reference_model(base_folder, folder, dtype, device, eager=False)
    expected = unmerged(input_ids=tokens.to(device)).logits.float()
    model: PreTrainedModel = unmerged.merge_and_unload().eval()
    actual = model(input_ids=tokens.to(device)).logits.float()
    return model, Fidelity((actual - expected).abs().max().item(), expected.abs().max().item())


def bridge_over(
    model: PreTrainedModel, folder: str | os.PathLike[str], dtype: torch.dtype
) -> tuple[TransformerBridge, dict[str, Site]]:
    """TransformerLens' bridge over ``model``'s weights (a structural copy sharing them; see
    ``hooked``), with ``folder``'s tokenizer, and the hook sites its names map to."""
    clone: Any = shared_clone(model)
    # The bridge hooks attention patterns, which only eager attention computes; the copy
    # has its own config, so the plain model keeps its attention.
    clone.set_attn_implementation("eager")
    clone.config.output_attentions = True
    paths = {id(module): name for name, module in clone.named_modules()}
    on_one_device = getattr(model, "hf_device_map", None) is None
    bridge = TransformerBridge.boot_transformers(
        str(folder), hf_model=clone, device=str(model.device) if on_one_device else None, dtype=dtype
    )
    return bridge, hook_sites(bridge, paths)


@torch.no_grad()
def compare_logits(
    bridge: TransformerBridge, reference: torch.nn.Module, tokens: Int[Tensor, "batch pos"]
) -> Fidelity:
    """The bridge's logits against ``reference``'s on ``tokens`` (inputs on the
    reference's input-embedding device)."""
    device = reference.get_input_embeddings().weight.device  # type: ignore[operator]
    expected = reference(input_ids=tokens.to(device)).logits.float()
    actual = bridge(tokens.to(device), return_type="logits").float()
    return Fidelity((actual.to(device) - expected).abs().max().item(), expected.abs().max().item())


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
    elif device_map is not None:  # dispatched like the bridge
        reference = AutoModelForCausalLM.from_pretrained(
            folder, dtype=bridge.cfg.dtype, device_map=device_map
        ).eval()
    else:
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=bridge.cfg.dtype).eval()
        reference.to(device)
    fidelity = compare_logits(bridge, reference, tokens)
    del reference
    return fidelity
