"""Report sections of the selection-versus-novelty reading: what the index table says,
which of its columns every report shows, and how a step reads from its interval. The page
is the report kit's."""

from __future__ import annotations

from typing import Literal

import pandas as pd

from ..core.report import Html, fmt, table
from .analysis import CHOICE_COLUMNS
from .index import SELECTION_SIDE

Reading = Literal["selection", "novelty", "undecided"]

INDEX_COLUMNS = (
    "step",
    "index",
    "index_lo",
    "index_hi",
    "side",
    "fvu_drift",
    "persona_share",
    "persona_baseline",
    *CHOICE_COLUMNS.values(),
)
"""The columns of the index table (those an index table has)."""
INDEX_NOTE = Html(
    "<p>The selection-versus-novelty index per step (<code>rlinterp selection</code>) with its "
    "bootstrap interval: near 0, RL moved activations along the persona directions the base "
    "already had; near 1, along new ones. The transition is the index's change point; the "
    "behavioural step is where most sampled answers stop matching any persona. "
    "<code>choice_*</code>: patching each prompt's coordinates along the persona directions "
    "at its decision position from the checkpoint into the base, the share of the decision "
    "KL (<code>choice_kl</code>) and of the behaviour change (<code>choice_shares</code>) it "
    "reproduces, each beside random subspaces of the same dimension.</p>"
)
"""How to read the index table, above it in every report."""


def reading(lo: float, hi: float) -> Reading:
    """How a step reads from its index interval ``[lo, hi]``: ``novelty`` when all of it
    lies above ``SELECTION_SIDE`` (0.5), ``selection`` when all of it lies below,
    ``undecided`` when it straddles it (the point estimate alone would pick a side)."""
    if lo > SELECTION_SIDE:
        return "novelty"
    return "selection" if hi < SELECTION_SIDE else "undecided"


def side_label(lo: float, hi: float) -> str:
    """A step's reading with its interval beside it, e.g. ``undecided (0.45-0.56)``."""
    return f"{reading(lo, hi)} ({fmt(float(lo))}-{fmt(float(hi))})"


def index_table(index: pd.DataFrame) -> Html:
    """The index per step with its interval, side and evidence columns; the side is read
    from the interval, with the interval beside it (``side_label``)."""
    if "side" in index:
        sides = [side_label(lo, hi) for lo, hi in zip(index["index_lo"], index["index_hi"], strict=True)]
        index = index.assign(side=sides)
    return table(index, [c for c in INDEX_COLUMNS if c in index])
