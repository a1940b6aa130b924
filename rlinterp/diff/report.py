"""Figures and report sections of a series diff, and ``rlinterp diff``'s report.

Figures are built from a ``SeriesDiff``'s tables only (no model, no rendering), so they are
testable on arrays. The sections (``lens_table``, ``top_tokens_table``) are what the diff
report and the run report both show for a diff; the page is the report kit's. Model text
(tokens, contexts) is escaped: data, never markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write
from ..core.report import PALETTE, Html, Section, empty, esc, marked, page, table
from .analysis import SeriesDiff

TOP_ROWS = 12
"""Positions shown in the table of tokens that changed most."""


def site_pivot(frame: pd.DataFrame) -> pd.DataFrame:
    """``weights_by_component`` as a (site x step) table of ``rel_frobenius``; a site is
    ``L<layer> <component>`` (the component alone for parts outside the layers)."""
    site = [
        f"{'' if pd.isna(layer) else f'L{int(layer)} '}{component}"
        for layer, component in zip(frame["layer"], frame["component"], strict=True)
    ]
    return frame.assign(site=site).pivot_table(
        index="site", columns="step", values="rel_frobenius", aggfunc="first", sort=False
    )


def _heatmap(pivot: pd.DataFrame, value: str, title: str) -> go.Figure:
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
    return _heatmap(
        site_pivot(diff.weights_by_component), "rel_frobenius", "Weights: relative Frobenius change"
    )


def activation_heatmap(diff: SeriesDiff) -> go.Figure:
    """Relative per-token activation change per hook and step."""
    pivot = diff.activations.pivot_table(
        index="hook", columns="step", values="rel_diff_norm", aggfunc="first", sort=False
    )
    return _heatmap(pivot, "rel_diff_norm", "Activations: mean ||post - base|| / ||base||")


@runtime_checkable
class HasDiffs(Protocol):
    """Anything holding named series diffs (a run result)."""

    @property
    def diffs(self) -> Mapping[str, SeriesDiff]: ...


def kl_figure(diffs: SeriesDiff | Mapping[str, SeriesDiff] | HasDiffs) -> go.Figure:
    """Per-token KL(post || base) of the next-token distribution by RL step. One diff: its
    mean and 90th percentile. Several named diffs (or a run result's): the mean of each,
    on a log axis, since regimes differ by orders of magnitude (the base, KL 0, is off it)."""
    if isinstance(diffs, SeriesDiff):
        outputs = diffs.outputs.sort_values("step")
        lines = {column: (outputs["step"], outputs[column]) for column in ("kl_mean", "kl_p90")}
        layout = {"title": "Outputs: KL(post || base) per token", "yaxis_title": "nats"}
    else:
        named = diffs if isinstance(diffs, Mapping) else diffs.diffs
        sorted_outputs = {name: diff.outputs.sort_values("step") for name, diff in named.items()}
        lines = {name: (o["step"], o["kl_mean"]) for name, o in sorted_outputs.items()}
        layout = {"title": "Outputs: KL(post || base)", "yaxis_title": "nats per token", "yaxis_type": "log"}
    figure = go.Figure()
    for i, (name, (x, y)) in enumerate(lines.items()):
        colour = PALETTE[i % len(PALETTE)]
        figure.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines+markers", line={"color": colour}))
    figure.update_layout(xaxis_title="RL step", **layout)
    return figure


def lens_table(lens: pd.DataFrame) -> Html:
    """The activation-difference lens at the last checkpoint: per hook, the tokens the mean
    difference promotes and suppresses through W_U."""
    if lens.empty:
        return empty("No RL checkpoint to read through the lens.")
    last = lens[lens["label"] == lens["label"].iloc[-1]]
    rows = [
        {
            "hook": hook,
            "promoted": " ".join(map(repr, group[group["direction"] == "promoted"]["token"])),
            "suppressed": " ".join(map(repr, group[group["direction"] == "suppressed"]["token"])),
        }
        for hook, group in last.groupby("hook", sort=False)
    ]
    return Html(
        f"<p>Checkpoint <b>{esc(last['label'].iloc[0])}</b>: mean difference of each hook read "
        "through W_U.</p>" + table(pd.DataFrame(rows), ["hook", "promoted", "suppressed"])
    )


def top_tokens_table(tops: pd.DataFrame, n: int = TOP_ROWS) -> Html:
    """The ``n`` positions of the last checkpoint whose next-token distribution moved most
    (KL), with the argmax next token before and after; without KL rows, the positions whose
    activations moved most."""
    if tops.empty:
        return empty("No token changed.")
    last = tops[tops["label"] == tops["label"].iloc[-1]]
    kl = last[last["source"] == "kl"]
    shown = (kl if len(kl) else last).drop_duplicates(["source", "context", "token"]).head(n)
    is_kl = shown["source"].iloc[0] == "kl"
    value, note = ("KL (nats)", "next token: base -> post") if is_kl else ("||post - base||", "hook")
    rows = pd.DataFrame(
        {
            "context (position marked)": [
                marked(c, t) for c, t in zip(shown["context"], shown["token"], strict=True)
            ],
            value: (shown["kl"] if is_kl else shown["diff_norm"]).astype(float),
            note: [
                f"{b!r} -> {p!r}" if is_kl else str(s)
                for b, p, s in zip(shown["base_top"], shown["post_top"], shown["source"], strict=True)
            ],
        }
    )
    label = esc(last["label"].iloc[0])
    return Html(
        f"<p>Checkpoint <b>{label}</b>: positions whose next-token distribution moved most.</p>"
        + table(rows, markup=[rows.columns[0]])
    )


def diff_sections(diff: SeriesDiff) -> tuple[Section, ...]:
    """The sections of a diff report: summary, where and when, outputs, lens, tokens."""
    summary = pd.DataFrame(diff.summary())
    return (
        Section("Summary", (table(summary),)),
        Section("Where and when: weights and activations", (weight_heatmap(diff), activation_heatmap(diff))),
        Section("Outputs", (kl_figure(diff),)),
        Section("Activation-difference lens", (lens_table(diff.lens),)),
        Section("Tokens that changed most", (top_tokens_table(diff.top_tokens),)),
    )


def render_report(diff: SeriesDiff, title: str, extra_sections: Sequence[Section] = ()) -> str:
    """The report as one self-contained HTML page; ``extra_sections`` (e.g.
    ``circuits.report.circuits_sections``) follow the diff's own."""
    return page(title, (*diff_sections(diff), *extra_sections))


def write_report(
    diff: SeriesDiff, path: str | Path, title: str | None = None, extra_sections: Sequence[Section] = ()
) -> None:
    """Write ``render_report(diff, title, extra_sections)`` to ``path`` (atomically); the
    default title counts the RL checkpoints."""
    if title is None:
        title = f"rlinterp diff: {diff.outputs['label'].nunique() - 1} checkpoints vs base"
    text = render_report(diff, title, extra_sections)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
