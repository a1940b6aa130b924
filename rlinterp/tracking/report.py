"""Figures and the self-contained HTML report of a track run (``rlinterp track``).

Figures are built from a ``TrackResult``'s tables only; every piece of model-generated text
is HTML-escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write
from ..diff.report import STYLE, TOP_ROWS, _fmt, _table
from .result import TrackResult

TRACKED_CLASSES = ("amplified", "suppressed", "born", "died")
"""Lineage classes whose latents the tracking report draws."""
LATENTS_PER_CLASS = 3
"""Latents drawn per class and source: those whose mass changed most between the first
and the last step."""


def trajectory_figure(trajectories: pd.DataFrame, source: str, latents: dict[str, list[int]]) -> go.Figure:
    """Mass (mean activation over all tokens) of the given latents, by step, on one source;
    ``latents`` maps a lineage class to its latents (the legend says which)."""
    frame = trajectories[trajectories["source"] == source]
    figure = go.Figure()
    for cls, members in latents.items():
        for latent in members:
            rows = frame[frame["latent"] == latent].sort_values("step")
            figure.add_trace(
                go.Scatter(
                    x=rows["step"], y=rows["mass"], mode="lines+markers", name=f"{cls}: latent {latent}"
                )
            )
    figure.update_layout(
        title=f"Trajectories on {source}: mass per token",
        xaxis_title="RL step",
        yaxis_title="mean activation",
    )
    return figure


def fit_figure(fit: pd.DataFrame, stage_fit: pd.DataFrame) -> go.Figure:
    """Explained variance of the tracked dictionary per source and step, and of the
    stage-wise dictionaries before and after each fine-tune."""
    figure = go.Figure()
    for source, rows in fit.groupby("source", sort=False):
        rows = rows.sort_values("step")
        figure.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["explained_variance"],
                mode="lines+markers",
                name=f"{source}: base dictionary",
            )
        )
    for source, rows in stage_fit.groupby("source", sort=False) if len(stage_fit) else ():
        rows = rows.sort_values("step")
        for column in ("ev_before", "ev_after"):
            figure.add_trace(
                go.Scatter(
                    x=rows["step"],
                    y=rows[column],
                    mode="lines",
                    line={"dash": "dot"},
                    name=f"{source}: {column}",
                )
            )
    figure.update_layout(
        title="Explained variance by step", xaxis_title="RL step", yaxis_title="explained variance"
    )
    return figure


def chosen_latents(result: TrackResult, source: str) -> dict[str, list[int]]:
    """Per class of ``TRACKED_CLASSES``: the tracked latents of that class at the last step
    on ``source`` whose mass changed most from the first step."""
    lineage = result.lineage[(result.lineage["source"] == source) & (result.lineage["evidence"] == "tracked")]
    if lineage.empty:
        return {}
    last = lineage[lineage["step"] == lineage["step"].max()]
    frame = result.trajectories[result.trajectories["source"] == source]
    first_mass = frame[frame["step"] == frame["step"].min()].set_index("latent")["mass"]
    last_mass = frame[frame["step"] == frame["step"].max()].set_index("latent")["mass"]
    change = (last_mass - first_mass).abs()
    chosen = {}
    for cls in TRACKED_CLASSES:
        members = [int(j) for j in last.loc[last["class"] == cls, "latent"].unique()]
        chosen[cls] = sorted(members, key=lambda j: -float(change.get(j, 0.0)))[:LATENTS_PER_CLASS]
    return chosen


def _contexts_html(result: TrackResult, source: str, latents: dict[str, list[int]]) -> str:
    """Per chosen latent: its class with the evidence at the last step, and its distinct top
    contexts at the first and the last step."""
    contexts = result.contexts[result.contexts["source"] == source]
    if contexts.empty or not any(latents.values()):
        return ""
    steps = (contexts["step"].min(), contexts["step"].max())
    tracked = result.lineage[
        (result.lineage["source"] == source)
        & (result.lineage["evidence"] == "tracked")
        & (result.lineage["step"] == steps[1])
    ].set_index("latent")
    rows = []
    for cls, members in latents.items():
        for latent in members:
            cells = []
            for step in steps:
                shown = contexts[(contexts["latent"] == latent) & (contexts["step"] == step)].sort_values(
                    "rank"
                )
                shown = shown.drop_duplicates(["context", "token"]).head(3)
                cells.append("<br>".join(_context_html(r) for r in shown.itertuples()) or "(never fires)")
            evidence = tracked.loc[latent] if latent in tracked.index else None
            rows.append(
                f"<tr><td>{html.escape(cls)}</td><td>{latent}</td><td>{_evidence_html(evidence)}</td>"
                f"<td>{cells[0]}</td><td>{cells[1]}</td></tr>"
            )
    return (
        f"<table><tr><th>class</th><th>latent</th><th>evidence at step {steps[1]}</th>"
        f"<th>top contexts, step {steps[0]}</th><th>top contexts, step {steps[1]}</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _evidence_html(row: pd.Series | None) -> str:
    if row is None:
        return ""
    names = ("frequency_ratio", "activation_ratio", "activity_ratio", "dec_cos_base")
    return "<br>".join(f"{name}: {_fmt(float(row[name]))}" for name in names if pd.notna(row[name]))


def _context_html(row: Any) -> str:
    escaped = f"{html.escape(str(row.context))}<mark>{html.escape(str(row.token))}</mark>"
    return f"{escaped} ({float(row.activation):.3g})"


def _samples_html(samples: pd.DataFrame) -> str:
    if samples.empty:
        return ""
    steps = (samples["step"].min(), samples["step"].max())
    rows = []
    for step in steps:
        shown = samples[(samples["step"] == step) & (samples["sample"] == 0)].head(TOP_ROWS // 2)
        for r in shown.itertuples():
            rows.append(
                f"<tr><td>{step}</td><td>{html.escape(str(r.prompt))}<mark>{html.escape(str(r.response))}</mark>"
                "</td></tr>"
            )
    return (
        "<p>On-policy samples (prompt, then the answer the checkpoint wrote, marked):</p>"
        f"<table><tr><th>step</th><th>text</th></tr>{''.join(rows)}</table>"
    )


def render_tracking_report(result: TrackResult, title: str) -> str:
    """The tracking report as one HTML string with plotly.js inlined once."""
    summary = pd.DataFrame(result.summary())
    shown = [c for c in summary.columns if not summary[c].isna().all()]
    sections, figures = [], [fit_figure(result.trajectory_fit, result.stagewise_fit)]
    for source in result.trajectory_fit["source"].unique():
        latents = chosen_latents(result, str(source))
        figures.append(trajectory_figure(result.trajectories, str(source), latents))
        sections.append((str(source), _contexts_html(result, str(source), latents)))
    plots = [
        figure.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, figure in enumerate(figures)
    ]
    body = "".join(
        f"<h2>Source: {html.escape(source)}</h2>{plot}{contexts}"
        for (source, contexts), plot in zip(sections, plots[1:], strict=True)
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Summary</h2>{_table(summary, shown)}{plots[0]}{body}"
        f"<h2>On-policy samples</h2>{_samples_html(result.samples)}"
        "</body></html>"
    )


def write_tracking_report(result: TrackResult, path: Path, title: str) -> None:
    text = render_tracking_report(result, title)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
