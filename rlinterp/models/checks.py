"""What a checkpoint series is checked for before any compute, from files alone (configs,
tokenizer files, safetensors headers and, for duplicates, the weight bytes).

- ``check_steps``: steps strictly increase along the series (none out of order or twice);
- ``check_comparable``: every checkpoint agrees with the base in model config (all fields
  but ``CONFIG_IGNORED``), tokenizer, and the names and shapes of its weights, its weight
  files are readable, and an adapter checkpoint fits the base (the model class it was
  trained on, the config of the base its ``adapter_config.json`` names when that is a local
  folder, the shape of every weight it updates); the message names both checkpoints and
  the field;
- ``identical_pairs``: checkpoints holding byte-identical weights (public checkpoint series
  have served the same weights under many step names);
- ``series_dtype``: the dtype a series is loaded in when none is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from ..errors import RlinterpError
from .adapters import LoraAdapter, is_adapter
from .checkpoint import Checkpoint
from .weight_files import TensorInfo, stored_dtype, tensors_digest, weight_headers

# fmt: off
CONFIG_IGNORED = frozenset(
    {
        # where the config came from and how its weights were stored
        "_name_or_path", "name_or_path", "_commit_hash", "transformers_version", "dtype", "torch_dtype",
        # special-token ids: used by generation and padding (tokenizers are compared apart)
        "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
        # labels and classification heads, which a causal LM does not run
        "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "task_specific_params",
        "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
        # what a forward pass returns or how it is scheduled, not what it computes
        "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
        "_attn_implementation", "attn_implementation", "tokenizer_class", "prefix",
        # initialisation only
        "initializer_range",
    }
    # every generation setting (use_cache, max_length, temperature, ...)
    | set(GenerationConfig().to_dict())
)
# fmt: on
"""Model-config fields that may differ across a series because they cannot change what a
forward pass over a sequence computes. Every other field of ``config.json`` (nested ones
such as ``rope_parameters.rope_theta`` included, and ``architectures``) must agree with the
base's; dropout rates (``CONFIG_IGNORED_PARTS``) are ignored too, since models are
evaluated with dropout off."""
CONFIG_IGNORED_PARTS = ("dropout", "pdrop")
"""Substrings of dropout-rate field names (``attn_pdrop``, ``attention_dropout``, ...)."""
CONFIG_FIRST = ("model_type", "architectures")
"""Compared first, so that a different architecture is reported as such rather than as
one of the many fields it changes."""
_ABSENT = "<absent>"
_VOCAB = "tokenizer vocab"


def check_steps(checkpoints: tuple[Checkpoint, ...]) -> None:
    """Raise unless steps strictly increase along the series, naming the offending pair."""
    for before, after in zip(checkpoints, checkpoints[1:], strict=False):
        if after.step == before.step:
            raise RlinterpError(
                f"checkpoints {before.label} ({before.path}) and {after.label} ({after.path}) both have "
                f"step {after.step}; a series holds one checkpoint per step"
            )
        if after.step < before.step:
            raise RlinterpError(
                f"checkpoint {after.label} (step {after.step}) comes after {before.label} (step "
                f"{before.step}); give the checkpoints in step order"
            )


def check_comparable(checkpoints: tuple[Checkpoint, ...]) -> None:
    """Raise unless every checkpoint can be compared with the base (see the module docstring)."""
    base, rest = checkpoints[0], checkpoints[1:]
    base_headers = weight_headers(base.path)
    reference = {**config_signature(base.path), **_tokenizer_signature(base.path)}
    reference |= _weights_signature(base_headers)
    for other in rest:
        if is_adapter(other.path):
            _check_adapter(base, other, base_headers, reference)
            theirs = dict(reference)
            if _has_tokenizer(other.path):  # TRL saves the tokenizer beside the adapter
                theirs |= _tokenizer_signature(other.path)
        else:
            theirs = {**config_signature(other.path), **_tokenizer_signature(other.path)}
            theirs |= _weights_signature(weight_headers(other.path))
        difference = first_difference(reference, theirs)
        if difference:
            raise RlinterpError(
                f"checkpoints {base.label} ({base.path}) and {other.label} ({other.path}) differ in "
                f"{difference}"
            )


def first_difference(mine: dict[str, object], theirs: dict[str, object]) -> str | None:
    """``"<field>: <mine> vs <theirs>"`` for the first field that differs, else None."""
    for key in sorted(mine.keys() | theirs.keys(), key=_compare_order):
        a, b = mine.get(key, _ABSENT), theirs.get(key, _ABSENT)
        if a != b:
            return f"{key}: ... vs ..." if key == _VOCAB else f"{key}: {a} vs {b}"
    return None


def config_signature(folder: Path) -> dict[str, object]:
    """``config field <name>`` -> value for every compared field of a checkpoint's config."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise RlinterpError(f"cannot read the config of {folder}: {e}") from e
    flat = _flatten(config.to_dict())
    return {f"config field {key}": value for key, value in flat.items() if _compared(key)}


