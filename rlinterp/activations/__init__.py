"""Tokens and activations: prompt sets, the streamed on-disk activation store every model of a
series is harvested into, and on-policy tokens that each checkpoint writes itself. Names are
imported when first used (``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .config import HarvestConfig as HarvestConfig
    from .config import SamplingConfig as SamplingConfig
    from .harvest import ActivationStore as ActivationStore
    from .harvest import TokenBatch as TokenBatch
    from .harvest import harvest as harvest
    from .onpolicy import harvest_on_policy as harvest_on_policy
    from .prompts import PromptSet as PromptSet

__getattr__, __dir__, __all__ = lazy_exports(__name__)
