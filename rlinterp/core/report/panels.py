"""Figures with one panel per series, side by side: how every report compares regimes
(the run report's figures, the readings' figures). A panel's title is its series; a line
or bar name has one colour and one legend entry across the panels.

Invariant: these build new figures from arrays; they never read a model or a run directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .theme import PALETTE


def side_by_side_figure(names: Sequence[str], shared_y: bool = True) -> go.Figure:
    """An empty figure of one panel per name (one unnamed panel when there are none)."""
    return make_subplots(
        rows=1,
        cols=max(1, len(names)),
        subplot_titles=list(names) or [""],
        shared_yaxes=shared_y,
        horizontal_spacing=0.06,
    )


def lines_side_by_side(panels: Mapping[str, Mapping[str, tuple[Any, Any]]]) -> go.Figure:
    """One panel per name, each holding named lines ``(x, y)`` (array-likes: lists, pandas
    series)."""
    figure = side_by_side_figure(list(panels))
    colours: dict[str, str] = {}
    for col, lines in enumerate(panels.values(), 1):
        for name, (x, y) in lines.items():
            first = name not in colours
            colour = colours.setdefault(name, PALETTE[len(colours) % len(PALETTE)])
            trace = go.Scatter(
                x=x,
                y=y,
                name=name,
                legendgroup=name,
                showlegend=first,
                mode="lines+markers",
                line={"color": colour},
            )
            figure.add_trace(trace, row=1, col=col)
    return figure
