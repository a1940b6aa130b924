"""What RL changed, per layer and step: weight, activation and output diffs of a series, and
the scripted diff with its report. Names are imported when first used (``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .activations import ActivationDiff as ActivationDiff
    from .activations import diff_activations as diff_activations
    from .analysis import SeriesDiff as SeriesDiff
    from .analysis import run_diff as run_diff
    from .outputs import OutputDiff as OutputDiff
    from .outputs import diff_outputs as diff_outputs
    from .report import activation_heatmap as activation_heatmap
    from .report import kl_figure as kl_figure
    from .report import render_report as render_report
    from .report import weight_heatmap as weight_heatmap
    from .report import write_report as write_report
    from .weights import WeightDiff as WeightDiff
    from .weights import diff_weights as diff_weights

__getattr__, __dir__, __all__ = lazy_exports(__name__)
