"""The look the report kit shares: one colour palette for every figure and inline chart,
and the publication theme that turns a report figure into a paper figure.

Invariant: ``paper`` returns a themed copy; the figure the report shows is never modified.
"""

from __future__ import annotations

import plotly.graph_objects as go

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
"""Okabe-Ito: distinguishable with the common colour-vision deficiencies."""
FULL_WIDTH, COLUMN_WIDTH = 504, 252
"""Figure widths in points (1 px = 1 pt in the export): a two-column paper's text width
(7 in) and one column (3.5 in)."""


def paper(figure: go.Figure, width: int | None = None) -> go.Figure:
    """A copy of ``figure`` in the publication theme: full text width when it has several
    panels, one column otherwise; 8 pt sans-serif; white background; no modebar."""
    themed = go.Figure(figure)
    panels = sum(1 for key in themed.layout if key.startswith("xaxis"))  # xaxis, xaxis2, ...
    width = width or (FULL_WIDTH if panels > 1 or themed.layout.coloraxis.colorscale else COLUMN_WIDTH)
    themed.update_layout(
        template="simple_white",
        width=width,
        height=int(width * (0.42 if width == FULL_WIDTH else 0.75)),
        font={"family": "Helvetica, Arial, sans-serif", "size": 8, "color": "black"},
        title={"font": {"size": 9}, "x": 0.0, "xanchor": "left"},
        margin={"l": 45, "r": 10, "t": 35, "b": 35},
        legend={"font": {"size": 7}, "tracegroupgap": 0, "itemwidth": 30},
        colorway=list(PALETTE),
    )
    themed.update_annotations(font_size=8)
    themed.update_traces(marker_size=4, line_width=1.5, selector={"type": "scatter"})
    for i, trace in enumerate(themed.data):
        trace.uid = f"trace-{i}"  # plotly draws a random one otherwise: byte-stable SVG
    return themed
