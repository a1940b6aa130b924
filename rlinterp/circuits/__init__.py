"""Which components carry what RL changed: behaviour metrics, cross-model and attribution
patching, attention change, verdicts and the circuits report. Names are imported when first
used (``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .analysis import run_circuits as run_circuits
    from .config import CircuitsConfig as CircuitsConfig
    from .metrics import BehaviourMetric as BehaviourMetric
    from .metrics import BehaviourPrompts as BehaviourPrompts
    from .report import write_circuits_report as write_circuits_report
    from .result import CircuitsResult as CircuitsResult

__getattr__, __dir__, __all__ = lazy_exports(__name__)
