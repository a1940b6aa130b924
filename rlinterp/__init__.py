"""rlinterp: mechanistic interpretability of what reinforcement learning does to language
models. One import line in a notebook: ``import rlinterp``."""

from .errors import RlinterpError as RlinterpError
from .loading import load_bridge as load_bridge
from .loading import logit_fidelity as logit_fidelity
from .organism import Organism as Organism
from .organism import OrganismConfig as OrganismConfig
from .organism import build_organism as build_organism

__version__ = "0.1.0"
