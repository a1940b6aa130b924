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


LEGEND_ROW = 19
"""Height of one row of legend entries in points (7 pt text beside 12 pt bar symbols)."""
LEGEND_SYMBOL = 40
"""Width of an entry's symbol and the gap before its text, in points (plotly's)."""


def _legend_entries(figure: go.Figure) -> list[str]:
    """The names the legend lists: traces that draw a line, marker or bar and do not hide
    their entry (plotly shows a legend for two entries or more)."""
    names = [
        t.name for t in figure.data if t.type in ("scatter", "bar") and t.showlegend is not False and t.name
    ]
    return names if len(names) > 1 else []


def _text_width(names: list[str]) -> int:
    """Points the longest entry's text takes at 7 pt (about 4 pt a character)."""
    return 4 * max(map(len, names)) + 6


def _legend_rows(figure: go.Figure, width: int) -> int:
    names = _legend_entries(figure)
    if not names:
        return 0
    per_row = max(1, (width - 55) // (LEGEND_SYMBOL + _text_width(names)))  # 55: side margins
    return -(-len(names) // per_row)


def _legend_below(figure: go.Figure) -> dict[str, object]:
    """A legend in rows of equal entries under the panels, anchored to the bottom of the
    figure, whose margin ``paper`` grows by one ``LEGEND_ROW`` a row: a column of entries
    beside the panels is clipped at paper heights (the tracking figure has 8)."""
    names = _legend_entries(figure)
    return {
        "font": {"size": 7},
        "tracegroupgap": 0,
        "orientation": "h",
        "x": 0,
        "xanchor": "left",
        "yref": "container",
        "y": 0,
        "yanchor": "bottom",
        "entrywidth": _text_width(names) if names else None,
    }


def paper(figure: go.Figure, width: int | None = None) -> go.Figure:
    """A copy of ``figure`` in the publication theme: full text width when it has several
    panels, one column otherwise (taller by the legend's rows); 8 pt sans-serif; white
    background; no modebar."""
    themed = go.Figure(figure)
    panels = sum(1 for key in themed.layout if key.startswith("xaxis"))  # xaxis, xaxis2, ...
    width = width or (FULL_WIDTH if panels > 1 or themed.layout.coloraxis.colorscale else COLUMN_WIDTH)
    legend_height = LEGEND_ROW * _legend_rows(themed, width)
    themed.update_layout(
        template="simple_white",
        width=width,
        height=int(width * (0.42 if width == FULL_WIDTH else 0.75)) + legend_height,
        font={"family": "Helvetica, Arial, sans-serif", "size": 8, "color": "black"},
        title={"font": {"size": 9}, "x": 0.0, "xanchor": "left"},
        margin={"l": 45, "r": 10, "t": 35, "b": 35 + legend_height},
        legend=_legend_below(themed),
        colorway=list(PALETTE),
    )
    themed.update_annotations(font_size=8)
    themed.update_traces(marker_size=4, line_width=1.5, selector={"type": "scatter"})
    for i, trace in enumerate(themed.data):
        trace.uid = f"trace-{i}"  # plotly draws a random one otherwise: byte-stable SVG
    return themed
