"""The configs of dictionary training that commands show as options: the knobs shared by
the three methods (``DictionaryConfig``), one SAE's training (``SAETrainConfig``) and the
stage-wise fine-tune (``StagewiseConfig``). Torch-free, so a command describes its options
without importing torch or SAELens; the trainers are in ``sae``, ``crosscoder``, ``train``
and ``stagewise``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import RlinterpError
from ..models.device import check_device

if TYPE_CHECKING:
    from .crosscoder import CrosscoderConfig

Architecture = Literal["topk", "batchtopk", "jumprelu", "standard"]
ARCHITECTURES: tuple[Architecture, ...] = ("topk", "batchtopk", "jumprelu", "standard")
Method = Literal["sae", "diff-sae", "crosscoder"]
METHODS: tuple[Method, ...] = ("sae", "diff-sae", "crosscoder")


@dataclass(frozen=True)
class DictionaryConfig:
    """Knobs shared by the three methods (each maps them onto its own config)."""

    d_sae: int = 256
    """Number of latents."""
    k: int = 8
    """Active latents per token (TopK, BatchTopK and the crosscoder)."""
    architecture: Architecture = "topk"
    """SAE architecture (``sae`` and ``diff-sae`` only)."""
    n_tokens: int = 300_000
    """Training tokens, repeats included."""
    batch_size: int = 256
    """Tokens per step."""
    lr: float = 3e-3
    """Adam learning rate."""
    seed: int = 0
    """Initialisation and data order."""
    device: str = "cpu"
    """Where the dictionary trains (``cuda`` on a GPU machine); must exist on this machine."""

    def __post_init__(self) -> None:
        for name in ("d_sae", "k", "n_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RlinterpError(f"{name} must be a positive integer, got {value!r}")
        if self.k > self.d_sae:
            raise RlinterpError(f"k ({self.k} active latents) cannot exceed d_sae ({self.d_sae} latents)")
        if self.architecture not in ARCHITECTURES:
            raise RlinterpError(f"unknown architecture {self.architecture!r}; choose one of {ARCHITECTURES}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RlinterpError(f"lr must be a positive, finite number, got {self.lr}")
        if self.device is not None:  # a section's "the run's device"
            check_device(self.device)

    def sae_config(self) -> SAETrainConfig:
        return SAETrainConfig(
            architecture=self.architecture,
            d_sae=self.d_sae,
            k=self.k,
            n_tokens=self.n_tokens,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            device=self.device,
        )

    def crosscoder_config(self, d_in: int, n_models: int) -> CrosscoderConfig:
        from .crosscoder import CrosscoderConfig

        return CrosscoderConfig(
            d_in=d_in,
            d_sae=self.d_sae,
            n_models=n_models,
            k=self.k,
            lr=self.lr,
            batch_size=self.batch_size,
            n_steps=max(1, self.n_tokens // self.batch_size),
            seed=self.seed,
        )


@dataclass(frozen=True)
class SAETrainConfig:
    """How to train one SAE (recorded in ``rlinterp.json``)."""

    architecture: Architecture = "topk"
    """SAELens architecture."""
    d_sae: int = 256
    """Number of latents."""
    k: int = 8
    """Active latents per token (TopK) or per token on average (BatchTopK)."""
    sparsity_coefficient: float = 1.0
    """L1 coefficient (standard) or L0 coefficient (JumpReLU); unused by the TopK kinds."""
    n_tokens: int = 300_000
    """Training samples (tokens seen, repeats included)."""
    batch_size: int = 256
    """Tokens per step."""
    lr: float = 3e-3
    """Adam learning rate, annealed (cosine) to a tenth."""
    seed: int = 0
    """Initialisation and data order."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints."""
    device: str = "cpu"
    """Where the SAE trains (batches come from the store on the CPU)."""
    init_from: str | None = None
    """A saved SAE folder whose weights start training (a warm start, e.g. stage-wise
    fine-tuning on the next checkpoint); None: SAELens' random initialisation. Needs the
    same architecture (``topk`` or ``standard``), ``d_in`` and ``d_sae``."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise RlinterpError(
                f"unknown SAE architecture {self.architecture!r}; choose one of {ARCHITECTURES}"
            )
        for name in ("d_sae", "k", "n_tokens", "batch_size", "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise RlinterpError(f"{name} must be positive, got {getattr(self, name)}")
        if self.architecture in ("topk", "batchtopk") and self.k > self.d_sae:
            raise RlinterpError(f"k ({self.k} active latents) cannot exceed d_sae ({self.d_sae} latents)")
        for name in ("lr", "sparsity_coefficient"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise RlinterpError(f"{name} must be a positive, finite number, got {getattr(self, name)}")
        check_device(self.device)


@dataclass(frozen=True)
class StagewiseConfig:
    """How each stage is fine-tuned (the rest comes from the base SAE's own config)."""

    n_tokens: int = 20_000
    """Training tokens per stage (repeats included): a small budget, so a stage can only
    follow the checkpoint, not relearn the dictionary."""
    lr_scale: float = 0.1
    """Each stage learns at this fraction of the base SAE's learning rate. Measured on the
    planted checkpoints (64 latents, 20k tokens a stage): at a tenth, a stage still finds a
    rewired neuron's new direction (cosine 0.87) while three stages of the base fine-tuned
    on itself turn 3 latents past ``lineage.MOVED_BELOW``; at the full rate, 0.96 and 12."""

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise RlinterpError(f"the stage-wise token budget must be positive, got {self.n_tokens}")
        if not self.lr_scale > 0:
            raise RlinterpError(f"the stage-wise lr_scale must be positive, got {self.lr_scale}")
