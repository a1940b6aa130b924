"""A base model and its RL checkpoints, as one ordered, validated series.

``ModelSeries`` is the entry point of every diff: it names each checkpoint (a label and
an RL step), checks *before any compute* (``validate``, see ``models.checks``: configs,
tokenizer files, safetensors headers, weight bytes for duplicates) that all checkpoints are
comparable, and loads them lazily, at most ``max_loaded`` at a time: each checkpoint once,
as a plain ``transformers`` model (``model``), which the harvest runs with TransformerLens
hook names (``hooked``), and over whose weights TransformerLens' bridge is built when a
stage needs its internals (``load``); see ``loading`` and ``hooked``. Index 0 is always
the base, a full checkpoint; the others are full checkpoints (single-file or sharded
safetensors, any float dtype) or PEFT LoRA adapters over the base.

Layouts read (``from_run_dir``, ``from_paths``): ``checkpoint-<N>/`` (transformers/TRL,
full or adapter), ``step-<N>/`` (the organism), ``global_step<N>/`` (DeepSpeed, once
converted to safetensors) and plain numbered folders ``<N>/``. Real runs save hundreds of
checkpoints; ``select`` keeps a subset.

Invariants:
- steps strictly increase along the series and labels are unique; the device exists here;
- every checkpoint is loaded in one dtype (``dtype``, or the widest dtype the checkpoints
  store), so bf16 weights stay bf16 unless float32 is asked for;
- a loaded model has only finite weights (a NaN or Inf weight is reported by its name, as
  loaded in the series' dtype); an adapter's merged model was checked against PEFT's
  unmerged model on a few tokens before the merge, in the same memory;
- ``load(c)`` returns a bridge whose logits were checked against the plain model already
  in memory (``fidelity[label]`` holds the max abs difference), and ``hooked(c)`` a model
  whose hook sites were checked against the bridge's hooks on the base (the sites depend
  on the architecture alone, which ``validate`` holds equal along the series), so a diff
  is never an artefact of the loader; never is a second copy of a checkpoint's weights
  loaded for a check.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import RlinterpError
from .adapters import LoraAdapter, is_adapter
from .checkpoint import STEP_DIR, Checkpoint
from .checks import check_comparable, check_steps, identical_pairs, series_dtype
from .config import DTYPE_NAMES
from .forms import form, organism_root
from .hooked import HookedModel, HookMap, Site
from .loading import (
    Fidelity,
    bridge_over,
    compare_logits,
    load_adapter,
    load_model,
    require_checkpoint,
    require_device,
)

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

FIDELITY_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
"""Largest relative logit difference (``Fidelity.relative``) accepted between the hooked
model and ``transformers`` in the same dtype. Measured: the organism gives ~3e-7 in float32
and 6e-3 to 9e-3 in bfloat16 (CPU and an H200); a random-init 8-layer, d_model 1024 Llama on
the H200 gave absolute differences of 5e-6 (float32), 5e-3 (float16) and 4.7e-2 (bfloat16).
Two implementations round half precision differently, hence the looser bounds; a wrong
loader is off by O(1)."""


PROBE = torch.arange(16).unsqueeze(0)
"""The tokens every loader check runs on (any ids a vocabulary has will do)."""


@dataclass
class _Loaded:
    """One checkpoint in memory: its model, and the bridge over its weights once built."""

    model: PreTrainedModel
    bridge: TransformerBridge | None = None
    sites: dict[str, Site] = field(default_factory=dict)
    """The bridge's hook sites (``hooked.hook_sites``), found when it was built."""


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def _step_label(path: Path) -> tuple[int, str] | None:
    """Step and label of a folder named in a known layout (``500/`` is labelled step-500)."""
    match = STEP_DIR.match(path.name)
    if not match:
        return None
    step = int(match.group(1))
    return step, f"step-{step}" if path.name.isdigit() else _label(path.name)


