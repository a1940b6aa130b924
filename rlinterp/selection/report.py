"""Report sections of the selection-versus-novelty reading: what the index tables say (per
step and per block), which of their columns every report shows, and how a step reads. The
page is the report kit's.

A step's side is the index's own (``selection.index``: ``novelty`` when any block's interval
lies above 0.5, ``selection`` when every block's lies below, else ``undecided``); the tables
show it with the step's interval beside it. Tables written before the index read every
block (no ``layer`` column) held the point estimate's side, which alone would mislead: their
side is read from the interval.
"""

from __future__ import annotations

import pandas as pd

from ..core.report import Html, fmt, table
from .analysis import CHOICE_COLUMNS
from .index import LAYER_COLUMNS, Reading, reading

INDEX_COLUMNS = (
    "step",
    "index",
    "index_lo",
    "index_hi",
    "side",
    "layer",
    "dictionary_share",
    "dictionary_share_lo",
    "dictionary_share_hi",
    "fvu_drift",
    "persona_share",
    "persona_baseline",
    *CHOICE_COLUMNS.values(),
)
"""The columns of the index table (those an index table has)."""
INDEX_NOTE = Html(
    "<p>The selection-versus-novelty index per step (<code>rlinterp selection</code>): at every "
    "block, the share of the block's own change (on the checkpoint's input) that a read-out of "
    "the base block's heads and neurons cannot predict on held-out texts, over the same share "
    "for a seed control (the base block fed a random rotation of its input). Near 0, RL "
    "re-weighted what the base computes (including re-weightings whose sign depends on the "
    "context); near 1, the change is computation the base does not have. A step's index is its "
    "most novel block's (<code>layer</code>); its interval resamples texts, the read-out's fit "
    "and the control's seed. A step reads novelty when a block's whole interval lies above 0.5, "
    "selection when every block's lies below, undecided otherwise. The transition is the "
    "index's change point and names its block; the behavioural step is where most sampled "
    "answers stop matching any persona. <code>dictionary_share</code>: the share of the mean "
    "shift a base dictionary at the explanation hook cannot express (its interval covers texts "
    "and dictionary seeds), the feature-level explanation beside the index, not its verdict. "
    "<code>choice_*</code>: patching each prompt's coordinates along the persona directions "
    "at its decision position from the checkpoint into the base, the share of the decision "
    "KL (<code>choice_kl</code>) and of the behaviour change (<code>choice_shares</code>) it "
    "reproduces, each beside random subspaces of the same dimension.</p>"
)
"""How to read the index table, above it in every report."""
LAYERS_NOTE = Html(
    "<p>The index per block: <code>novelty</code> with its interval and side, the component "
    "that makes it (<code>attn</code> or <code>mlp</code>, each read on its own, the block "
    "reading as its more novel one) and each component's novelty; "
    "<code>unexplained_base</code> / <code>unexplained_control</code>: the held-out share of "
    "that component's change the base read-out / the control leaves; <code>local_share</code>: "
    "the block's own change over the whole change at its output (the rest comes from earlier "
    "blocks); <code>local_rms</code>: its size per token, so that a tiny change is seen as "
    "tiny.</p>"
)
"""How to read the per-block table."""


def step_side(row: pd.Series) -> Reading:
    """A step's side: the index's own where the row has one (a ``side`` beside the
    ``layer`` it names), else read from the interval (tables written before the index read
    every block, whose ``side`` was the point estimate's)."""
    side = row.get("side")
    if "layer" in row and side in ("selection", "novelty", "undecided"):
        return side  # one of the index's readings
    return reading(float(row["index_lo"]), float(row["index_hi"]))


def side_label(side: str, lo: float, hi: float) -> str:
    """A side with its interval beside it, e.g. ``undecided (0.45-0.56)``."""
    return f"{side} ({fmt(float(lo))}-{fmt(float(hi))})"


def index_table(index: pd.DataFrame) -> Html:
    """The index per step with its interval, side (with the interval beside it), block and
    explanation columns."""
    if "index_lo" in index:
        sides = [side_label(step_side(row), row["index_lo"], row["index_hi"]) for _, row in index.iterrows()]
        index = index.assign(side=sides)
    return table(index, [c for c in INDEX_COLUMNS if c in index])


def layers_table(layers: pd.DataFrame) -> Html:
    """The index per step and block (``LAYER_COLUMNS``), the side with its interval beside it."""
    sides = [side_label(row["side"], row["novelty_lo"], row["novelty_hi"]) for _, row in layers.iterrows()]
    shown = layers.assign(side=sides)
    return table(shown, [c for c in LAYER_COLUMNS if c in shown and c not in ("label", "hook", "n_tokens")])
