"""Models of a checkpoint series: checkpoint folders (full weights or LoRA adapters), their
checks from files alone, loading through TransformerLens, the validated ``ModelSeries`` and
the executor that runs per-checkpoint work. Names are imported when first used
(``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .config import ExecutorConfig as ExecutorConfig
    from .executor import LocalExecutor as LocalExecutor
    from .executor import RayExecutor as RayExecutor
    from .executor import make_executor as make_executor
    from .loading import load_bridge as load_bridge
    from .loading import logit_fidelity as logit_fidelity
    from .series import Checkpoint as Checkpoint
    from .series import ModelSeries as ModelSeries
    from .spec import SeriesSpec as SeriesSpec

__getattr__, __dir__, __all__ = lazy_exports(__name__)
