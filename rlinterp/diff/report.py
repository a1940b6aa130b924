"""Figures and the self-contained HTML report of a series diff.

Figures are built from a ``SeriesDiff``'s tables only (no model, no rendering), so they are
testable on arrays. The report embeds plotly.js once (reports are opened offline) and
HTML-escapes every piece of model-generated text: tokens and contexts are data, never
markup.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write
from .analysis import SeriesDiff


def _heatmap(frame: pd.DataFrame, rows: str, value: str, title: str) -> go.Figure:
    pivot = frame.pivot_table(index=rows, columns="step", values=value, aggfunc="first", sort=False)
    figure = go.Figure(
        go.Heatmap(
            z=pivot.to_numpy(),
            x=[str(s) for s in pivot.columns],
            y=list(pivot.index),
            colorscale="Viridis",
            colorbar={"title": value},
        )
    )
    figure.update_layout(
        title=title, xaxis_title="RL step", yaxis={"autorange": "reversed"}, height=300 + 18 * len(pivot)
    )
    return figure


def weight_heatmap(diff: SeriesDiff) -> go.Figure:
    """Relative weight change per (layer, component) and step."""
    frame = diff.weights_by_component.copy()
    frame["site"] = [
        f"{'' if pd.isna(layer) else f'L{int(layer)} '}{component}"
        for layer, component in zip(frame["layer"], frame["component"], strict=True)
    ]
    return _heatmap(frame, "site", "rel_frobenius", "Weights: relative Frobenius change")


def activation_heatmap(diff: SeriesDiff) -> go.Figure:
    """Relative per-token activation change per hook and step."""
    return _heatmap(diff.activations, "hook", "rel_diff_norm", "Activations: mean ||post - base|| / ||base||")


def kl_figure(diff: SeriesDiff) -> go.Figure:
    """Per-token KL(post || base) by step: mean and 90th percentile."""
    outputs = diff.outputs.sort_values("step")
    figure = go.Figure()
    for column in ("kl_mean", "kl_p90"):
        figure.add_trace(go.Scatter(x=outputs["step"], y=outputs[column], mode="lines+markers", name=column))
    figure.update_layout(
        title="Outputs: KL(post || base) per token", xaxis_title="RL step", yaxis_title="nats"
    )
    return figure


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in columns) + "</tr>"
        for _, row in frame.iterrows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _lens_section(diff: SeriesDiff) -> str:
    if diff.lens.empty:
        return "<p>No RL checkpoint to read through the lens.</p>"
    last = diff.lens[diff.lens["label"] == diff.lens["label"].iloc[-1]]
    rows = []
    for hook, group in last.groupby("hook", sort=False):
        promoted = group[group["direction"] == "promoted"]["token"].tolist()
        suppressed = group[group["direction"] == "suppressed"]["token"].tolist()
        rows.append(
            {
                "hook": hook,
                "promoted": " ".join(map(repr, promoted)),
                "suppressed": " ".join(map(repr, suppressed)),
            }
        )
    label = html.escape(str(last["label"].iloc[0]))
    return f"<p>Checkpoint <b>{label}</b>: mean difference of each hook read through W_U.</p>" + _table(
        pd.DataFrame(rows), ["hook", "promoted", "suppressed"]
    )


def _top_tokens_section(diff: SeriesDiff) -> str:
    tops = diff.top_tokens
    if tops.empty:
        return "<p>No token changed.</p>"
    last = tops[tops["label"] == tops["label"].iloc[-1]]
    kl = last[last["source"] == "kl"]
    shown = (kl if len(kl) else last).drop_duplicates(["source", "context", "token"]).head(TOP_ROWS)
    is_kl = shown["source"].iloc[0] == "kl"
    rows = [
        "<tr><td>{}<mark>{}</mark></td><td>{:.4g}</td><td>{}</td></tr>".format(
            html.escape(str(r.context)),
            html.escape(str(r.token)),
            float(r.kl if is_kl else r.diff_norm),
            html.escape(f"{r.base_top!r} -> {r.post_top!r}" if is_kl else str(r.source)),
        )
        for r in shown.itertuples()
    ]
    label = html.escape(str(last["label"].iloc[0]))
    value, note = ("KL (nats)", "next token: base -> post") if is_kl else ("||post - base||", "hook")
    return (
        f"<p>Checkpoint <b>{label}</b>: positions whose next-token distribution moved most.</p>"
        f"<table><tr><th>context (position marked)</th><th>{value}</th><th>{note}</th></tr>"
        + "".join(rows)
        + "</table>"
    )


TOP_ROWS = 12
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left;
         font-family: monospace; white-space: pre-wrap; }
mark { background: #ffd54f; }
"""


def render_report(diff: SeriesDiff, title: str, extra_sections: Sequence[str] = ()) -> str:
    """The report as one HTML string with plotly.js inlined once. ``extra_sections`` are
    HTML fragments appended at the end (e.g. ``circuits_report.circuits_section``); they
    must not inline plotly.js again."""
    figures = [weight_heatmap(diff), activation_heatmap(diff), kl_figure(diff)]
    plots = [
        figure.to_html(
            full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}", config={"displaylogo": False}
        )
        for i, figure in enumerate(figures)
    ]
    summary = pd.DataFrame(diff.summary())
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Summary</h2>{_table(summary, list(summary.columns))}"
        f"<h2>Where and when: weights and activations</h2>{plots[0]}{plots[1]}"
        f"<h2>Outputs</h2>{plots[2]}"
        f"<h2>Activation-difference lens</h2>{_lens_section(diff)}"
        f"<h2>Tokens that changed most</h2>{_top_tokens_section(diff)}"
        f"{''.join(extra_sections)}</body></html>"
    )


def write_report(
    diff: SeriesDiff, path: str | Path, title: str | None = None, extra_sections: Sequence[str] = ()
) -> None:
    """Write ``render_report(diff, title, extra_sections)`` to ``path`` (atomically); the
    default title counts the RL checkpoints."""
    if title is None:
        title = f"rlinterp diff: {diff.outputs['label'].nunique() - 1} checkpoints vs base"
    text = render_report(diff, title, extra_sections)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
