"""Readings of what RL changed that need no dictionary: amplified sampling, patchscopes of
difference vectors, principal components of the activation differences, and topics of the
tokens whose next-token distribution changed most. Names are imported when first used
(``core.lazy``); ``amplify`` and ``patchscope`` are also the names of their modules, so the
functions are ``readings.amplify.amplify`` and ``readings.patchscope.patchscope`` (and
``rlinterp.amplify``, ``rlinterp.patchscope``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from . import figures as figures
    from .amplify import AmplifiedSamples as AmplifiedSamples
    from .analysis import ReadingsResult as ReadingsResult
    from .analysis import run_readings as run_readings
    from .config import AmplifyConfig as AmplifyConfig
    from .config import PatchscopeConfig as PatchscopeConfig
    from .config import ReadingsConfig as ReadingsConfig
    from .config import TopicsConfig as TopicsConfig
    from .pca import DifferencePCA as DifferencePCA
    from .pca import difference_pca as difference_pca
    from .topics import ChangedTopics as ChangedTopics
    from .topics import changed_token_topics as changed_token_topics

__getattr__, __dir__, __all__ = lazy_exports(__name__)
