"""The figures of a run, one function each, and their static export for papers.

Every figure function takes a ``RunResult`` (tables only: no model, no rendering) and
returns a ``plotly.graph_objects.Figure``; series (RL regimes) sit side by side where the
data allows. The report shows them interactively; ``export_figures`` writes each one as a
standalone PDF, SVG or PNG in the publication theme (``paper``): a two-column-paper size,
small serif-free fonts, the Okabe-Ito colour-blind-safe palette, no interactive-only
elements. Static export goes through kaleido, which drives a Chromium (the project's
set-up installs Debian's ``chromium``).

Invariant: a figure function never mutates its input and returns a new figure; ``paper``
returns a themed copy.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..core import rundir
from ..core.report.panels import lines_side_by_side, side_by_side_figure
from ..core.report.theme import PALETTE
from ..core.report.theme import paper as paper
from ..diff.report import kl_figure as kl_figure
from ..diff.report import site_pivot
from ..errors import RlinterpError
from ..fidelity import figures as fidelity_figures
from ..fidelity.report import onset_marks
from ..readings.figures import FIGURES as READINGS_FIGURES
from ..selection.index import SELECTION_SIDE
from ..tracking.lineage import CHANGES

if TYPE_CHECKING:
    from .result import RunResult

Format = Literal["pdf", "svg", "png"]


def behaviour_figure(run: RunResult) -> go.Figure:
    """Share of sampled answers in each persona's style (and mixed / none) by RL step."""
    table = run.behaviour
    if table.empty:
        return _empty("Behaviour: no behaviour table (the series is not an organism)")
    regimes = [r for r in run.series if r in set(table["regime"])] or sorted(set(table["regime"]))
    shares = [
        c for c in table.columns if c.startswith("share_") and c not in ("share_none_near", "share_none_far")
    ]
    panels = {}
    for regime in regimes:
        rows = table[table["regime"] == regime].sort_values("step")
        panels[regime] = {share.removeprefix("share_"): (rows["step"], rows[share]) for share in shares}
    figure = lines_side_by_side(panels)
    figure.update_yaxes(title_text="share of answers", row=1, col=1)
    return _titled(figure, "Behaviour: answer styles by RL step")


def weights_figure(run: RunResult) -> go.Figure:
    """Relative Frobenius change of the weights per (layer, component) and RL step, one
    panel per series on one *log* colour scale: regimes differ by orders of magnitude, and a
    linear scale shared by all paints every cell of the gentler one the same colour. Steps
    without any change (the base against itself) are left out; hover shows the value."""
    pivots = {name: site_pivot(run.diffs[name].weights_by_component) for name in run.series}
    pivots = {name: pivot.loc[:, (pivot > 0).any()] for name, pivot in pivots.items()}
    figure = side_by_side_figure(list(pivots))
    for col, pivot in enumerate(pivots.values(), 1):
        figure.add_trace(
            go.Heatmap(
                z=np.log10(pivot.where(pivot > 0)).to_numpy(),
                customdata=pivot.to_numpy(),
                hovertemplate="step %{x}, %{y}: %{customdata:.3g}<extra></extra>",
                x=[str(s) for s in pivot.columns],
                y=list(pivot.index),
                coloraxis="coloraxis",
            ),
            row=1,
            col=col,
        )
    figure.update_layout(
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": "rel. change", **_decades(pivots)}}
    )
    figure.update_yaxes(autorange="reversed")
    return _titled(figure, "Weights: relative Frobenius change (log scale)")


def _decades(pivots: dict[str, pd.DataFrame]) -> dict[str, list[Any]]:
    """Colour-bar ticks of a log10 scale at every power of ten the changes span."""
    changed = [float(v) for pivot in pivots.values() for v in pivot.to_numpy().ravel() if v > 0]
    if not changed:
        return {}
    decades = range(math.floor(math.log10(min(changed))), math.ceil(math.log10(max(changed))) + 1)
    return {"tickvals": list(decades), "ticktext": [f"{10.0**k:g}" for k in decades]}


def activations_figure(run: RunResult) -> go.Figure:
    """Mean per-token relative activation change ``||post - base|| / ||base||`` per hook."""
    panels = {}
    for name, diff in run.diffs.items():
        acts = diff.activations.sort_values("step", kind="stable")
        panels[name] = {
            str(hook): (rows["step"], rows["rel_diff_norm"])
            for hook, rows in acts.groupby("hook", sort=False)
        }
    figure = lines_side_by_side(panels)
    figure.update_yaxes(title_text="relative change", row=1, col=1)
    return _titled(figure, "Activations: relative change per hook")


