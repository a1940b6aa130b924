"""Figures of the readings, one per reading, each from its table (``readings.analysis.TABLES``)
with an optional ``series`` column: one panel per series, side by side (the report kit's
``panels``), so regimes compare at a glance. Computing and drawing are apart: these only
draw, and never change the table they are given."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ..core.report import PALETTE, lines_side_by_side, side_by_side_figure


def _panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(series, rows)`` in the table's order; one unnamed panel without a series column."""
    if "series" not in table.columns:
        return [("", table)]
    return [(str(name), rows) for name, rows in table.groupby("series", sort=False)]


def _labelled(figure: go.Figure, title: str, x: str, y: str) -> go.Figure:
    figure.update_layout(title=title)
    figure.update_xaxes(title_text=x)
    figure.update_yaxes(title_text=y, col=1)
    return figure


def amplified_figure(table: pd.DataFrame, column: str | None = None) -> go.Figure:
    """``column`` of the amplified models (default: ``share_none`` on the organism, else the
    answers' mean log-prob per token under the base) against alpha, one line per checkpoint."""
    column = column or ("share_none" if "share_none" in table.columns else "base_logprob_mean")
    panels = {
        name: {
            f"step {step}": (line["alpha"], line[column])
            for step, line in (
                (s, rows.sort_values("alpha")) for s, rows in series.groupby("step", sort=True)
            )
        }
        for name, series in _panels(table)
    }
    figure = lines_side_by_side(panels)
    return _labelled(figure, f"Amplified sampling: {column} by amplification factor", "alpha", column)


def pca_figure(table: pd.DataFrame) -> go.Figure:
    """Share of the differences' variance the first component explains, by step, per hook:
    near 1 is a change along one direction."""
    panels = {}
    for name, rows in _panels(table):
        first = rows[rows["component"] == 0]
        panels[name] = {
            str(hook): (line.sort_values("step")["step"], line.sort_values("step")["explained"])
            for hook, line in first.groupby("hook", sort=False)
        }
    figure = lines_side_by_side(panels)
    title = "Principal components of the differences: first component's share"
    return _labelled(figure, title, "step", "explained")


def patchscope_figure(table: pd.DataFrame, direction: str = "mean") -> go.Figure:
    """Probability of the patchscope's top token for ``direction`` at each scale, at the last
    step, one bar group per hook, the token written on its bar."""
    panels = _panels(table)
    figure = side_by_side_figure([name for name, _ in panels])
    colours: dict[str, str] = {}
    for col, (_, rows) in enumerate(panels, 1):
        rows = rows[(rows["direction"] == direction) & (rows["step"] == rows["step"].max())]
        for hook, bars in rows.groupby("hook", sort=False):
            first = str(hook) not in colours
            colour = colours.setdefault(str(hook), PALETTE[len(colours) % len(PALETTE)])
            figure.add_trace(
                go.Bar(
                    x=[str(s) for s in bars["scale"]],
                    y=[float(p[0]) for p in bars["top_probs"]],
                    text=[repr(str(t[0])) for t in bars["top_tokens"]],
                    name=str(hook),
                    legendgroup=str(hook),
                    showlegend=first,
                    marker_color=colour,
                ),
                row=1,
                col=col,
            )
    title = f"Patchscope of the {direction} direction at the last step"
    return _labelled(figure, title, "scale", "top-token probability")


def topics_figure(topics: pd.DataFrame) -> go.Figure:
    """Each topic's share of the changed positions at the last step, its top promoted tokens
    written on its bar."""
    panels = _panels(topics)
    figure = side_by_side_figure([name for name, _ in panels])
    for col, (_, rows) in enumerate(panels, 1):
        rows = rows[rows["step"] == rows["step"].max()]
        figure.add_trace(
            go.Bar(
                x=[f"topic {t}" for t in rows["topic"]],
                y=rows["share"],
                text=[" ".join(repr(str(t)) for t in tokens[:3]) for tokens in rows["top_promoted"]],
                showlegend=False,
                marker_color=PALETTE[0],
            ),
            row=1,
            col=col,
        )
    return _labelled(figure, "Topics of the changed tokens at the last step", "topic", "share")


FIGURES = {
    "amplified": amplified_figure,
    "pca": pca_figure,
    "patchscope": patchscope_figure,
    "topics": topics_figure,
}
"""Each reading's figure by the name of the table it draws (``readings.analysis.TABLES``)."""
