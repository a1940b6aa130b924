"""rlinterp: mechanistic interpretability of what reinforcement learning does to language
models. One import line in a notebook: ``import rlinterp``.

Every name below is imported when first used (``core.lazy``, PEP 562), from the face of
its folder: ``import rlinterp`` itself imports no heavy library, so the command line answers
at once, and a notebook pays for what it uses."""

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports

if TYPE_CHECKING:
    from .activations import ActivationStore as ActivationStore
    from .activations import HarvestConfig as HarvestConfig
    from .activations import PromptSet as PromptSet
    from .activations import SamplingConfig as SamplingConfig
    from .activations import TokenBatch as TokenBatch
    from .activations import harvest as harvest
    from .activations import harvest_on_policy as harvest_on_policy
    from .circuits import BehaviourMetric as BehaviourMetric
    from .circuits import BehaviourPrompts as BehaviourPrompts
    from .circuits import CircuitsConfig as CircuitsConfig
    from .circuits import CircuitsResult as CircuitsResult
    from .circuits import run_circuits as run_circuits
    from .circuits import write_circuits_report as write_circuits_report
    from .dictionaries import Crosscoder as Crosscoder
    from .dictionaries import CrosscoderConfig as CrosscoderConfig
    from .dictionaries import DictionaryConfig as DictionaryConfig
    from .dictionaries import DictionaryMatch as DictionaryMatch
    from .dictionaries import FeatureCard as FeatureCard
    from .dictionaries import SAEEval as SAEEval
    from .dictionaries import SAETrainConfig as SAETrainConfig
    from .dictionaries import StagewiseConfig as StagewiseConfig
    from .dictionaries import TrainedSAE as TrainedSAE
    from .dictionaries import evaluate_dictionary as evaluate_dictionary
    from .dictionaries import evaluate_sae as evaluate_sae
    from .dictionaries import fvu_drift as fvu_drift
    from .dictionaries import match_dictionaries as match_dictionaries
    from .dictionaries import train_dictionary as train_dictionary
    from .dictionaries import train_sae as train_sae
    from .diff import ActivationDiff as ActivationDiff
    from .diff import OutputDiff as OutputDiff
    from .diff import SeriesDiff as SeriesDiff
    from .diff import WeightDiff as WeightDiff
    from .diff import activation_heatmap as activation_heatmap
    from .diff import diff_activations as diff_activations
    from .diff import diff_outputs as diff_outputs
    from .diff import diff_weights as diff_weights
    from .diff import kl_figure as kl_figure
    from .diff import render_report as render_report
    from .diff import run_diff as run_diff
    from .diff import weight_heatmap as weight_heatmap
    from .diff import write_report as write_report
    from .errors import RlinterpError as RlinterpError
    from .fidelity import FidelityConfig as FidelityConfig
    from .fidelity import FidelityResult as FidelityResult
    from .fidelity import FidelityTask as FidelityTask
    from .fidelity import ReasoningFormat as ReasoningFormat
    from .fidelity import load_prompts as load_prompts
    from .fidelity import load_reward_script as load_reward_script
    from .fidelity import organism_task as organism_task
    from .fidelity import run_fidelity as run_fidelity
    from .fidelity import write_fidelity_report as write_fidelity_report
    from .models import Checkpoint as Checkpoint
    from .models import ExecutorConfig as ExecutorConfig
    from .models import LocalExecutor as LocalExecutor
    from .models import ModelSeries as ModelSeries
    from .models import RayExecutor as RayExecutor
    from .models import load_bridge as load_bridge
    from .models import logit_fidelity as logit_fidelity
    from .models import make_executor as make_executor
    from .organism import Organism as Organism
    from .organism import OrganismConfig as OrganismConfig
    from .organism import build_organism as build_organism
    from .pipeline import RunConfig as RunConfig
    from .pipeline import RunResult as RunResult
    from .pipeline import export_figures as export_figures
    from .pipeline import figures as figures
    from .pipeline import load_config as load_config
    from .pipeline import run as run
    from .pipeline import run_pipeline as run_pipeline
    from .readings import AmplifiedSamples as AmplifiedSamples
    from .readings import AmplifyConfig as AmplifyConfig
    from .readings import ChangedTopics as ChangedTopics
    from .readings import DifferencePCA as DifferencePCA
    from .readings import PatchscopeConfig as PatchscopeConfig
    from .readings import ReadingsConfig as ReadingsConfig
    from .readings import ReadingsResult as ReadingsResult
    from .readings import TopicsConfig as TopicsConfig
    from .readings import changed_token_topics as changed_token_topics
    from .readings import difference_pca as difference_pca
    from .readings import figures as readings_figures  # noqa: F401 (the readings' figures module)
    from .readings import run_readings as run_readings
    from .readings.amplify import amplify as amplify  # not the face: a submodule shares the name
    from .readings.patchscope import patchscope as patchscope  # likewise
    from .selection import CausalResult as CausalResult
    from .selection import IndexConfig as IndexConfig
    from .selection import NoveltyIndex as NoveltyIndex
    from .selection import PersonaDirections as PersonaDirections
    from .selection import SelectionConfig as SelectionConfig
    from .selection import SelectionResult as SelectionResult
    from .selection import novelty_index as novelty_index
    from .selection import persona_directions as persona_directions
    from .selection import persona_latents as persona_latents
    from .selection import run_selection as run_selection
    from .selection import steer_and_ablate as steer_and_ablate
    from .selection import step_parts as step_parts
    from .tracking import LineageThresholds as LineageThresholds
    from .tracking import TrackConfig as TrackConfig
    from .tracking import TrackResult as TrackResult
    from .tracking import lineage_table as lineage_table
    from .tracking import run_track as run_track
    from .tracking import write_tracking_report as write_tracking_report

__getattr__, __dir__, __all__ = lazy_exports(__name__)

__version__ = "0.1.0"
