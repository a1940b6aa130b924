"""A checkpoint series as a user names it: what was typed after ``--series`` (and
``--base``, ``--regime``, ``--steps``), and the options that say how its models load. Every
command that takes a series takes a ``SeriesSpec``; the forms it may take are read in one
place, ``forms``.

Invariants: reading a spec imports neither torch nor transformers (``load`` does); a spec
is checked when it is made (one line per mistake), before any model is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import RlinterpError
from .device import check_device
from .forms import enclosing_organism, organism_root

if TYPE_CHECKING:
    from .series import ModelSeries

STEPS = re.compile(r"^(every:\d+|\d+(,\d*)*)$")


@dataclass(frozen=True)
class SeriesSpec:
    """Which checkpoints, as typed, and how their models load."""

    series: tuple[str, ...]
    """An organism dir (with --regime), a run dir with checkpoint-<N> (or step-<N>,
    global_step<N>, <N>) folders holding full checkpoints or PEFT adapters, or checkpoint
    folders (base first, unless --base)."""
    base: str | None = None
    """The base model folder (default: the first --series folder, a run's step-0 folder, or
    the local base its adapters name)."""
    regime: str | None = None
    """Which regime of an organism (e.g. weak, strong)."""
    steps: str | None = None
    """Only some checkpoints: every:<k> (every k-th, and the last) or a list of steps like
    100,200,500 (default: all)."""
    device: str = "cpu"
    """Torch device the models run on."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype the models run in: auto is the widest dtype the checkpoints store (float32
    upcasts half-precision checkpoints)."""
    device_map: str | None = None
    """Split each model over this machine's (or Ray task's) GPUs: auto, balanced (Hugging
    Face device maps; instead of --device)."""
    on_identical: Literal["warn", "error", "ignore"] = "warn"
    """Checkpoints holding byte-identical weights: warn, stop, or skip the check (it reads
    every weight byte)."""

    def __post_init__(self) -> None:
        if not self.series:
            raise RlinterpError("--series names no checkpoint; give an organism, a run directory or folders")
        if self.steps is not None and not STEPS.match(self.steps.replace(" ", "")):
            raise RlinterpError(f"--steps {self.steps!r} is neither every:<k> nor a list like 100,200,500")
        check_device(self.device)
        if self.regime is not None and self.organism is None:
            raise RlinterpError(
                f"--regime {self.regime} picks a regime of an organism, but --series {self.series[0]} is "
                "not one; drop --regime (or give the organism's directory)"
            )
        if self.base is not None and self.organism is not None:
            raise RlinterpError(
                f"--base applies to checkpoints, but --series {self.series[0]} is an organism, whose base "
                "is its own; drop --base"
            )

    @property
    def organism(self) -> Path | None:
        """The organism directory the series comes from, if it does."""
        return organism_root(self.series)

    def require_organism(self, what: str) -> Path:
        """The organism the series' models come from (its directory, a regime's folder or
        its checkpoint folders: ``forms.enclosing_organism``), or a one-line error saying
        that ``what`` needs one."""
        root = enclosing_organism([*self.series, *([self.base] if self.base else [])])
        if root is None:
            raise RlinterpError(
                f"{what} needs a series from an organism (its directory, a regime's folder or its "
                "checkpoints), but these checkpoints come from none; give a file instead"
            )
        return root

    def select(self) -> dict[str, Any]:
        """``steps`` as keyword arguments of ``ModelSeries.select`` (empty: all)."""
        return steps_selection(self.steps)

    def load(self, **overrides: Any) -> ModelSeries:
        """The series (validated lazily, as ``ModelSeries`` is), its steps selected.
        ``overrides``: other ``ModelSeries`` fields (e.g. ``dtype``)."""
        import torch

        from .series import ModelSeries

        dtype = None if self.dtype == "auto" else getattr(torch, self.dtype)
        options = {"device": self.device, "dtype": dtype, "device_map": self.device_map} | overrides
        series = ModelSeries.from_spec(
            self.series, self.regime, self.base, on_identical=self.on_identical, **options
        )
        return series.select(**self.select()) if self.steps is not None else series


def steps_selection(steps: str | None) -> dict[str, Any]:
    """A ``--steps`` value (``every:<k>`` or ``100,200,500``; None: all) as keyword
    arguments of ``ModelSeries.select`` (empty: all)."""
    if steps is None:
        return {}
    text = steps.replace(" ", "")
    if text.startswith("every:"):
        return {"every": int(text.removeprefix("every:"))}
    return {"steps": [int(step) for step in text.split(",") if step]}