def series_colour(run: RunResult, name: str) -> str:
    """A series' colour in every figure of the run: its place in the run's order."""
    place = run.series.index(name) if name in run.series else len(run.series)
    return PALETTE[place % len(PALETTE)]


def _lines_per_series(
    run: RunResult, frame: pd.DataFrame, value: str, interval: tuple[str, str] | None = None
) -> go.Figure:
    """One line of ``value`` by step per series of ``frame``, in the run's order and
    colours; ``interval = (lo, hi)`` columns draw as error bars."""
    figure = go.Figure()
    for name, rows in run.in_run_order(frame).groupby("series", sort=False):
        rows = rows.sort_values("step")
        colour = series_colour(run, str(name))
        bars = None
        if interval is not None:
            lo, hi = interval
            bars = {
                "type": "data",
                "symmetric": False,
                "array": rows[hi] - rows[value],
                "arrayminus": rows[value] - rows[lo],
                "color": colour,
            }
        figure.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows[value],
                name=str(name),
                mode="lines+markers",
                line={"color": colour},
                error_y=bars,
            )
        )
    return figure


def fvu_drift_figure(run: RunResult) -> go.Figure:
    """Fraction of variance the base SAE leaves unexplained on each checkpoint."""
    drift = run.fvu_drift
    if drift.empty:
        return _empty("Dictionaries: no FVU drift (the dictionaries stage has not run)")
    figure = _lines_per_series(run, drift, "fvu")
    hook = run.dictionary_info.get("hook", "")
    figure.update_layout(xaxis_title="RL step", yaxis_title="FVU of the base SAE")
    return _titled(figure, f"Dictionaries: FVU drift at {hook}")


def latent_trajectory_figure(run: RunResult, latent: int) -> go.Figure:
    """One latent's mean activation by RL step, every series."""
    steps = run.latent_steps
    rows = steps[steps["latent"] == latent] if not steps.empty else steps
    if rows.empty:
        return _empty(f"Latent {latent}: no activity table")
    figure = _lines_per_series(run, rows, "mean_activation")
    figure.update_layout(xaxis_title="RL step", yaxis_title="mean activation")
    return _titled(figure, f"Latent {latent}: activation by RL step")


def tracking_figure(run: RunResult) -> go.Figure:
    """Tracked latents of the base SAE in each changing lineage class, by RL step (one
    panel per series; the on-policy source where measured, else the first)."""
    summary = run.tables.get("tracking/summary", pd.DataFrame())
    if summary.empty:
        return _empty("Tracking: no lineage (the tracking stage has not run)")
    names = list(dict.fromkeys(run.in_run_order(summary)["series"]))
    figure = side_by_side_figure(names)
    for col, name in enumerate(names, 1):
        rows = summary[summary["series"] == name]
        source = "on-policy" if "on-policy" in set(rows["source"]) else rows["source"].iloc[0]
        rows = rows[rows["source"] == source].sort_values("step")
        for i, cls in enumerate(CHANGES):
            if f"n_{cls}" not in rows:  # a class added since this run's tracking stage ran
                continue
            figure.add_trace(
                go.Bar(
                    x=rows["step"].astype(str),
                    y=rows[f"n_{cls}"],
                    name=cls,
                    legendgroup=cls,
                    showlegend=col == 1,
                    marker_color=PALETTE[i % len(PALETTE)],
                ),
                row=1,
                col=col,
            )
    figure.update_layout(barmode="stack", yaxis_title="tracked latents")
    return _titled(figure, "Tracking: lineage of the base SAE's latents")


def index_figure(run: RunResult) -> go.Figure:
    """The selection-versus-novelty index by RL step with its interval, one line per series
    (the most novel block's; 0: RL re-weighted what the base computes; 1: computation the
    base does not have)."""
    index = run.tables.get("selection/index", pd.DataFrame())
    if index.empty:
        return _empty("Selection: no index (the selection stage has not run)")
    figure = _lines_per_series(run, index, "index", interval=("index_lo", "index_hi"))
    figure.add_hline(
        y=SELECTION_SIDE,
        line={"dash": "dash", "width": 1, "color": "#777777"},
        annotation_text="0.5: selection below, novelty above",
        annotation_position="bottom right",
    )
    _mark_transitions(figure, run)
    figure.update_layout(
        xaxis_title="RL step", yaxis_title="selection (0) … novelty (1)", yaxis_range=[-0.05, 1.05]
    )
    return _titled(figure, "Selection-versus-novelty index")


