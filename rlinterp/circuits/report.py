"""Figures and the HTML section of a circuits run.

Built from a ``CircuitsResult``'s tables only (no model), so they are testable on arrays.
``circuits_section`` is an HTML fragment (plotly.js not included) that the diff report can
append; ``render_circuits_report`` is a self-contained page (plotly.js embedded once).
Component names and tokens are escaped: model text is data, never markup.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write

if TYPE_CHECKING:
    from .result import CircuitsConfig, CircuitsResult


def component_heatmap(
    frame: pd.DataFrame, value: str, title: str, clip: float | None = None, signed: bool = True
) -> go.Figure:
    """``value`` per component (rows, forward order) and RL step (columns); with ``clip``
    the colour scale saturates at +-clip (a step whose metric barely moved has huge
    recovery ratios that would wash out every other step)."""
    order = list(dict.fromkeys(frame["component"]))
    pivot = frame.pivot_table(index="component", columns="step", values=value, aggfunc="first")
    pivot = pivot.reindex([c for c in order if c in pivot.index])
    figure = go.Figure(
        go.Heatmap(
            z=pivot.to_numpy(),
            x=[str(s) for s in pivot.columns],
            y=list(pivot.index),
            colorscale="RdBu" if signed else "Viridis",
            zmid=0 if signed else None,
            zmin=None if clip is None else -clip,
            zmax=clip,
            colorbar={"title": value},
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="RL step",
        yaxis={"autorange": "reversed", "type": "category"},
        height=300 + 16 * len(pivot),
    )
    return figure


def circuits_figures(result: CircuitsResult) -> list[go.Figure]:
    """Sufficiency and necessity (cross-model patching), attribution-patching estimate of
    sufficiency, direct logit attribution, and attention-pattern change."""
    cross = result.cross[result.cross["kind"] != "resid"]
    resid = result.cross[result.cross["kind"] == "resid"]
    figures = [
        component_heatmap(
            cross[cross["direction"] == "to_base"],
            "recovery",
            "Checkpoint -> base patching: fraction of the metric change recovered",
            clip=1.0,
        ),
        component_heatmap(
            cross[cross["direction"] == "to_checkpoint"],
            "recovery",
            "Base -> checkpoint patching: fraction of the change lost",
            clip=1.0,
        ),
        component_heatmap(
            cross[cross["direction"] == "to_base"],
            "attribution_recovery",
            "Attribution patching estimate of checkpoint -> base recovery",
            clip=1.0,
        ),
        component_heatmap(
            resid[resid["direction"] == "to_base"],
            "recovery",
            "Checkpoint -> base residual-stream patching (per layer; @last: answer position only)",
            clip=1.0,
        ),
        component_heatmap(result.dla, "dla", "Direct logit attribution to the metric (step 0 = base)"),
    ]
    if len(result.within):
        figures.append(
            component_heatmap(
                result.within, "recovery", "Within-model patching: clean -> corrupted recovery", clip=1.0
            )
        )
    if len(result.attention):
        figures.append(
            component_heatmap(
                result.attention, "tv_mean", "Attention-pattern change (mean total variation)", signed=False
            )
        )
    return figures


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(
            f"{v[0]} ({v[1]:.2f})" if isinstance(v, list) and len(v) == 2 else str(v) for v in value
        )
    return str(value)


def _estimator(config: CircuitsConfig) -> str:
    if config.attribution_steps == 1:
        return "Attribution patching: the plain gradient estimate at the receiver's run (1 step)."
    moved = (
        "one component at a time"
        if config.attribution_interpolation == "component"
        else "one site (embedding, layer attention, MLP, readout, residual site) at a time"
    )
    steps = config.attribution_steps
    return f"Attribution patching: integrated gradients, {steps} interpolation steps, {moved}."


def circuits_section(result: CircuitsResult, include_plotlyjs: bool = False) -> str:
    """The circuits part of a report as an HTML fragment."""
    steps = result.steps()
    verdicts = _table(
        steps,
        [
            "label",
            "step",
            "change",
            "carriers",
            "joint_recovery",
            "base_used",
            "overlap",
            "chance_overlap",
            "cancellation",
            "verdict",
        ],
    )
    tops = _table(steps, ["label", "step", "top_sufficiency", "top_necessity"])
    agreement = _table(
        result.agreement.to_dict(orient="records"),
        ["label", "step", "setting", "spearman", "pearson", "top3_overlap", "n_prompts"],
    )
    attention = result.attention.sort_values("tv_last", ascending=False).groupby("label", sort=False).head(3)
    attention = attention.assign(gained_token=attention["gained_token"].map(repr))  # show spaces
    attention_rows = _table(
        attention.to_dict(orient="records"),
        ["label", "step", "component", "tv_mean", "tv_last", "gained_token"],
    )
    plots = "".join(
        f.to_html(
            full_html=False,
            include_plotlyjs=include_plotlyjs and i == 0,
            div_id=f"circuits-figure-{i}",  # stable ids: the same run writes the same bytes
            config={"displaylogo": False},
        )
        for i, f in enumerate(circuits_figures(result))
    )
    name = html.escape(result.metric_name)
    description = html.escape(result.metric_description)
    return (
        f"<h2>Circuits: metric <code>{name}</code></h2><p>{description}</p>"
        "<h3>Verdict per step: enhanced or new circuit</h3>"
        "<p>Carriers: the fewest components (ranked by checkpoint-to-base recovery) whose joint patch "
        "recovers the coverage target; base_used: the components the base ranks highest for the "
        "behaviour (same number). overlap vs chance_overlap is the evidence.</p>"
        f"{verdicts}<h3>Top components per step</h3>{tops}"
        f"<h3>Attribution patching vs exact patching (rank correlation over components)</h3>"
        f"<p>{html.escape(_estimator(result.config))}</p>{agreement}"
        f"<h3>Heads whose attention at the answer position changed most</h3>{attention_rows}{plots}"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; font-family: monospace; }
"""


def render_circuits_report(result: CircuitsResult, title: str = "rlinterp circuits") -> str:
    """A self-contained HTML page with plotly.js inlined once."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{circuits_section(result, include_plotlyjs=True)}</body></html>"
    )


def write_circuits_report(result: CircuitsResult, path: Path) -> None:
    text = render_circuits_report(result, f"rlinterp circuits: {result.metric_name}")
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
