"""A base model and its RL checkpoints, as one ordered, validated series.

``ModelSeries`` is the entry point of every diff: it names each checkpoint (a label and
an RL step), checks *before any compute* (``validate``, reading only configs, tokenizer
files and safetensors headers) that all checkpoints are comparable — the whole model config
but the fields in ``CONFIG_IGNORED``, the tokenizer vocabulary and special tokens, readable
weight files holding the same tensors — and loads them lazily through TransformerLens, at
most ``max_loaded`` at a time. Index 0 is always the base.

Invariants:
- checkpoints are sorted by step and labels are unique; the device exists on this machine;
- ``load(i)`` returns a model with only finite weights (a NaN or Inf weight is reported by
  its name, as loaded in the series' dtype) whose logits were checked against the plain
  ``transformers`` model on a few tokens (``fidelity[label]`` holds the max abs
  difference), so a diff is never an artefact of the loader.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from .errors import RlinterpError

if TYPE_CHECKING:
    from .harvest import ActivationStore
from .loading import load_bridge, logit_fidelity, require_checkpoint, require_device
from .weight_files import weight_headers

STEP_DIR = re.compile(r"^(?:checkpoint|step|global_step)[-_]?(\d+)$")
"""Checkpoint folder names written by transformers/TRL trainers (``checkpoint-500``),
the organism (``step-5``) and DeepSpeed (``global_step500``)."""

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

FIDELITY_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
"""Largest relative logit difference (``Fidelity.relative``) accepted between the hooked
model and ``transformers`` in the same dtype. Measured: the organism gives ~3e-7 in float32
and 6e-3 to 9e-3 in bfloat16 (CPU and an H200); a random-init 8-layer, d_model 1024 Llama on
the H200 gave absolute differences of 5e-6 (float32), 5e-3 (float16) and 4.7e-2 (bfloat16).
Two implementations round half precision differently, hence the looser bounds; a wrong
loader is off by O(1)."""


@dataclass(frozen=True)
class Checkpoint:
    """One model of the series."""

    label: str
    """Unique, filesystem-safe name (``base``, ``step-25``, ``checkpoint-500``)."""
    step: int
    """RL step; the base model is step 0."""
    path: Path
    """The Hugging Face checkpoint folder."""


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


@dataclass
class ModelSeries:
    """A base checkpoint followed by RL checkpoints, ordered by step."""

    checkpoints: tuple[Checkpoint, ...]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    max_loaded: int = 2
    """Models kept in memory at once (the base and the one being compared)."""
    check_fidelity: bool = True
    fidelity: dict[str, float] = field(default_factory=dict)
    """Label -> max absolute logit difference measured when the model was loaded."""
    _loaded: OrderedDict[str, TransformerBridge] = field(default_factory=OrderedDict, repr=False)
    _validated: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.checkpoints) < 1:
            raise RlinterpError("a model series needs at least one checkpoint")
        labels = [c.label for c in self.checkpoints]
        if len(set(labels)) != len(labels):
            raise RlinterpError(f"checkpoint labels must be unique, got {labels}")
        for c in self.checkpoints:
            require_checkpoint(c.path)
        require_device(self.device)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike[str]], **kwargs: object) -> ModelSeries:
        """The first path is the base; the rest are RL checkpoints in the given order
        (their step is parsed from the folder name when it follows a known layout, else
        their position)."""
        checkpoints = []
        for i, p in enumerate(paths):
            path = Path(p)
            match = STEP_DIR.match(path.name)
            step = 0 if i == 0 else int(match.group(1)) if match else i
            label = "base" if i == 0 else _label(path.name if match else f"{path.parent.name}-{path.name}")
            checkpoints.append(Checkpoint(label, step, path))
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_run_dir(
        cls, run_dir: str | os.PathLike[str], base: str | os.PathLike[str] | None = None, **kwargs: object
    ) -> ModelSeries:
        """The checkpoints of a training run directory (``checkpoint-<N>/``, ``step-<N>/``
        or ``global_step<N>/``), ordered by step. ``base`` defaults to the step-0 folder."""
        root = Path(run_dir)
        if not root.is_dir():
            raise RlinterpError(f"run directory {root} does not exist")
        found = sorted(
            (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))
        )
        if not found:
            raise RlinterpError(
                f"{root} has no checkpoint folders named checkpoint-<N>, step-<N> or global_step<N>"
            )
        if base is None:
            if found[0][0] != 0:
                raise RlinterpError(f"{root} has no step-0 checkpoint; pass the base model folder explicitly")
            base_path, rest = found[0][1], found[1:]
        else:
            base_path, rest = Path(base), [(s, p) for s, p in found if s != 0]
        checkpoints = [Checkpoint("base", 0, base_path)] + [Checkpoint(_label(p.name), s, p) for s, p in rest]
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_store(cls, store: ActivationStore, **kwargs: object) -> ModelSeries:
        """The series an activation store was harvested from (paths from its manifest)."""
        checkpoints = [
            Checkpoint(c["label"], c["step"], Path(c["path"])) for c in store.manifest["checkpoints"]
        ]
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_organism(cls, root: str | os.PathLike[str], regime: str, **kwargs: object) -> ModelSeries:
        """The organism's base and the RL checkpoints of one regime."""
        from .organism import Organism

        organism = Organism.load(Path(root).parent if Path(root).name == "manifest.json" else root)
        steps = organism.checkpoints(regime)
        checkpoints = [Checkpoint("base", 0, organism.base)] + [
            Checkpoint(f"{regime}-step-{s}", s, p) for s, p in steps.items() if s != 0
        ]
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_spec(cls, specs: Sequence[str], regime: str | None = None, **kwargs: object) -> ModelSeries:
        """What the CLI's ``--series`` accepts: one organism directory (or its
        ``manifest.json``) with ``regime``, one training run directory, or several
        checkpoint folders (base first)."""
        if len(specs) > 1:
            return cls.from_paths(specs, **kwargs)
        root = Path(specs[0])
        organism_root = root.parent if root.name == "manifest.json" else root
        if (organism_root / "manifest.json").is_file():
            if regime is None:
                raise RlinterpError(f"{organism_root} is an organism; say which regime to diff with --regime")
            return cls.from_organism(organism_root, regime, **kwargs)
        if root.is_dir() and not (root / "config.json").is_file():
            return cls.from_run_dir(root, None, **kwargs)
        raise RlinterpError(
            f"{root}: give an organism directory, a run directory with checkpoint-<N> folders, "
            "or at least two checkpoint folders (base first)"
        )

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``RlinterpError`` if any checkpoint's weight files are damaged, or if it
        differs from the base in model config (see ``CONFIG_IGNORED``), tokenizer, or the
        names and shapes of its weights. Reads configs, tokenizer files and safetensors
        headers, never the weights themselves. Checks once per series object."""
        if self._validated:
            return
        base = self.checkpoints[0]
        reference = _signature(base.path)
        for other in self.checkpoints[1:]:
            theirs = _signature(other.path)
            for key in sorted(reference.keys() | theirs.keys(), key=_compare_order):
                mine, yours = reference.get(key, _ABSENT), theirs.get(key, _ABSENT)
                if mine != yours:
                    shown = (mine, yours) if key != "tokenizer vocab" else ("...", "...")
                    raise RlinterpError(
                        f"checkpoints {base.label} ({base.path}) and {other.label} ({other.path}) "
                        f"differ in {key}: {shown[0]} vs {shown[1]}"
                    )
        self._validated = True

    # -- loading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    @property
    def base(self) -> Checkpoint:
        return self.checkpoints[0]

    def load(self, checkpoint: Checkpoint) -> TransformerBridge:
        """The hooked model of ``checkpoint``, loading it (and evicting the least recently
        used one beyond ``max_loaded``) if needed."""
        if checkpoint.label in self._loaded:
            self._loaded.move_to_end(checkpoint.label)
            return self._loaded[checkpoint.label]
        while len(self._loaded) >= self.max_loaded:
            self._loaded.popitem(last=False)
        model = load_bridge(checkpoint.path, device=self.device, dtype=self.dtype)
        _require_finite(checkpoint, model, self.dtype)
        if self.check_fidelity and checkpoint.label not in self.fidelity:
            tokens = torch.arange(min(16, model.cfg.d_vocab)).unsqueeze(0)
            fidelity = logit_fidelity(checkpoint.path, tokens, model)
            tolerance = FIDELITY_TOLERANCE.get(self.dtype, FIDELITY_TOLERANCE[torch.float32])
            if not fidelity.relative <= tolerance:  # also catches NaN
                raise RlinterpError(
                    f"TransformerLens does not reproduce {checkpoint.label} ({checkpoint.path}): "
                    f"relative logit difference {fidelity.relative:.2e} > {tolerance:.0e} in "
                    f"{self.dtype}; this architecture is not safe to diff"
                )
            self.fidelity[checkpoint.label] = fidelity.max_abs_diff
        self._loaded[checkpoint.label] = model
        return model

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The series' tokenizer (``validate`` checks that all checkpoints share it)."""
        return AutoTokenizer.from_pretrained(self.base.path)

    def describe(self) -> list[dict[str, object]]:
        """JSON-ready description for manifests."""
        return [{"label": c.label, "step": c.step, "path": str(c.path)} for c in self.checkpoints]


def _signature(folder: Path) -> dict[str, object]:
    """What must match across a series, read from one checkpoint folder: ``config field
    <name>`` for every compared config field, the tokenizer's special tokens and vocabulary,
    and ``weight <name>`` -> shape for every tensor (which validates the weight files)."""
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise RlinterpError(f"cannot read the config or tokenizer of {folder}: {e}") from e
    signature: dict[str, object] = {
        f"config field {key}": value for key, value in _flatten(config.to_dict()).items() if _compared(key)
    }
    signature["tokenizer special tokens"] = json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    signature["tokenizer vocab"] = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    for name, info in weight_headers(folder).items():
        signature[f"the shape of weight {name}"] = info.shape
    return signature


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


def _require_finite(checkpoint: Checkpoint, model: TransformerBridge, dtype: torch.dtype) -> None:
    for wrapped, parameter in model.original_model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            # The bridge wraps each Hugging Face module; unwrapped, the name is the checkpoint's.
            name = wrapped.replace("._original_component", "")
            raise RlinterpError(
                f"weight {name} of {checkpoint.label} ({checkpoint.path}) holds NaN or Inf values "
                f"when loaded in {dtype}; the checkpoint is damaged or does not fit this dtype"
            )