def _tokenizer_signature(folder: Path) -> dict[str, object]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise RlinterpError(f"cannot read the tokenizer of {folder}: {e}") from e
    return {
        "tokenizer special tokens": json.dumps(tokenizer.special_tokens_map, sort_keys=True),
        _VOCAB: json.dumps(tokenizer.get_vocab(), sort_keys=True),
    }


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def _weights_signature(headers: dict[str, TensorInfo]) -> dict[str, object]:
    return {f"the shape of weight {name}": info.shape for name, info in headers.items()}


def _check_adapter(
    base: Checkpoint, other: Checkpoint, base_headers: dict[str, TensorInfo], reference: dict[str, object]
) -> None:
    adapter = LoraAdapter.open(other.path)
    architectures = reference.get("config field architectures")
    base_class = architectures[0] if isinstance(architectures, list) and architectures else None
    adapter.check_base(base_headers, base_class, f"{base.label} ({base.path})")
    named = Path(adapter.base_name) if adapter.base_name else None
    if named is not None and named.is_dir() and named.resolve() != Path(base.path).resolve():
        expected = {k: v for k, v in reference.items() if k.startswith("config field ")}
        difference = first_difference(expected, config_signature(named))
        if difference:
            raise RlinterpError(
                f"the adapter {other.label} ({other.path}) was trained on {named} (its "
                f"adapter_config.json says so), which differs from the series' base {base.label} "
                f"({base.path}) in {difference}"
            )


def identical_pairs(checkpoints: tuple[Checkpoint, ...]) -> list[tuple[Checkpoint, Checkpoint]]:
    """``(first, later)`` for every checkpoint whose weights are byte-identical to an
    earlier one's (full checkpoints by tensor bytes, however sharded; adapters by tensor
    bytes and settings). Reads every weight byte once, taking the files' own digests (the
    fingerprints' ``weights_sha256``) in the same read (``core.artifacts.file_digest``)."""
    seen: dict[str, Checkpoint] = {}
    pairs = []
    for checkpoint in checkpoints:
        path = Path(checkpoint.path)
        if is_adapter(path):
            key = "adapter " + LoraAdapter.open(path).digest()
        else:
            key = tensors_digest(path, weight_headers(path))
        if key in seen:
            pairs.append((seen[key], checkpoint))
        else:
            seen[key] = checkpoint
    return pairs


def series_dtype(checkpoints: tuple[Checkpoint, ...]) -> torch.dtype:
    """The widest floating dtype the full checkpoints store (an adapter's own dtype is not
    counted: PEFT keeps adapters in float32 whatever the base). bfloat16 beside float16
    gives float32, which holds both exactly."""
    stored = {stored_dtype(weight_headers(c.path)) for c in checkpoints if not is_adapter(c.path)}
    stored.discard(None)
    if not stored:
        return torch.float32
    if stored == {torch.bfloat16, torch.float16}:
        return torch.float32
    return max((d for d in stored if d is not None), key=lambda d: torch.finfo(d).bits)


def _flatten(config: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and key not in ("id2label", "label2id"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _compared(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    return name not in CONFIG_IGNORED and not any(part in name for part in CONFIG_IGNORED_PARTS)


def _compare_order(key: str) -> tuple[int, str]:
    first = [f"config field {name}" for name in CONFIG_FIRST]
    return (first.index(key), key) if key in first else (len(first), key)
