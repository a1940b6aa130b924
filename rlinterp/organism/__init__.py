"""The persona model organism: a built-in base model and RL checkpoint series whose answer
is known (see ``personas`` for the world, ``build`` for the artifact layout)."""

from .behaviour import format_table as format_table
from .build import Organism as Organism
from .build import build_organism as build_organism
from .config import PRESETS as PRESETS
from .config import OrganismConfig as OrganismConfig
from .model import build_tokenizer as build_tokenizer
from .personas import PERSONAS as PERSONAS
from .personas import classify_answer as classify_answer
