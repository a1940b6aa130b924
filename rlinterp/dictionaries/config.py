"""The configs of dictionary training that commands show as options: the knobs shared by
the three methods (``DictionaryConfig``), one SAE's training (``SAETrainConfig``) and the
stage-wise fine-tune (``StagewiseConfig``). Torch-free, so a command describes its options
without importing torch or SAELens; the trainers are in ``sae``, ``crosscoder``, ``train``
and ``stagewise``.

Two recipes keep latents alive (``Recipe``): ``fitted``, the default of every config here
and of ``CrosscoderConfig``, whose options were measured against dictionary_learning's
BatchTopK trainer (README, "The recipe"); and ``legacy``, the recipe before them, kept to
reproduce dictionaries trained with it (``legacy_sae_recipe``, ``crosscoder.LEGACY_RECIPE``).
A manifest written before the recipe options records no recipe: it reads back as legacy
(``SAETrainConfig.recorded``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import RlinterpError
from ..models.device import check_device

if TYPE_CHECKING:
    from .crosscoder import CrosscoderConfig

Architecture = Literal["topk", "batchtopk", "jumprelu", "standard"]
ARCHITECTURES: tuple[Architecture, ...] = ("topk", "batchtopk", "jumprelu", "standard")
Method = Literal["sae", "diff-sae", "crosscoder"]
METHODS: tuple[Method, ...] = ("sae", "diff-sae", "crosscoder")
Recipe = Literal["fitted", "legacy"]
RECIPES: tuple[Recipe, ...] = ("fitted", "legacy")

LEGACY_DEAD_STEPS = 1000
"""SAELens' default dead-feature window, in steps: the legacy SAE recipe's."""


def legacy_sae_recipe(batch_size: int) -> dict[str, Any]:
    """``SAETrainConfig``'s recipe fields as the legacy recipe sets them: SAELens' defaults
    (decoder rows at norm 0.1, zero ``b_dec``, AuxK weight 1 on latents silent for
    ``LEGACY_DEAD_STEPS`` steps of ``batch_size`` tokens) and the rate annealed (cosine) to
    a tenth, without warm-up or final decay."""
    return {
        "decoder_init_norm": 0.1,
        "lr_schedule": "cosine",
        "lr_decay": 0.0,
        "lr_warmup": 0.0,
        "dead_after": LEGACY_DEAD_STEPS * batch_size,
        "aux_coef": 1.0,
        "b_dec_init": "zeros",
    }


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
    recipe: Recipe = "fitted"
    """How training keeps latents alive: ``fitted`` (unit-norm decoder rows, a dead window
    fitted to the budget, a linear decay over the last fifth; measured against
    dictionary_learning, see the README) or ``legacy`` (SAELens' defaults with a cosine
    decay, as before: to reproduce dictionaries trained with it)."""

    def __post_init__(self) -> None:
        for name in ("d_sae", "k", "n_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RlinterpError(f"{name} must be a positive integer, got {value!r}")
        if self.k > self.d_sae:
            raise RlinterpError(f"k ({self.k} active latents) cannot exceed d_sae ({self.d_sae} latents)")
        if self.architecture not in ARCHITECTURES:
            raise RlinterpError(f"unknown architecture {self.architecture!r}; choose one of {ARCHITECTURES}")
        if self.recipe not in RECIPES:
            raise RlinterpError(f"unknown recipe {self.recipe!r}; choose one of {RECIPES}")
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
            **(legacy_sae_recipe(self.batch_size) if self.recipe == "legacy" else {}),
        )

    def crosscoder_config(self, d_in: int, n_models: int) -> CrosscoderConfig:
        from .crosscoder import LEGACY_RECIPE, CrosscoderConfig

        return CrosscoderConfig(
            d_in=d_in,
            d_sae=self.d_sae,
            n_models=n_models,
            k=self.k,
            lr=self.lr,
            batch_size=self.batch_size,
            n_steps=max(1, self.n_tokens // self.batch_size),
            seed=self.seed,
            **(LEGACY_RECIPE if self.recipe == "legacy" else {}),
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
    """Adam learning rate (peak; see ``lr_schedule``)."""
    seed: int = 0
    """Initialisation and data order."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints."""
    device: str = "cpu"
    """Where the SAE trains (batches come from the store on the CPU)."""
    decoder_init_norm: float = 1.0
    """Initial norm of every decoder row (the encoder starts as the decoder's transpose).
    With the TopK kinds' decoder-norm rescaling a row's norm does not change what the SAE
    computes, only how fast Adam turns it: measured on a 64-wide residual stream, SAELens'
    0.1 left 28 of 256 latents dead where 1.0 (dictionary_learning's unit norm) left none."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """The rate between warm-up and decay: constant, or cosine annealing to a tenth."""
    lr_decay: float = 0.2
    """Fraction of the steps, at the end, over which the rate falls linearly to 0
    (dictionary_learning's schedule; measured: held-out FVU 0.0180 against 0.0209 for the
    cosine to a tenth)."""
    lr_warmup: float = 0.0
    """Fraction of the steps over which the rate rises linearly from 0 (measured: no
    effect at these budgets)."""
    dead_after: int | None = None
    """Tokens a latent may stay silent before it counts as dead and the AuxK loss (Gao et
    al. 2024; SAELens' ``aux_loss_coefficient``, TopK kinds) trains it to reconstruct the
    error; None fits the window to the budget: a twentieth of ``n_tokens``, at least one
    batch. (SAELens' default window, 1,000 steps, ends after most short runs.)"""
    aux_coef: float = 1.0
    """Weight of the AuxK loss (SAELens' default; 0 turns it off)."""
    b_dec_init: Literal["zeros", "median"] = "zeros"
    """Initial decoder bias: zeros (SAELens), or the geometric median of the first training
    batch (dictionary_learning), so that latents start by encoding deviations from the
    data's centre rather than the centre itself. Zeros by default: the median gained 0.0002
    in held-out FVU (0.0178 against 0.0180) but, measured on the planted GPT-2 (32 latents,
    k 4, lr 1e-2, 200k tokens), its best decoder row found the planted neuron's direction
    at cosine 0.932 against 0.997 from zeros."""
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
        self._check_recipe()
        check_device(self.device)

    def _check_recipe(self) -> None:
        """The dead-latent and schedule options (the rest of ``__post_init__``)."""
        if self.dead_after is not None and self.dead_after < 1:
            raise RlinterpError(
                f"dead_after must be a positive number of tokens (or None), got {self.dead_after}"
            )
        if not (self.aux_coef >= 0 and math.isfinite(self.aux_coef)):
            raise RlinterpError(f"aux_coef must be non-negative and finite, got {self.aux_coef}")
        if self.b_dec_init not in ("zeros", "median"):
            raise RlinterpError(f"b_dec_init must be zeros or median, got {self.b_dec_init!r}")
        if not (self.lr_warmup >= 0 and self.lr_decay >= 0 and self.lr_warmup + self.lr_decay < 1):
            raise RlinterpError(
                f"lr_warmup and lr_decay are fractions of the steps summing to less than 1, got "
                f"{self.lr_warmup} and {self.lr_decay}"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise RlinterpError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not (self.decoder_init_norm > 0 and math.isfinite(self.decoder_init_norm)):
            raise RlinterpError(
                f"decoder_init_norm must be positive and finite, got {self.decoder_init_norm}"
            )

    @classmethod
    def recorded(cls, config: Mapping[str, Any]) -> SAETrainConfig:
        """The config a dictionary's manifest records. One written before the recipe
        options has no ``decoder_init_norm``: its SAE was trained with the legacy recipe,
        which fills them (today's defaults would describe another training)."""
        if "decoder_init_norm" in config:
            return cls(**config)
        return cls(**{**legacy_sae_recipe(int(config.get("batch_size", cls.batch_size))), **config})

    @property
    def dead_window(self) -> int:
        """``dead_after`` resolved, in steps (SAELens' ``dead_feature_window``)."""
        tokens = self.dead_after if self.dead_after is not None else self.n_tokens // 20
        return max(1, math.ceil(tokens / self.batch_size))


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
