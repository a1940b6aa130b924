"""Figures and report sections of a circuits run, and ``rlinterp circuits``' report.

Built from a ``CircuitsResult``'s tables only (no model), so they are testable on arrays.
The verdict table and its note are what the circuits report and the run report both show;
``circuits_sections`` can follow a diff report's own (``diff.report.render_report``); the
page is the report kit's. Component names and tokens are escaped: model text is data,
never markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write
from ..core.report import Html, Section, esc, page, table

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


VERDICT_COLUMNS = (
    "metric",
    "step",
    "change",
    "carriers",
    "joint_recovery",
    "base_used",
    "overlap",
    "chance_overlap",
    "cancellation",
    "verdict",
    "neuron_carriers",
    "new_share",
    "subcomponent_verdict",
)
"""The columns of the verdict table (those a steps table has)."""
VERDICT_NOTE = Html(
    "<p>Carriers: the fewest components (ranked by checkpoint-to-base recovery) whose joint patch "
    "from the checkpoint into the base recovers the coverage target of the metric's change; "
    "base_used: the components the base ranks highest for the behaviour (same number). The verdict "
    "is <i>enhanced</i> when most carriers were already used by the base, <i>new</i> when not; "
    "overlap against chance_overlap is the evidence.</p>"
    "<p><b>Below the component.</b> The verdict compares whole components (attention heads, "
    "MLP layers, the embedding and readout), so new computation written into a component the "
    "base already used reads <i>enhanced</i> there. The sub-component verdict takes each "
    "carrier MLP apart into its neurons: neuron_carriers are the fewest neurons whose joint "
    "patch recovers the coverage target of their block's patch; a carrier neuron is new when "
    "the base did not use it for the behaviour or RL rewired it (input or output weights "
    "turned), a carrier head when the base did not use it. new_share is the recovery-weighted "
    "share of new sub-components; subcomponent_verdict reads <i>new</i> when most of the "
    "carried change is new. A head's new output direction is still read whole.</p>"
)
"""How to read the verdict table, and what the component-level verdict cannot see, above
it in every report."""


def verdict_table(steps: pd.DataFrame) -> Html:
    """Per step (and metric, when the table has several): the carriers, the evidence and
    the verdict."""
    return _table(steps, VERDICT_COLUMNS)


def _table(frame: pd.DataFrame, columns: Sequence[str]) -> Html:
    """The ``columns`` a table has (an empty table of a run without them has none)."""
    return table(frame, [c for c in columns if c in frame])


def circuits_sections(result: CircuitsResult) -> tuple[Section, ...]:
    """The sections of a circuits report: verdicts, top components, how far attribution
    patching agrees with exact patching, attention change, then the figures."""
    steps = pd.DataFrame(result.steps())
    agreement = ["label", "step", "setting", "spearman", "pearson", "top3_overlap", "n_prompts"]
    attention = result.attention.sort_values("tv_last", ascending=False).groupby("label", sort=False).head(3)
    attention = attention.assign(gained_token=attention["gained_token"].map(repr))  # show spaces
    name = esc(result.metric_name)
    parts = (
        Html(f"<p>{esc(result.metric_description)}</p><h3>Verdict per step: enhanced or new circuit</h3>"),
        VERDICT_NOTE,
        verdict_table(steps),
        Html("<h3>Top components per step</h3>"),
        _table(steps, ["label", "step", "top_sufficiency", "top_necessity"]),
        Html("<h3>Attribution patching vs exact patching (rank correlation over components)</h3>"),
        Html(f"<p>{esc(_estimator(result.config))}</p>"),
        _table(result.agreement, agreement),
        Html("<h3>Heads whose attention at the answer position changed most</h3>"),
        _table(attention, ["label", "step", "component", "tv_mean", "tv_last", "gained_token"]),
        *circuits_figures(result),
    )
    return (Section(Html(f"Circuits: metric <code>{name}</code>"), parts),)


def render_circuits_report(result: CircuitsResult, title: str | None = None) -> str:
    """The circuits report as one self-contained HTML page."""
    return page(title or f"rlinterp circuits: {result.metric_name}", circuits_sections(result))


def write_circuits_report(result: CircuitsResult, path: str | Path) -> None:
    """Write ``render_circuits_report(result)`` to ``path`` (atomically)."""
    text = render_circuits_report(result)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
