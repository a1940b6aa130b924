"""rlinterp: mechanistic interpretability of what reinforcement learning does to language
models. One import line in a notebook: ``import rlinterp``."""

from .activation_diff import ActivationDiff as ActivationDiff
from .activation_diff import diff_activations as diff_activations
from .causal import CausalResult as CausalResult
from .causal import steer_and_ablate as steer_and_ablate
from .crosscoder import Crosscoder as Crosscoder
from .crosscoder import CrosscoderConfig as CrosscoderConfig
from .dictionaries import DictionaryConfig as DictionaryConfig
from .dictionaries import evaluate_dictionary as evaluate_dictionary
from .dictionaries import train_dictionary as train_dictionary
from .diff import SeriesDiff as SeriesDiff
from .diff import run_diff as run_diff
from .errors import RlinterpError as RlinterpError
from .harvest import ActivationStore as ActivationStore
from .harvest import HarvestConfig as HarvestConfig
from .harvest import TokenBatch as TokenBatch
from .harvest import harvest as harvest
from .lineage import LineageThresholds as LineageThresholds
from .lineage import lineage_table as lineage_table
from .loading import load_bridge as load_bridge
from .loading import logit_fidelity as logit_fidelity
from .matching import DictionaryMatch as DictionaryMatch
from .matching import match_dictionaries as match_dictionaries
from .novelty import IndexConfig as IndexConfig
from .novelty import NoveltyIndex as NoveltyIndex
from .novelty import novelty_index as novelty_index
from .novelty import step_parts as step_parts
from .organism import Organism as Organism
from .organism import OrganismConfig as OrganismConfig
from .organism import build_organism as build_organism
from .output_diff import OutputDiff as OutputDiff
from .output_diff import diff_outputs as diff_outputs
from .persona_features import PersonaDirections as PersonaDirections
from .persona_features import persona_directions as persona_directions
from .persona_features import persona_latents as persona_latents
from .prompts import PromptSet as PromptSet
from .report import activation_heatmap as activation_heatmap
from .report import kl_figure as kl_figure
from .report import render_report as render_report
from .report import weight_heatmap as weight_heatmap
from .report import write_report as write_report
from .sae import SAETrainConfig as SAETrainConfig
from .sae import TrainedSAE as TrainedSAE
from .sae import train_sae as train_sae
from .sae_eval import SAEEval as SAEEval
from .sae_eval import evaluate_sae as evaluate_sae
from .sae_eval import fvu_drift as fvu_drift
from .selection import SelectionConfig as SelectionConfig
from .selection import SelectionResult as SelectionResult
from .selection import run_selection as run_selection
from .series import Checkpoint as Checkpoint
from .series import ModelSeries as ModelSeries
from .weight_diff import WeightDiff as WeightDiff
from .weight_diff import diff_weights as diff_weights

__version__ = "0.1.0"
