"""rlinterp: mechanistic interpretability of what reinforcement learning does to language
models. One import line in a notebook: ``import rlinterp``."""

from . import figures as figures
from .activation_diff import ActivationDiff as ActivationDiff
from .activation_diff import diff_activations as diff_activations
from .cards import FeatureCard as FeatureCard
from .dictionaries import DictionaryConfig as DictionaryConfig
from .dictionaries import evaluate_dictionary as evaluate_dictionary
from .dictionaries import train_dictionary as train_dictionary
from .diff import SeriesDiff as SeriesDiff
from .diff import run_diff as run_diff
from .errors import RlinterpError as RlinterpError
from .figures import export_figures as export_figures
from .harvest import ActivationStore as ActivationStore
from .harvest import HarvestConfig as HarvestConfig
from .harvest import harvest as harvest
from .loading import load_bridge as load_bridge
from .loading import logit_fidelity as logit_fidelity
from .organism import Organism as Organism
from .organism import OrganismConfig as OrganismConfig
from .organism import build_organism as build_organism
from .output_diff import OutputDiff as OutputDiff
from .output_diff import diff_outputs as diff_outputs
from .pipeline import run as run
from .pipeline import run_pipeline as run_pipeline
from .prompts import PromptSet as PromptSet
from .run_config import RunConfig as RunConfig
from .run_config import load_config as load_config
from .run_result import RunResult as RunResult
from .series import ModelSeries as ModelSeries
from .weight_diff import WeightDiff as WeightDiff
from .weight_diff import diff_weights as diff_weights

__version__ = "0.1.0"
