"""Selection of what the base computes versus new computation: persona directions and latents,
the index with its interval and transition, and causal checks. Names are imported when first
used (``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .analysis import SelectionResult as SelectionResult
    from .analysis import run_selection as run_selection
    from .causal import CausalResult as CausalResult
    from .causal import steer_and_ablate as steer_and_ablate
    from .config import IndexConfig as IndexConfig
    from .config import SelectionConfig as SelectionConfig
    from .explanation import step_parts as step_parts
    from .index import NoveltyIndex as NoveltyIndex
    from .index import novelty_index as novelty_index
    from .personas import PersonaDirections as PersonaDirections
    from .personas import persona_directions as persona_directions
    from .personas import persona_latents as persona_latents

__getattr__, __dir__, __all__ = lazy_exports(__name__)