@dataclass
class ModelSeries:
    """A base checkpoint followed by RL checkpoints, ordered by step."""

    checkpoints: tuple[Checkpoint, ...]
    device: str = "cpu"
    dtype: torch.dtype | None = None
    """Dtype every model is loaded in; None: the widest floating dtype the full checkpoints
    store (bf16 checkpoints load in bf16; ask for ``torch.float32`` to upcast)."""
    max_loaded: int = 2
    """Models kept in memory at once (the base and the one being compared)."""
    device_map: str | None = None
    """Hugging Face device map (e.g. ``auto``) that splits each full checkpoint over the GPUs
    this process sees, instead of putting it on ``device``; None: all on ``device``."""
    check_fidelity: bool = True
    on_identical: Literal["warn", "error", "ignore"] = "warn"
    """What ``validate`` does about checkpoints holding byte-identical weights: log a
    warning naming both, raise, or skip the check (it reads every weight byte)."""
    fidelity: dict[str, float] = field(default_factory=dict)
    """Label -> max absolute logit difference between the bridge and the plain model, for
    every checkpoint whose bridge was built (for an adapter, also of the merged model against
    base + adapter unmerged: the larger of the two)."""
    _loaded: OrderedDict[str, _Loaded] = field(default_factory=OrderedDict, repr=False)
    _hook_map: HookMap | None = field(default=None, repr=False)
    _validated: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.checkpoints) < 1:
            raise RlinterpError("a model series needs at least one checkpoint")
        check_steps(self.checkpoints)
        labels = [c.label for c in self.checkpoints]
        if len(set(labels)) != len(labels):
            raise RlinterpError(f"checkpoint labels must be unique, got {labels}")
        for c in self.checkpoints:
            require_checkpoint(c.path)
        if is_adapter(self.base.path):
            raise RlinterpError(
                f"the base of a series must be a full checkpoint, but {self.base.path} is an adapter; "
                "give the model it was trained on as the base"
            )
        require_device(self.device)
        if self.on_identical not in ("warn", "error", "ignore"):
            raise RlinterpError(f"on_identical must be warn, error or ignore, got {self.on_identical!r}")
        if self.dtype is None:
            self.dtype = series_dtype(self.checkpoints)

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype every model is loaded in (``dtype``, resolved)."""
        assert self.dtype is not None  # resolved by __post_init__
        return self.dtype

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike[str]], **kwargs: object) -> ModelSeries:
        """The first path is the base; the rest are RL checkpoints in step order (their
        step is parsed from the folder name when it follows a known layout, else their
        position)."""
        checkpoints = [Checkpoint("base", 0, Path(paths[0]))]
        for i, p in enumerate(paths[1:], 1):
            path = Path(p)
            step, label = _step_label(path) or (i, _label(f"{path.parent.name}-{path.name}"))
            checkpoints.append(Checkpoint(label, step, path))
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_run_dir(
        cls, run_dir: str | os.PathLike[str], base: str | os.PathLike[str] | None = None, **kwargs: object
    ) -> ModelSeries:
        """The checkpoints of a training run directory (``checkpoint-<N>/``, ``step-<N>/``,
        ``global_step<N>/`` or ``<N>/``), ordered by step. ``base`` defaults to the step-0
        folder, else to the local base model the adapter checkpoints name."""
        root = Path(run_dir)
        if not root.is_dir():
            raise RlinterpError(f"run directory {root} does not exist")
        found = sorted(
            (parsed[0], parsed[1], p) for p in root.iterdir() if p.is_dir() and (parsed := _step_label(p))
        )
        if not found:
            raise RlinterpError(
                f"{root} has no checkpoint folders named checkpoint-<N>, step-<N>, global_step<N> or <N>"
            )
        if base is None and found[0][0] == 0:
            base_path, rest = found[0][2], found[1:]
        else:
            base_path = Path(base) if base is not None else _named_base(root, [p for _, _, p in found])
            rest = [f for f in found if f[0] != 0]
        checkpoints = [Checkpoint("base", 0, base_path)] + [Checkpoint(label, s, p) for s, label, p in rest]
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_organism(cls, root: str | os.PathLike[str], regime: str, **kwargs: object) -> ModelSeries:
        """The organism's base and the RL checkpoints of one regime."""
        from ..organism.layout import Organism

        organism = Organism.load(organism_root([root]) or root)
        steps = organism.checkpoints(regime)
        checkpoints = [Checkpoint("base", 0, organism.base)] + [
            Checkpoint(f"{regime}-step-{s}", s, p) for s, p in steps.items() if s != 0
        ]
        return cls(tuple(checkpoints), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_spec(
        cls,
        specs: Sequence[str | os.PathLike[str]],
        regime: str | None = None,
        base: str | os.PathLike[str] | None = None,
        **kwargs: object,
    ) -> ModelSeries:
        """What the CLI's ``--series`` (and ``--base``) accept (see ``spec.form``): one
        organism directory (or its ``manifest.json``) with ``regime``; one training run
        directory; or checkpoint folders, base first unless ``base`` is given."""
        found = form(specs)
        if found == "folders":
            return cls.from_paths([base, *specs] if base is not None else specs, **kwargs)
        if found == "organism":
            root = organism_root(specs)
            if regime is None:
                raise RlinterpError(f"{root} is an organism; say which regime to diff with --regime")
            return cls.from_organism(root, regime, **kwargs)  # type: ignore[arg-type]
        return cls.from_run_dir(specs[0], base, **kwargs)

    def select(self, steps: Sequence[int] | None = None, every: int | None = None) -> ModelSeries:
        """The base and some of the RL checkpoints: those at ``steps``, or every
        ``every``-th one (the every-th, 2·every-th, ... and always the last)."""
        rest = self.checkpoints[1:]
        if (steps is None) == (every is None):
            raise RlinterpError("select checkpoints by steps or by every, not both or neither")
        if every is not None:
            if every < 1:
                raise RlinterpError(f"every must be a positive number of checkpoints, got {every}")
            chosen = [c for i, c in enumerate(rest, 1) if i % every == 0 or i == len(rest)]
        else:
            by_step = {c.step: c for c in rest}
            missing = sorted({s for s in steps or () if s not in by_step and s != 0})
            if missing:
                have = sorted(by_step)
                shown = ", ".join(map(str, have[:10])) + (", ..." if len(have) > 10 else "")
                raise RlinterpError(f"no checkpoint at step(s) {missing}; the series has steps {shown}")
            chosen = [by_step[s] for s in sorted(set(steps or ())) if s != 0]
            if not chosen:
                raise RlinterpError(
                    f"--steps {','.join(map(str, steps or ())) or '(none)'} selects no RL checkpoint (step 0 "
                    f"is the base); choose among steps {', '.join(map(str, sorted(by_step)[:10]))}"
                )
        return dataclasses.replace(
            self, checkpoints=(self.base, *chosen), fidelity={}, _loaded=OrderedDict(), _validated=False
        )

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``RlinterpError`` if the checkpoints cannot be compared with the base
        (``series_checks.check_comparable``), and report byte-identical checkpoints as
        ``on_identical`` says. Reads files, never builds a model; once per series object."""
        if self._validated:
            return
        check_comparable(self.checkpoints)
        if self.on_identical != "ignore":
            for first, later in identical_pairs(self.checkpoints):
                message = (
                    f"checkpoints {first.label} ({first.path}) and {later.label} ({later.path}) hold "
                    "byte-identical weights"
                )
                if self.on_identical == "error":
                    raise RlinterpError(f"{message}; leave one out, or allow it with on_identical='warn'")
                log.warning("%s; their diffs against the base will be the same", message)
        self._validated = True

    # -- loading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    @property
    def base(self) -> Checkpoint:
        return self.checkpoints[0]

    def model(self, checkpoint: Checkpoint) -> PreTrainedModel:
        """The plain ``transformers`` model of ``checkpoint`` (eval mode), loading it (and
        evicting the least recently used one beyond ``max_loaded``) if needed."""
        return self._entry(checkpoint).model

    def load(self, checkpoint: Checkpoint) -> TransformerBridge:
        """TransformerLens' bridge over ``checkpoint``'s model (the same weights), built and
        checked against the model on first use."""
        entry = self._entry(checkpoint)
        if entry.bridge is None:
            entry.bridge, entry.sites = self._bridge(checkpoint, entry.model)
        return entry.bridge

    def hooked(self, checkpoint: Checkpoint) -> HookedModel:
        """``checkpoint``'s model answering TransformerLens hook names at the plain
        forward's speed (``hook_map``)."""
        hook_map = self.hook_map()
        return HookedModel(self.model(checkpoint), hook_map.sites, hook_map.cfg, hook_map.tokenizer)

    def hook_map(self) -> HookMap:
        """Which module every hook name of the series' architecture reads, checked on the
        base against the bridge's hooks once per series (``HookMap.build``). A harvest does
        not keep the base's bridge: it needs one copy of the weights, not a bridge's."""
        if self._hook_map is None:
            entry = self._entry(self.base)
            bridge, sites = (
                (entry.bridge, entry.sites)
                if entry.bridge is not None
                else self._bridge(self.base, entry.model)
            )
            self._hook_map = HookMap.build(bridge, sites, entry.model, self._tolerance)
        return self._hook_map

    @property
    def _tolerance(self) -> float:
        return FIDELITY_TOLERANCE.get(self.load_dtype, FIDELITY_TOLERANCE[torch.float32])

    def _entry(self, checkpoint: Checkpoint) -> _Loaded:
        if checkpoint.label in self._loaded:
            self._loaded.move_to_end(checkpoint.label)
            return self._loaded[checkpoint.label]
        while len(self._loaded) >= self.max_loaded:
            self._loaded.popitem(last=False)
        if is_adapter(checkpoint.path):
            model, merge = load_adapter(checkpoint.path, self.base.path, PROBE, self.device, self.load_dtype)
            self._judge(checkpoint, merge, "PEFT's merge")
        else:
            model = load_model(checkpoint.path, self.device, self.load_dtype, self.device_map)
        _require_finite(checkpoint, model, self.load_dtype)
        self._loaded[checkpoint.label] = _Loaded(model)
        return self._loaded[checkpoint.label]

    def _bridge(
        self, checkpoint: Checkpoint, model: PreTrainedModel
    ) -> tuple[TransformerBridge, dict[str, Site]]:
        """The bridge over ``model`` and its hook sites, its logits checked against ``model``'s."""
        folder = self.base.path if is_adapter(checkpoint.path) else checkpoint.path
        bridge, sites = bridge_over(model, folder, self.load_dtype)
        if self.check_fidelity:
            self._judge(checkpoint, compare_logits(bridge, model, PROBE), "TransformerLens")
        return bridge, sites

    def _judge(self, checkpoint: Checkpoint, fidelity: Fidelity, what: str) -> None:
        """Raise if ``what`` does not reproduce ``checkpoint`` within the dtype's tolerance;
        else record the difference."""
        if not fidelity.relative <= self._tolerance:  # also catches NaN
            raise RlinterpError(
                f"{what} does not reproduce {checkpoint.label} ({checkpoint.path}): "
                f"relative logit difference {fidelity.relative:.2e} > {self._tolerance:.0e} in "
                f"{self.load_dtype}; this architecture is not safe to diff"
            )
        self.fidelity[checkpoint.label] = max(self.fidelity.get(checkpoint.label, 0.0), fidelity.max_abs_diff)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The series' tokenizer (``validate`` checks that all checkpoints share it)."""
        return AutoTokenizer.from_pretrained(self.base.path)

    def describe(self) -> list[dict[str, object]]:
        """JSON-ready description for manifests: label, step, path, the dtype the models
        are loaded in, and whether the checkpoint is an adapter over the base."""
        dtype = str(self.load_dtype).removeprefix("torch.")
        return [
            {
                "label": c.label,
                "step": c.step,
                "path": str(c.path),
                "dtype": dtype,
                "adapter": is_adapter(c.path),
            }
            for c in self.checkpoints
        ]


def _named_base(root: Path, folders: list[Path]) -> Path:
    """The base model that the adapter checkpoints of a run name, if it is a local folder."""
    adapters = [LoraAdapter.open(p) for p in folders if is_adapter(p)]
    names = {a.base_name for a in adapters}
    if not adapters:
        raise RlinterpError(
            f"{root} has no step-0 checkpoint; pass the base model folder explicitly (--base)"
        )
    if len(names) != 1 or None in names:
        raise RlinterpError(
            f"the adapters in {root} name {len(names - {None})} different base models "
            f"({sorted(n for n in names if n)[:3]}); pass the base model folder explicitly (--base)"
        )
    name = str(next(iter(names)))
    if not Path(name).is_dir():
        raise RlinterpError(
            f"the adapters in {root} name the base model {name!r} (adapter_config.json), which is not a "
            "local folder; pass the base model folder explicitly (--base)"
        )
    return Path(name)


def _require_finite(checkpoint: Checkpoint, model: PreTrainedModel, dtype: torch.dtype) -> None:
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            raise RlinterpError(
                f"weight {name} of {checkpoint.label} ({checkpoint.path}) holds NaN or Inf values "
                f"when loaded in {dtype}; the checkpoint is damaged or does not fit this dtype"
            )