def _mark_transitions(figure: go.Figure, run: RunResult) -> None:
    """Each series' index transition as a dotted line in its colour at the change point,
    its bootstrap interval shaded, and a label at the top naming its block."""
    found = run.in_run_order(run.tables.get("selection/transition", pd.DataFrame()))
    if found.empty:
        return
    for i, row in enumerate(found[found["index_found"].astype(bool)].itertuples()):
        colour = series_colour(run, str(row.series))
        figure.add_vline(x=row.index_step, line={"dash": "dot", "width": 1.5, "color": colour})
        if row.index_step_lo < row.index_step_hi:
            figure.add_vrect(
                x0=row.index_step_lo, x1=row.index_step_hi, fillcolor=colour, opacity=0.12, line_width=0
            )
        figure.add_annotation(
            x=row.index_step,
            y=1,
            yref="paper",
            yshift=-14 * i,
            xanchor="left",
            showarrow=False,
            text=f" {row.series}: transition{_block(row)}",
            font={"color": colour},
        )


def readings_figure(run: RunResult, reading: str) -> go.Figure:
    """The figure of one reading without a dictionary (``readings.figures.FIGURES``, by the
    name of its table), series side by side in the run's order."""
    found = run.tables.get(f"readings/{reading}", pd.DataFrame())
    if found.empty:
        return _empty(f"Readings: no {reading} table (the readings stage has not run)")
    return READINGS_FIGURES[reading](run.in_run_order(found))


def _block(row: Any) -> str:
    layer = getattr(row, "index_layer", None)
    return "" if layer is None or pd.isna(layer) else f" (block {int(layer)})"


def transition_figure(run: RunResult) -> go.Figure:
    """Which signal moved at which RL step (one panel per series; filled: moved), and the
    combined change point as a dotted line with its interval shaded."""
    signals = run.tables.get("transition/signals", pd.DataFrame())
    if signals.empty:
        return _empty("Transition: no signals (the transition stage has not run)")
    names = list(dict.fromkeys(run.in_run_order(signals)["series"]))
    points = run.tables.get("transition/change_points", pd.DataFrame())
    figure = side_by_side_figure(names)
    for col, name in enumerate(names, 1):
        rows = signals[signals["series"] == name]
        figure.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["signal"],
                mode="markers",
                marker={
                    "size": 11,
                    "symbol": ["square" if m else "square-open" for m in rows["moved"]],
                    "color": series_colour(run, name),
                },
                showlegend=False,
                hovertext=[
                    f"{v:.3g} (control {n:.3g})" for v, n in zip(rows["value"], rows["null"], strict=True)
                ],
            ),
            row=1,
            col=col,
        )
        own = points[points["series"] == name] if "series" in points else points.iloc[0:0]
        if len(own) and bool(own["found"].iloc[0]):
            point = own.iloc[0]
            figure.add_vline(x=point["step"], line={"dash": "dot"}, row=1, col=col)
            figure.add_vrect(
                x0=point["step_lo"], x1=point["step_hi"], opacity=0.12, line_width=0, row=1, col=col
            )
    figure.update_layout(yaxis={"type": "category"})
    return _titled(figure, "Transition: signals that moved (filled) and the combined change point")


def fidelity_figure(run: RunResult) -> go.Figure:
    """Reasoning fidelity by RL step with intervals (early answering, mistake insertion,
    reasoning-mediated share, consistency, filler gap), one panel per series measured."""
    steps = run.in_run_order(run.tables.get("fidelity/steps", pd.DataFrame()))
    if steps.empty:
        return _empty("Reasoning fidelity: not measured (no series states its reasoning)")
    return fidelity_figures.fidelity_figure(steps)


def rewards_figure(run: RunResult) -> go.Figure:
    """Proxy (optimised) and gold reward by RL step with intervals, the Goodhart onset
    marked, one panel per series measured."""
    steps = run.in_run_order(run.tables.get("fidelity/steps", pd.DataFrame()))
    if steps.empty or "gold" not in steps:
        return _empty("Proxy and gold reward: not measured (the fidelity stage has no series)")
    onsets = run.tables.get("fidelity/onsets", pd.DataFrame())
    return fidelity_figures.rewards_figure(steps, onset_marks(onsets) if not onsets.empty else {})


