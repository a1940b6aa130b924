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
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.report.theme import PALETTE
from ..core.report.theme import paper as paper
from ..diff.report import kl_figure as kl_figure
from ..diff.report import site_pivot
from ..errors import RlinterpError
from ..tracking.lineage import CHANGES

if TYPE_CHECKING:
    from .result import RunResult

Format = Literal["pdf", "svg", "png"]


def _side_by_side(names: list[str], shared_y: bool = True) -> go.Figure:
    return make_subplots(
        rows=1,
        cols=max(1, len(names)),
        subplot_titles=names or [""],
        shared_yaxes=shared_y,
        horizontal_spacing=0.06,
    )


def _lines_side_by_side(panels: dict[str, dict[str, tuple[pd.Series, pd.Series]]]) -> go.Figure:
    """One panel per name, each holding named lines ``(x, y)``; a line name has one colour
    and one legend entry across the panels."""
    figure = _side_by_side(list(panels))
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
    figure = _lines_side_by_side(panels)
    figure.update_yaxes(title_text="share of answers", row=1, col=1)
    return _titled(figure, "Behaviour: answer styles by RL step")


def weights_figure(run: RunResult) -> go.Figure:
    """Relative Frobenius change of the weights per (layer, component) and step."""
    names = run.series
    figure = _side_by_side(names)
    for col, name in enumerate(names, 1):
        pivot = site_pivot(run.diffs[name].weights_by_component)
        figure.add_trace(
            go.Heatmap(
                z=pivot.to_numpy(),
                x=[str(s) for s in pivot.columns],
                y=list(pivot.index),
                coloraxis="coloraxis",
            ),
            row=1,
            col=col,
        )
    figure.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": "rel. change"}})
    figure.update_yaxes(autorange="reversed")
    return _titled(figure, "Weights: relative Frobenius change")


def activations_figure(run: RunResult) -> go.Figure:
    """Mean per-token relative activation change ``||post - base|| / ||base||`` per hook."""
    panels = {}
    for name, diff in run.diffs.items():
        acts = diff.activations.sort_values("step", kind="stable")
        panels[name] = {
            str(hook): (rows["step"], rows["rel_diff_norm"])
            for hook, rows in acts.groupby("hook", sort=False)
        }
    figure = _lines_side_by_side(panels)
    figure.update_yaxes(title_text="relative change", row=1, col=1)
    return _titled(figure, "Activations: relative change per hook")


def _lines_per_series(frame: pd.DataFrame, value: str, interval: tuple[str, str] | None = None) -> go.Figure:
    """One line of ``value`` by step per series of ``frame`` (in its order), one colour
    each; ``interval = (lo, hi)`` columns draw as error bars."""
    figure = go.Figure()
    for i, (name, rows) in enumerate(frame.groupby("series", sort=False)):
        rows = rows.sort_values("step")
        colour = PALETTE[i % len(PALETTE)]
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
    figure = _lines_per_series(drift, "fvu")
    hook = run.dictionary_info.get("hook", "")
    figure.update_layout(xaxis_title="RL step", yaxis_title="FVU of the base SAE")
    return _titled(figure, f"Dictionaries: FVU drift at {hook}")


def latent_trajectory_figure(run: RunResult, latent: int) -> go.Figure:
    """One latent's mean activation by RL step, every series."""
    steps = run.latent_steps
    rows = steps[steps["latent"] == latent] if not steps.empty else steps
    if rows.empty:
        return _empty(f"Latent {latent}: no activity table")
    figure = _lines_per_series(rows, "mean_activation")
    figure.update_layout(xaxis_title="RL step", yaxis_title="mean activation")
    return _titled(figure, f"Latent {latent}: activation by RL step")


def tracking_figure(run: RunResult) -> go.Figure:
    """Tracked latents of the base SAE in each changing lineage class, by RL step (one
    panel per series; the on-policy source where measured, else the first)."""
    summary = run.tables.get("tracking/summary", pd.DataFrame())
    if summary.empty:
        return _empty("Tracking: no lineage (the tracking stage has not run)")
    names = list(dict.fromkeys(summary["series"]))
    figure = _side_by_side(names)
    for col, name in enumerate(names, 1):
        rows = summary[summary["series"] == name]
        source = "on-policy" if "on-policy" in set(rows["source"]) else rows["source"].iloc[0]
        rows = rows[rows["source"] == source].sort_values("step")
        for i, cls in enumerate(CHANGES):
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
    """The selection-versus-novelty index by RL step with its bootstrap interval, one
    line per series (0: RL re-weighted persona directions; 1: it wrote new ones)."""
    index = run.tables.get("selection/index", pd.DataFrame())
    if index.empty:
        return _empty("Selection: no index (the selection stage has not run)")
    figure = _lines_per_series(index, "index", interval=("index_lo", "index_hi"))
    figure.update_layout(xaxis_title="RL step", yaxis_title="selection (0) … novelty (1)")
    return _titled(figure, "Selection-versus-novelty index")


FIGURES: dict[str, Callable[[RunResult], go.Figure]] = {
    "behaviour": behaviour_figure,
    "weights": weights_figure,
    "activations": activations_figure,
    "outputs_kl": kl_figure,
    "fvu_drift": fvu_drift_figure,
    "tracking": tracking_figure,
    "index": index_figure,
}
"""The run's figures by file name, in the report's order (what ``export_figures`` writes)."""


def _titled(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(title=title)
    for col in range(1, len(figure.layout.annotations) + 1):  # one x title per subplot
        figure.update_xaxes(title_text="RL step", row=1, col=col)
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
    out.mkdir(parents=True, exist_ok=True)
    figures = [paper(make(run)) for make in FIGURES.values()]
    paths = [out / f"{name}.{fmt}" for name in FIGURES]
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
