"""Following every dictionary latent across RL steps: trajectories, lineage classes with their
evidence and controls, and the track report. Names are imported when first used
(``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .analysis import run_track as run_track
    from .config import TrackConfig as TrackConfig
    from .lineage import LineageThresholds as LineageThresholds
    from .lineage import lineage_table as lineage_table
    from .report import write_tracking_report as write_tracking_report
    from .result import TrackResult as TrackResult

__getattr__, __dir__, __all__ = lazy_exports(__name__)