FIGURES: dict[str, Callable[[RunResult], go.Figure]] = {
    "behaviour": behaviour_figure,
    "weights": weights_figure,
    "activations": activations_figure,
    "outputs_kl": kl_figure,
    **{f"readings_{name}": partial(readings_figure, reading=name) for name in READINGS_FIGURES},
    "fvu_drift": fvu_drift_figure,
    "tracking": tracking_figure,
    "index": index_figure,
    "fidelity": fidelity_figure,
    "rewards": rewards_figure,
    "transition": transition_figure,
}
"""The run's figures by file name, in the report's order (what ``export_figures`` writes)."""


def _titled(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(title=title)
    figure.update_xaxes(title_text="RL step")  # every panel's
    return figure


def _empty(text: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(title=text, xaxis={"visible": False}, yaxis={"visible": False})
    return figure


def export_figures(run: RunResult, out: str | Path, fmt: Format = "pdf") -> list[Path]:
    """Write every figure of ``FIGURES`` to ``out/<name>.<fmt>`` in the paper theme (one
    kaleido session for all of them); return the paths."""
    if fmt not in ("pdf", "svg", "png"):
        raise RlinterpError(f"unknown figure format {fmt!r}; choose pdf, svg or png")
    import plotly.io as pio

    out = Path(out)
    figures = [paper(make(run)) for make in FIGURES.values()]
    paths = [out / f"{name}.{fmt}" for name in FIGURES]
    # ``out`` is claimed as every output directory is: absent, empty or a figure folder (one
    # export, replaced by the next), never a folder of other files or another artifact.
    entries = [f"{name}.{f}" for name in FIGURES for f in ("pdf", "svg", "png")]
    source = {"run": str(Path(run.root).resolve()), "format": fmt}
    rundir.claim(out, rundir.FIGURES, source, entries, force=True)
    try:
        pio.write_images(
            figures,
            paths,
            format=fmt,
            scale=1 if fmt != "png" else 3,
            width=[f.layout.width for f in figures],  # kaleido ignores the layout's size
            height=[f.layout.height for f in figures],
        )
    except (RuntimeError, ValueError) as e:
        if "chrom" in str(e).lower() or "kaleido" in str(e).lower():
            raise RlinterpError(
                f"static export needs kaleido and a Chromium ({e}); run `make setup` or "
                "`apt-get install chromium`"
            ) from e
        raise
    for path in paths:
        _make_stable(path, fmt)
    rundir.finish(out, rundir.FIGURES, {**source, "figures": [p.name for p in paths]})
    return paths


_PDF_DATE = re.compile(rb"/(CreationDate|ModDate) \(D:[^)]*\)")
_SVG_UID = re.compile(rb'<defs id="defs-([0-9a-f]+)"')


def _make_stable(path: Path, fmt: Format) -> None:
    """Remove what differs between two exports of the same figure: the PDF's creation
    dates (replaced by a fixed date) and the SVG's random plot id (replaced by a hash of
    the file name). Lengths are kept, so the PDF's cross-reference offsets stay valid."""
    data = path.read_bytes()
    if fmt == "pdf":
        data = _PDF_DATE.sub(
            lambda m: m.group(0)[: m.group(0).index(b"(D:") + 3] + b"19700101000000+00'00')", data
        )
    elif fmt == "svg":
        if found := _SVG_UID.search(data):
            uid = found.group(1)
            stable = hashlib.sha256(path.name.encode()).hexdigest()[: len(uid)].encode()
            data = re.sub(rb"(?<=[a-z-])" + uid + rb"(?![0-9a-f])", stable, data)
        # The root element's attribute order varies between exports (seen on figures
        # without traces): write them sorted.
        data = _SVG_ROOT.sub(
            lambda m: b"<svg " + b" ".join(sorted(_SVG_ATTRIBUTE.findall(m.group(1)))) + b">", data, count=1
        )
    path.write_bytes(data)


_SVG_ROOT = re.compile(rb"<svg ([^>]*)>")
_SVG_ATTRIBUTE = re.compile(rb'[\w:-]+="[^"]*"')
