"""Figures of the readings, one per reading, each from its table (``readings.analysis.TABLES``)
with an optional ``series`` column: one panel per series, side by side, so regimes compare at
a glance. Computing and drawing are apart: these only draw."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "series" not in table.columns:
        return [("", table)]
    return [(str(name), rows) for name, rows in table.groupby("series", sort=False)]


def _figure(panels: list[tuple[str, pd.DataFrame]], title: str, x: str, y: str) -> go.Figure:
    figure = make_subplots(
        rows=1, cols=max(1, len(panels)), subplot_titles=[n for n, _ in panels] or [""], shared_yaxes=True
    )
    figure.update_layout(title=title, height=360, template="plotly_white")
    figure.update_xaxes(title_text=x)
    figure.update_yaxes(title_text=y, col=1)
    return figure


def amplified_figure(table: pd.DataFrame, column: str | None = None) -> go.Figure:
    """``column`` of the amplified models (default: ``share_none`` on the organism, else the
    answers' mean log-prob per token under the base) against alpha, one line per checkpoint."""
    column = column or ("share_none" if "share_none" in table.columns else "base_logprob_mean")
    panels = _panels(table)
    figure = _figure(panels, f"Amplified sampling: {column} by amplification factor", "alpha", column)
    for col, (_, rows) in enumerate(panels, 1):
        for step, line in rows.groupby("step", sort=True):
            line = line.sort_values("alpha")
            figure.add_trace(
                go.Scatter(x=line["alpha"], y=line[column], mode="lines+markers", name=f"step {step}"),
                row=1,
                col=col,
            )
    return figure


def pca_figure(table: pd.DataFrame) -> go.Figure:
    """Share of the differences' variance the first component explains, by step, per hook:
    near 1 is a change along one direction."""
    panels = _panels(table)
    figure = _figure(
        panels, "Principal components of the differences: first component's share", "step", "explained"
    )
    for col, (_, rows) in enumerate(panels, 1):
        first = rows[rows["component"] == 0]
        for hook, line in first.groupby("hook", sort=False):
            line = line.sort_values("step")
            figure.add_trace(
                go.Scatter(x=line["step"], y=line["explained"], mode="lines+markers", name=str(hook)),
                row=1,
                col=col,
            )
    return figure


def patchscope_figure(table: pd.DataFrame, direction: str = "mean") -> go.Figure:
    """Probability of the patchscope's top token for ``direction`` at each scale, at the last
    step, one bar group per hook, the token written on its bar."""
    panels = _panels(table)
    figure = _figure(
        panels, f"Patchscope of the {direction} direction at the last step", "scale", "top-token probability"
    )
    for col, (_, rows) in enumerate(panels, 1):
        rows = rows[(rows["direction"] == direction) & (rows["step"] == rows["step"].max())]
        for hook, bars in rows.groupby("hook", sort=False):
            figure.add_trace(
                go.Bar(
                    x=[str(s) for s in bars["scale"]],
                    y=[float(p[0]) for p in bars["top_probs"]],
                    text=[repr(str(t[0])) for t in bars["top_tokens"]],
                    name=str(hook),
                ),
                row=1,
                col=col,
            )
    return figure


def topics_figure(topics: pd.DataFrame) -> go.Figure:
    """Each topic's share of the changed positions at the last step, its top promoted tokens
    written on its bar."""
    panels = _panels(topics)
    figure = _figure(panels, "Topics of the changed tokens at the last step", "topic", "share")
    for col, (_, rows) in enumerate(panels, 1):
        rows = rows[rows["step"] == rows["step"].max()]
        figure.add_trace(
            go.Bar(
                x=[f"topic {t}" for t in rows["topic"]],
                y=rows["share"],
                text=[" ".join(repr(str(t)) for t in tokens[:3]) for tokens in rows["top_promoted"]],
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    return figure
