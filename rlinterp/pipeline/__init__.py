"""``rlinterp run``: the run config, the ordered stages over one output directory, the result
read back from disk, the report and the figures. Names are imported when first used
(``core.lazy``)."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from . import figures as figures
    from .config import RunConfig as RunConfig
    from .config import load_config as load_config
    from .figures import export_figures as export_figures
    from .result import RunResult as RunResult
    from .runner import run as run
    from .runner import run_pipeline as run_pipeline

__getattr__, __dir__, __all__ = lazy_exports(__name__)
