"""What the readings without a dictionary compute, and with which budgets: ``ReadingsConfig``
(``run_readings``, ``rlinterp readings``, the ``[readings]`` section of ``rlinterp run``) and
the configs of its readings, ``AmplifyConfig`` (amplified sampling), ``PatchscopeConfig``
and ``TopicsConfig``. Torch-free, so a command describes its options without importing
torch; every field's docstring is its ``--help`` text and its comment in a TOML config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..activations.config import SamplingConfig
from ..errors import RlinterpError

Reading = Literal["amplify", "pca", "patchscope", "topics"]
READINGS: tuple[Reading, ...] = ("amplify", "pca", "patchscope", "topics")
"""The readings, in the order ``run_readings`` computes them."""


@dataclass(frozen=True)
class AmplifyConfig:
    """Which amplified models answer, and how they sample."""

    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    """Amplification factors: 0 the base, 1 the checkpoint, above 1 past it."""
    checkpoints: Literal["all", "last"] = "all"
    """Amplify every RL checkpoint of the series, or the last only."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(samples_per_prompt=4))
    """How every amplified model samples (the same seeds for each: common random numbers)."""

    def __post_init__(self) -> None:
        if not self.alphas:
            raise RlinterpError("amplify.alphas is empty; give at least one factor, e.g. [0, 1, 2, 4]")
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad:
            raise RlinterpError(f"amplify.alphas must be finite numbers, got {bad}")
        if len(set(self.alphas)) != len(self.alphas):
            raise RlinterpError(f"amplify.alphas repeats a factor: {list(self.alphas)}")
        if self.checkpoints not in ("all", "last"):
            raise RlinterpError(f"amplify.checkpoints must be 'all' or 'last', got {self.checkpoints!r}")


@dataclass(frozen=True)
class PatchscopeConfig:
    """How a direction is read by patching it into the base."""

    prompt: str = "yes yes\nno no\n1135 1135\n?"
    """The identity-style prompt; the direction replaces the residual stream at its last
    token. Every character must be in the model's vocabulary (the default fits the organism's
    and any byte-level tokenizer)."""
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    """Norms of the patched vector, in multiples of the base's mean residual norm at the hook."""
    top_k: int = 5
    """Next tokens listed per scale (and promoted tokens from the lens)."""
    continuation: int = 8
    """Greedily generated tokens per scale (0: none)."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise RlinterpError("patchscope.prompt is empty; give an identity-style prompt")
        if not self.scales or any(not (s >= 0) or s == float("inf") for s in self.scales):
            raise RlinterpError(
                f"patchscope.scales must be finite non-negative numbers, got {list(self.scales)}"
            )
        if self.top_k < 1 or self.continuation < 0:
            raise RlinterpError(
                f"patchscope.top_k must be positive and continuation non-negative, got {self.top_k}, "
                f"{self.continuation}"
            )


@dataclass(frozen=True)
class TopicsConfig:
    """How the changed positions are chosen and grouped."""

    n_positions: int = 256
    """Positions with the largest KL(post || base) per checkpoint."""
    n_topics: int = 4
    """Topics of the factorisation."""
    context: int = 6
    """Tokens of context per position (the position's own token included)."""
    promoted: int = 3
    """Next tokens per position whose probability rose most."""
    top_tokens: int = 6
    """Tokens listed per topic and block."""
    examples: int = 3
    """Example contexts listed per topic."""
    seed: int = 0
    """Seed of the factorisation's initialisation."""
    n_iter: int = 400
    """Multiplicative updates of the factorisation."""
    checkpoints: Literal["all", "last"] = "all"
    """Find the topics of every RL checkpoint, or of the last only (each is a forward pass of
    the checkpoint over the store's tokens)."""

    def __post_init__(self) -> None:
        for name in ("n_positions", "n_topics", "context", "promoted", "top_tokens", "examples", "n_iter"):
            if getattr(self, name) < 1:
                raise RlinterpError(f"topics.{name} must be positive, got {getattr(self, name)}")
        if self.checkpoints not in ("all", "last"):
            raise RlinterpError(f"topics.checkpoints must be 'all' or 'last', got {self.checkpoints!r}")


@dataclass(frozen=True)
class ReadingsConfig:
    """Which readings, and how (the defaults of ``rlinterp readings``)."""

    readings: tuple[Reading, ...] = READINGS
    """Readings to compute: ``amplify``, ``pca``, ``patchscope`` (needs ``pca``), ``topics``."""
    amplify: AmplifyConfig = field(default_factory=AmplifyConfig)
    """Amplified sampling: factors, checkpoints, sampling."""
    max_prompts: int | None = 64
    """Distinct prompts the amplified models answer on a checkpoint series (the first this
    many; None: all). The organism's models answer its behaviour questions instead."""
    n_components: int = 5
    """Principal components per checkpoint and hook."""
    label: str | None = "persona"
    """Prompt label whose values get a mean projection per component (None: none)."""
    read_components: int = 2
    """Components read by patchscope and lens, besides the mean difference."""
    patchscope: PatchscopeConfig = field(default_factory=PatchscopeConfig)
    """The identity prompt, scales and continuation of the patchscope."""
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    """Changed positions and their factorisation."""
    batch_size: int = 32
    """Prompts per forward pass when the activations are harvested here."""

    def __post_init__(self) -> None:
        unknown = [r for r in self.readings if r not in READINGS]
        if unknown or not self.readings:
            raise RlinterpError(
                f"readings must name some of {', '.join(READINGS)}, got {list(self.readings)}"
            )
        if "patchscope" in self.readings and "pca" not in self.readings:
            raise RlinterpError("the patchscope reads the pca stage's directions; add 'pca' to readings")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise RlinterpError(f"max_prompts must be positive or None, got {self.max_prompts}")
        if self.n_components < 1 or not 0 <= self.read_components <= self.n_components:
            raise RlinterpError(
                f"n_components must be positive and read_components in 0..n_components, got "
                f"{self.n_components}, {self.read_components}"
            )
        if self.batch_size < 1:
            raise RlinterpError(f"batch_size must be positive, got {self.batch_size}")
