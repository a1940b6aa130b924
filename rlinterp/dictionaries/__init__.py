"""Dictionaries on harvested activations: SAEs (through SAELens), crosscoders, diff-SAEs,
stage-wise fine-tuning, matching, evaluation and feature cards. Names are imported when
first used (``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .cards import FeatureCard as FeatureCard
    from .config import DictionaryConfig as DictionaryConfig
    from .config import SAETrainConfig as SAETrainConfig
    from .config import StagewiseConfig as StagewiseConfig
    from .crosscoder import Crosscoder as Crosscoder
    from .crosscoder import CrosscoderConfig as CrosscoderConfig
    from .evaluation import SAEEval as SAEEval
    from .evaluation import evaluate_sae as evaluate_sae
    from .evaluation import fvu_drift as fvu_drift
    from .matching import DictionaryMatch as DictionaryMatch
    from .matching import match_dictionaries as match_dictionaries
    from .sae import TrainedSAE as TrainedSAE
    from .sae import train_sae as train_sae
    from .train import evaluate_dictionary as evaluate_dictionary
    from .train import train_dictionary as train_dictionary

__getattr__, __dir__, __all__ = lazy_exports(__name__)
