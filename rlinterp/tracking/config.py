"""What ``run_track`` measures and with which budgets (``TrackConfig``). Torch-free, so a
command describes its options without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..activations.config import SamplingConfig
from ..dictionaries.config import StagewiseConfig
from ..errors import RlinterpError

SourceName = Literal["prompts", "texts", "on-policy"]
SOURCES: tuple[SourceName, ...] = ("prompts", "texts", "on-policy")


@dataclass(frozen=True)
class TrackConfig:
    """What ``run_track`` measures and with which budgets (recorded in ``track.json``)."""

    sources: tuple[SourceName, ...] = SOURCES
    """Token sources to measure on (``texts`` needs prompts with answers)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How each checkpoint samples its on-policy answers."""
    batch_size: int = 32
    """Prompts per harvest batch and shard: the memory bound of harvesting."""
    stagewise: StagewiseConfig = field(default_factory=StagewiseConfig)
    """Budget of each stage-wise fine-tune."""
    independent_tokens: int | None = 100_000
    """Training tokens of each independent per-checkpoint SAE; None: the tracked
    dictionary's own budget."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources or len(set(self.sources)) != len(self.sources):
            raise RlinterpError(
                f"sources must be distinct names from {', '.join(SOURCES)}, got {self.sources}"
            )
        if self.batch_size < 1:
            raise RlinterpError(f"batch_size must be positive, got {self.batch_size}")
        if self.independent_tokens is not None and self.independent_tokens < 1:
            raise RlinterpError(f"independent_tokens must be positive, got {self.independent_tokens}")
