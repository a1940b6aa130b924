"""rlinterp: mechanistic interpretability of what reinforcement learning does to language
models. One import line in a notebook: ``import rlinterp``."""

from .activation_diff import ActivationDiff as ActivationDiff
from .activation_diff import diff_activations as diff_activations
from .diff import SeriesDiff as SeriesDiff
from .diff import run_diff as run_diff
from .errors import RlinterpError as RlinterpError
from .harvest import ActivationStore as ActivationStore
from .harvest import HarvestConfig as HarvestConfig
from .harvest import harvest as harvest
from .lineage import LineageThresholds as LineageThresholds
from .lineage import lineage_table as lineage_table
from .loading import load_bridge as load_bridge
from .loading import logit_fidelity as logit_fidelity
from .matching import DictionaryMatch as DictionaryMatch
from .matching import match_dictionaries as match_dictionaries
from .onpolicy import SamplingConfig as SamplingConfig
from .onpolicy import harvest_on_policy as harvest_on_policy
from .organism import Organism as Organism
from .organism import OrganismConfig as OrganismConfig
from .organism import build_organism as build_organism
from .output_diff import OutputDiff as OutputDiff
from .output_diff import diff_outputs as diff_outputs
from .prompts import PromptSet as PromptSet
from .series import ModelSeries as ModelSeries
from .stagewise import StagewiseConfig as StagewiseConfig
from .track import TrackConfig as TrackConfig
from .track import run_track as run_track
from .track_result import TrackResult as TrackResult
from .weight_diff import WeightDiff as WeightDiff
from .weight_diff import diff_weights as diff_weights

__version__ = "0.1.0"
