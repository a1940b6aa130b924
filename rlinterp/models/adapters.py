"""PEFT LoRA adapter checkpoints, read as the series' base plus the merged adapter.

RL post-training with TRL and PEFT saves ``checkpoint-N/`` folders holding only
``adapter_config.json`` and ``adapter_model.safetensors``; the model they stand for is the
base model with each targeted weight ``W`` replaced by ``W + s * B A`` (``B A`` of rank
``r``, ``s = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA; transposed for GPT-2's
``Conv1D``, whose weights are stored as (in, out)).

- ``LoraAdapter.open(folder)`` reads the config (LoRA only) and validates the weight
  file's header; ``check_base`` compares what the adapter expects with a base checkpoint
  before any compute: the model class it was trained on and the shape of every weight it
  updates or replaces.
- ``merged_model`` loads the base with ``transformers`` and merges the adapter with PEFT
  (``merge_and_unload``): the model that is harvested and whose weights are diffed.
- ``reference_model`` is base + adapter *unmerged* (PEFT's forward adds ``s * B A x`` on
  the side): an independent reference for the loader-fidelity check of the merged model.

Adapter tensors are named ``base_model.model.<module>.lora_A.weight`` (``lora_embedding_A``
for embeddings); full tensors an adapter saves (``modules_to_save``, an embedding's
``base_layer``) replace the base weight of the same name.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..errors import RlinterpError
from .checkpoint import ADAPTER_CONFIG as ADAPTER_CONFIG
from .weight_files import TensorInfo, read_header, tensors_digest, weight_headers

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?:lora_(?P<linear>[AB])\.weight|lora_embedding_(?P<embedding>[AB]))$"
)
_FULL = re.compile(r"^(?P<module>.+?)(?:\.base_layer)?\.(?P<param>weight|bias)$")
_INFORMATIONAL = ("base_model_name_or_path", "revision", "inference_mode", "peft_version")
"""Adapter-config keys that do not change the model an adapter stands for."""


def is_adapter(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is an adapter checkpoint: an adapter config and no full weights."""
    folder = Path(folder)
    full = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return (folder / ADAPTER_CONFIG).is_file() and not full


