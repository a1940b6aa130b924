"""The persona model organism: a built-in base model and RL checkpoint series whose answer
is known (see ``personas`` for the world, ``build`` for the artifact layout, ``layout`` for
reading one as data). Names are imported when first used: reading an organism never
imports the code that trains it."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .behaviour import format_table as format_table
    from .build import build_organism as build_organism
    from .config import PRESETS as PRESETS
    from .config import OrganismConfig as OrganismConfig
    from .layout import Organism as Organism
    from .model import build_tokenizer as build_tokenizer
    from .personas import PERSONAS as PERSONAS
    from .personas import classify_answer as classify_answer

__getattr__, __dir__, __all__ = lazy_exports(__name__)
