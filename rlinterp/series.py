"""A base model and its RL checkpoints, as one ordered, validated series.

``ModelSeries`` is the entry point of every diff: it names each checkpoint (a label and
an RL step), checks *before any compute* that all checkpoints are comparable (same
architecture, sizes, tokenizer vocabulary and special tokens), and loads them lazily
through TransformerLens, at most ``max_loaded`` at a time. Index 0 is always the base.

Invariants:
- checkpoints are sorted by step and labels are unique;
- ``load(i)`` returns a model whose logits were checked against the plain ``transformers``
  model on a few tokens (``fidelity[label]`` holds the max abs difference), so a diff is
  never an artefact of the loader.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from .errors import RlinterpError
from .loading import load_bridge, logit_fidelity, require_checkpoint

STEP_DIR = re.compile(r"^(?:checkpoint|step|global_step)[-_]?(\d+)$")
"""Checkpoint folder names written by transformers/TRL trainers (``checkpoint-500``),
the organism (``step-5``) and DeepSpeed (``global_step500``)."""

COMPARED_CONFIG = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
"""Config fields that must agree across a series (``hidden_size`` and friends resolve
through each config's attribute map, so GPT-2's ``n_embd`` is compared too)."""

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

    def __post_init__(self) -> None:
        if len(self.checkpoints) < 1:
            raise RlinterpError("a model series needs at least one checkpoint")
        labels = [c.label for c in self.checkpoints]
        if len(set(labels)) != len(labels):
            raise RlinterpError(f"checkpoint labels must be unique, got {labels}")
        for c in self.checkpoints:
            require_checkpoint(c.path)

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
        """Raise if any checkpoint differs from the base in architecture, sizes or
        tokenizer; reads only configs and tokenizer files, never weights."""
        base = self.checkpoints[0]
        reference = _signature(base.path)
        for other in self.checkpoints[1:]:
            theirs = _signature(other.path)
            for key, value in reference.items():
                if theirs[key] != value:
                    shown = (value, theirs[key]) if key != "vocab" else ("...", "...")
                    raise RlinterpError(
                        f"checkpoints {base.label} ({base.path}) and {other.label} ({other.path}) "
                        f"differ in {key}: {shown[0]} vs {shown[1]}"
                    )

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
    """What must match across a series, read from one checkpoint folder."""
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise RlinterpError(f"cannot read the config or tokenizer of {folder}: {e}") from e
    signature: dict[str, object] = {key: getattr(config, key, None) for key in COMPARED_CONFIG}
    signature["architectures"] = json.dumps(config.architectures)
    signature["special tokens"] = json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    signature["vocab"] = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return signature
