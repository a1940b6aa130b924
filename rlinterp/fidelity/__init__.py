"""Reasoning fidelity, reward overfitting and alignment drift of a checkpoint series, per step
(``run_fidelity``), on the checkpoints' own samples, with intervals. Names are imported when
first used (``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .analysis import run_fidelity as run_fidelity
    from .config import FidelityConfig as FidelityConfig
    from .format import ReasoningFormat as ReasoningFormat
    from .organism import organism_task as organism_task
    from .report import write_fidelity_report as write_fidelity_report
    from .result import FidelityResult as FidelityResult
    from .task import FidelityTask as FidelityTask
    from .task import load_prompts as load_prompts
    from .task import load_reward_script as load_reward_script

__getattr__, __dir__, __all__ = lazy_exports(__name__)