@dataclass(frozen=True)
class LoraUpdate:
    """The low-rank update of one base weight."""

    weight: str
    """The base weight it updates (``<module>.weight``)."""
    rank: int
    """r: the update's rank is at most this."""
    a: TensorInfo
    b: TensorInfo
    embedding: bool
    """An embedding update (``A`` is (r, vocab), ``B`` is (d, r); the weight is (vocab, d))."""


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter checkpoint folder, read from its config and weight header."""

    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    """Header of ``adapter_model.safetensors``, keyed by its tensor names."""

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> LoraAdapter:
        folder = Path(folder)
        path = folder / ADAPTER_CONFIG
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RlinterpError(f"{path} is not a readable adapter config: {e}") from e
        if not isinstance(config, dict):
            raise RlinterpError(f"{path} is not a JSON object")
        if config.get("peft_type") != "LORA":
            raise RlinterpError(
                f"{folder} is a {config.get('peft_type')!r} adapter; rlinterp reads LoRA adapters only"
            )
        weights = folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise RlinterpError(
                f"{folder} has no {ADAPTER_WEIGHTS}; re-save the adapter with safe_serialization=True"
            )
        adapter = cls(folder, config, read_header(weights))
        adapter.check_config()
        return adapter

    @property
    def base_name(self) -> str | None:
        """The base model the adapter config names (a local path or a hub id), if any."""
        name = self.config.get("base_model_name_or_path")
        return name if isinstance(name, str) and name else None

    @property
    def base_class(self) -> str | None:
        """The model class the adapter was trained on (e.g. ``LlamaForCausalLM``), if saved."""
        mapping = self.config.get("auto_mapping")
        name = mapping.get("base_model_class") if isinstance(mapping, dict) else None
        return name if isinstance(name, str) else None

    def updates(self) -> dict[str, LoraUpdate]:
        """Base weight name -> its low-rank update."""
        factors: dict[tuple[str, bool], dict[str, TensorInfo]] = {}
        for key, info in self.tensors.items():
            match = _FACTOR.match(key.removeprefix(PREFIX))
            if match:
                side = match.group("linear") or match.group("embedding")
                factors.setdefault((match.group("module"), bool(match.group("embedding"))), {})[side] = info
        updates = {}
        for (module, embedding), pair in factors.items():
            if set(pair) != {"A", "B"}:
                raise RlinterpError(
                    f"{self.folder / ADAPTER_WEIGHTS} holds only lora_{next(iter(pair))} of {module}"
                )
            a, b = pair["A"], pair["B"]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise RlinterpError(
                    f"{self.folder / ADAPTER_WEIGHTS}: lora_A {a.shape} and lora_B {b.shape} of {module} "
                    "do not multiply"
                )
            updates[f"{module}.weight"] = LoraUpdate(f"{module}.weight", a.shape[0], a, b, embedding)
        return updates

    def check_config(self) -> None:
        """Raise ``RlinterpError`` if ``adapter_config.json`` disagrees with the weights: an
        update whose rank is not the ``r`` (or ``rank_pattern``) the config gives its module
        (PEFT would fail to load it, or load a truncated one), or one of a module that
        ``target_modules`` does not name (PEFT would drop it silently)."""
        where = f"{self.folder / ADAPTER_CONFIG} disagrees with {ADAPTER_WEIGHTS}"
        targets, patterns = self.config.get("target_modules"), self.config.get("rank_pattern") or {}
        for name, update in sorted(self.updates().items()):
            module = name.removesuffix(".weight")
            if not _targeted(module, targets):
                raise RlinterpError(
                    f"{where}: the weights update {module}, which target_modules {targets} does not name "
                    "(PEFT would drop it); save the adapter again or fix target_modules"
                )
            matched = [r for key, r in patterns.items() if re.fullmatch(rf"(.*\.)?{key}", module)]
            rank = matched[0] if matched else self.config.get("r")
            if rank != update.rank:
                raise RlinterpError(
                    f"{where}: {module} has a rank-{update.rank} update, but the config says r = {rank}; "
                    "save the adapter again or fix r (or rank_pattern)"
                )

    def replaced(self) -> dict[str, TensorInfo]:
        """Base weight name -> a full tensor the adapter saved for it (``modules_to_save``,
        an embedding's ``base_layer``)."""
        full = {}
        for key, info in self.tensors.items():
            name = key.removeprefix(PREFIX)
            if _FACTOR.match(name) or "lora_" in name:
                continue
            match = _FULL.match(name)
            if match:
                full[f"{match.group('module')}.{match.group('param')}"] = info
        return full

    def ranks(self) -> dict[str, int]:
        """Base weight name -> the rank r of its update."""
        return {name: update.rank for name, update in self.updates().items()}

    def check_base(self, base: dict[str, TensorInfo], base_class: str | None, base_label: str) -> None:
        """Raise ``RlinterpError`` if the base (its weight headers and model class) is not
        one this adapter can be merged into; ``base_label`` names it in the message."""
        if self.base_class and base_class and self.base_class != base_class:
            raise RlinterpError(
                f"the adapter {self.folder} was trained on a {self.base_class} (its {ADAPTER_CONFIG} "
                f"says so in auto_mapping.base_model_class) but the series' base {base_label} is a "
                f"{base_class}"
            )
        for name, update in sorted(self.updates().items()):
            if name not in base:
                raise RlinterpError(
                    f"the adapter {self.folder} updates {name}, which the series' base {base_label} "
                    "does not have; it was trained on another base"
                )
            out, r, inner = update.b.shape[0], update.rank, update.a.shape[1]
            expected = [(inner, out)] if update.embedding else [(out, inner), (inner, out)]
            if base[name].shape not in expected:
                raise RlinterpError(
                    f"the adapter {self.folder} updates {name} with a rank-{r} ({out} x {inner}) matrix "
                    f"but the series' base {base_label} holds it with shape {base[name].shape}; it was "
                    "trained on another base"
                )
        for name, info in sorted(self.replaced().items()):
            if name in base and base[name].shape != info.shape:
                raise RlinterpError(
                    f"the adapter {self.folder} replaces {name} with shape {info.shape} but the series' "
                    f"base {base_label} holds it with shape {base[name].shape}; it was trained on another "
                    "base (or with a resized vocabulary)"
                )

    def digest(self) -> str:
        """Equal for two adapters holding the same tensors and settings."""
        settings = {k: v for k, v in self.config.items() if k not in _INFORMATIONAL}
        return tensors_digest(self.folder, self.tensors) + json.dumps(settings, sort_keys=True, default=str)


def _targeted(module: str, targets: object) -> bool:
    """Whether PEFT's ``target_modules`` names ``module``: a regex matching the whole name, a
    list of names it ends with, or what the config cannot be checked against (``all-linear``,
    PEFT's per-architecture default)."""
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    if isinstance(targets, list):
        return any(module == t or module.endswith(f".{t}") for t in targets)
    return True


def _base_model(base: Path, dtype: torch.dtype, device: str, eager: bool = True) -> PreTrainedModel:
    # Loaded as TransformerLens loads a checkpoint folder itself (eager attention, attention
    # outputs on), so the bridge built on it has the same hooks; or (``eager=False``) as
    # transformers loads it, at its default attention's speed.
    settings: dict[str, Any] = {"attn_implementation": "eager", "output_attentions": True} if eager else {}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **settings)
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to hides its signature
    return model.eval()


def _with_adapter(base: Path, adapter: Path, dtype: torch.dtype, device: str, eager: bool = True) -> Any:
    from peft import PeftModel

    with warnings.catch_warnings():
        # PEFT re-derives fan_in_fan_out for GPT-2's Conv1D and says so; that is not ours to fix.
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to", category=UserWarning)
        return PeftModel.from_pretrained(_base_model(base, dtype, device, eager), str(adapter)).eval()


def merged_model(
    base: str | os.PathLike[str], adapter: str | os.PathLike[str], dtype: torch.dtype, device: str = "cpu"
) -> PreTrainedModel:
    """The base with the adapter merged into its weights (a plain ``transformers`` model)."""
    merged: PreTrainedModel = _with_adapter(Path(base), Path(adapter), dtype, device).merge_and_unload()
    return merged.eval()


def reference_model(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    dtype: torch.dtype,
    device: str = "cpu",
    eager: bool = True,
) -> Any:
    """The base with the adapter applied beside each weight, unmerged (PEFT's own forward;
    ``merge_and_unload()`` turns it into the merged model in place). ``eager``: attention
    as TransformerLens needs it, else transformers' default."""
    return _with_adapter(Path(base), Path(adapter), dtype, device, eager)


@torch.no_grad()
def merged_state_dict(base: str | os.PathLike[str], adapter: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The merged weights in float32 (on CPU), under the names the base's weight files use
    (so tied weights appear once, as in the base)."""
    names = weight_headers(base).keys()
    state = merged_model(base, adapter, torch.float32).state_dict()
    return {name: state[name].detach().clone() for name in names}
