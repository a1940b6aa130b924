"""Report sections of the selection-versus-novelty reading: what the index table says and
which of its columns every report shows. The page is the report kit's."""

from __future__ import annotations

import pandas as pd

from ..core.report import Html, table
from .analysis import CHOICE_COLUMNS

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


def index_table(index: pd.DataFrame) -> Html:
    """The index per step with its interval, side and evidence columns."""
    return table(index, [c for c in INDEX_COLUMNS if c in index])
