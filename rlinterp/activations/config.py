"""The configs of harvesting: what a store holds (``HarvestConfig``) and how a checkpoint
samples its own answers (``SamplingConfig``). Torch-free, so commands describe their options
without importing torch; ``harvest`` and ``onpolicy`` use them."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RlinterpError
from ..models.config import DTYPE_NAMES, DtypeName


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest and how (recorded in the store's manifest)."""

    hooks: tuple[str, ...] | None = None
    """Hook names; None means the residual stream after every block."""
    batch_size: int = 32
    """Prompts per forward pass and per shard: the memory bound."""
    max_length: int | None = None
    """Truncate prompts to this many tokens (default: the model's context)."""
    include_bos: bool = False
    """Keep the BOS / attention-sink position in statistics."""
    response_only: bool = False
    """Keep only response tokens (prompts need a prompt/response split)."""
    store_dtype: DtypeName = "float32"
    """Dtype of the stored activations; bfloat16 and float16 halve the bytes (readers
    upcast to float32)."""
    max_tokens: int | None = None
    """Token budget: store a uniform random sample of at most this many of the kept tokens
    (None: all)."""
    token_seed: int = 0
    """Seed of the ``max_tokens`` sample."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise RlinterpError(f"batch_size must be positive, got {self.batch_size}")
        if self.store_dtype not in DTYPE_NAMES:
            raise RlinterpError(
                f"store_dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.store_dtype!r}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RlinterpError(f"max_tokens must be positive (or None for all), got {self.max_tokens}")
        if self.max_length is not None and self.max_length < 2:
            raise RlinterpError(f"max_length must leave room for BOS and one token, got {self.max_length}")
        if self.hooks is not None and not self.hooks:
            raise RlinterpError("hooks is empty; give at least one hook name, or None for the default")


@dataclass(frozen=True)
class SamplingConfig:
    """How each checkpoint samples its own answers (recorded in the manifest)."""

    samples_per_prompt: int = 1
    """Answers drawn per prompt; 0 is an error (nothing would be measured)."""
    max_new_tokens: int = 48
    """Sampling stops here if no stop token came; 0 is an error."""
    temperature: float = 1.0
    """Softmax temperature (1: the model's own distribution, what RL sampled from)."""
    seed: int = 0
    """Seeds every generation batch (the same numbers for every checkpoint)."""
    batch_size: int = 64
    """Prompts per ``generate`` call: the memory bound of sampling."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise RlinterpError(
                f"the sampling budget is zero (samples_per_prompt={self.samples_per_prompt}, "
                f"max_new_tokens={self.max_new_tokens}); give at least one sample of one token"
            )
        if not self.temperature > 0:
            raise RlinterpError(f"temperature must be positive, got {self.temperature}")
        if self.batch_size < 1:
            raise RlinterpError(f"batch_size must be positive, got {self.batch_size}")
