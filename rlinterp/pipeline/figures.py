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

from ..core.page import PALETTE
from ..errors import RlinterpError

if TYPE_CHECKING:
    from .result import RunResult

Format = Literal["pdf", "svg", "png"]
FULL_WIDTH, COLUMN_WIDTH = 504, 252
"""Figure widths in points (1 px = 1 pt in the export): a two-column paper's text width
(7 in) and one column (3.5 in)."""


def _side_by_side(names: list[str], shared_y: bool = True) -> go.Figure:
    return make_subplots(
        rows=1,
        cols=max(1, len(names)),
        subplot_titles=names or [""],
        shared_yaxes=shared_y,
        horizontal_spacing=0.06,
    )


def behaviour_figure(run: RunResult) -> go.Figure:
    """Share of sampled answers in each persona's style (and mixed / none) by RL step."""
    table = run.behaviour
    if table.empty:
        return _empty("Behaviour: no behaviour table (the series is not an organism)")
    regimes = [r for r in run.series if r in set(table["regime"])] or sorted(set(table["regime"]))
    shares = [
        c for c in table.columns if c.startswith("share_") and c not in ("share_none_near", "share_none_far")
    ]
    figure = _side_by_side(regimes)
    for col, regime in enumerate(regimes, 1):
        rows = table[table["regime"] == regime].sort_values("step")
        for i, share in enumerate(shares):
            figure.add_trace(
                go.Scatter(
                    x=rows["step"],
                    y=rows[share],
                    name=share.removeprefix("share_"),
                    legendgroup=share,
                    showlegend=col == 1,
                    mode="lines+markers",
                    line={"color": PALETTE[i % len(PALETTE)]},
                ),
                row=1,
                col=col,
            )
    figure.update_yaxes(title_text="share of answers", row=1, col=1)
    return _titled(figure, "Behaviour: answer styles by RL step")


def weights_figure(run: RunResult) -> go.Figure:
    """Relative Frobenius change of the weights per (layer, component) and step."""
    names = run.series
    figure = _side_by_side(names)
    for col, name in enumerate(names, 1):
        frame = run.diffs[name].weights_by_component
        site = [
            f"{'' if pd.isna(layer) else f'L{int(layer)} '}{component}"
            for layer, component in zip(frame["layer"], frame["component"], strict=True)
        ]
        pivot = frame.assign(site=site).pivot_table(
            index="site", columns="step", values="rel_frobenius", aggfunc="first", sort=False
        )
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
    names = run.series
    figure = _side_by_side(names)
    hooks = list(dict.fromkeys(h for d in run.diffs.values() for h in d.activations["hook"]))
    for col, name in enumerate(names, 1):
        acts = run.diffs[name].activations
        for i, hook in enumerate(hooks):
            rows = acts[acts["hook"] == hook].sort_values("step")
            figure.add_trace(
                go.Scatter(
                    x=rows["step"],
                    y=rows["rel_diff_norm"],
                    name=hook,
                    legendgroup=hook,
                    showlegend=col == 1,
                    mode="lines+markers",
                    line={"color": PALETTE[i % len(PALETTE)]},
                ),
                row=1,
                col=col,
            )
    figure.update_yaxes(title_text="relative change", row=1, col=1)
    return _titled(figure, "Activations: relative change per hook")


def kl_figure(run: RunResult) -> go.Figure:
    """Mean per-token KL(post || base) of the next-token distribution, every series."""
    figure = go.Figure()
    for i, name in enumerate(run.series):
        outputs = run.diffs[name].outputs.sort_values("step")
        figure.add_trace(
            go.Scatter(
                x=outputs["step"],
                y=outputs["kl_mean"],
                name=name,
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    figure.update_layout(xaxis_title="RL step", yaxis_title="nats per token", yaxis_type="log")
    return _titled(figure, "Outputs: KL(post || base)")


def fvu_drift_figure(run: RunResult) -> go.Figure:
    """Fraction of variance the base SAE leaves unexplained on each checkpoint."""
    drift = run.fvu_drift
    if drift.empty:
        return _empty("Dictionaries: no FVU drift (the dictionaries stage has not run)")
    figure = go.Figure()
    for i, name in enumerate(dict.fromkeys(drift["series"])):
        rows = drift[drift["series"] == name].sort_values("step")
        figure.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["fvu"],
                name=str(name),
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    hook = run.dictionary_info.get("hook", "")
    figure.update_layout(xaxis_title="RL step", yaxis_title="FVU of the base SAE")
    return _titled(figure, f"Dictionaries: FVU drift at {hook}")


def latent_trajectory_figure(run: RunResult, latent: int) -> go.Figure:
    """One latent's mean activation by RL step, every series."""
    steps = run.latent_steps
    rows = steps[steps["latent"] == latent] if not steps.empty else steps
    if rows.empty:
        return _empty(f"Latent {latent}: no activity table")
    figure = go.Figure()
    for i, (name, group) in enumerate(rows.groupby("series", sort=False)):
        group = group.sort_values("step")
        figure.add_trace(
            go.Scatter(
                x=group["step"],
                y=group["mean_activation"],
                name=str(name),
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    figure.update_layout(xaxis_title="RL step", yaxis_title="mean activation")
    return _titled(figure, f"Latent {latent}: activation by RL step")


TRACKED_CHANGES = (
    "amplified",
    "suppressed",
    "rotated",
    "repurposed",
    "new_direction",
    "born",
    "died",
    "split",
    "merged",
)
"""The lineage classes drawn (``stable`` and ``inactive`` are the rest of the latents)."""


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
        for i, cls in enumerate(TRACKED_CHANGES):
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
    figure = go.Figure()
    for i, name in enumerate(dict.fromkeys(index["series"])):
        rows = index[index["series"] == name].sort_values("step")
        colour = PALETTE[i % len(PALETTE)]
        figure.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["index"],
                name=str(name),
                mode="lines+markers",
                line={"color": colour},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": rows["index_hi"] - rows["index"],
                    "arrayminus": rows["index"] - rows["index_lo"],
                    "color": colour,
                },
            )
        )
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
"""The report's figures by file name; later stages add theirs with ``register_figure``."""


def register_figure(name: str, figure: Callable[[RunResult], go.Figure]) -> None:
    FIGURES[name] = figure


def _titled(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(title=title)
    for col in range(1, len(figure.layout.annotations) + 1):  # one x title per subplot
        figure.update_xaxes(title_text="RL step", row=1, col=col)
    return figure


def _empty(text: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(title=text, xaxis={"visible": False}, yaxis={"visible": False})
    return figure


def paper(figure: go.Figure, width: int | None = None) -> go.Figure:
    """A copy of ``figure`` in the publication theme: full text width when it has several
    panels, one column otherwise; 8 pt sans-serif; white background; no modebar."""
    themed = go.Figure(figure)
    panels = sum(1 for key in themed.layout if key.startswith("xaxis"))  # xaxis, xaxis2, ...
    width = width or (FULL_WIDTH if panels > 1 or themed.layout.coloraxis.colorscale else COLUMN_WIDTH)
    themed.update_layout(
        template="simple_white",
        width=width,
        height=int(width * (0.42 if width == FULL_WIDTH else 0.75)),
        font={"family": "Helvetica, Arial, sans-serif", "size": 8, "color": "black"},
        title={"font": {"size": 9}, "x": 0.0, "xanchor": "left"},
        margin={"l": 45, "r": 10, "t": 35, "b": 35},
        legend={"font": {"size": 7}, "tracegroupgap": 0, "itemwidth": 30},
        colorway=list(PALETTE),
    )
    themed.update_annotations(font_size=8)
    themed.update_traces(marker_size=4, line_width=1.5, selector={"type": "scatter"})
    for i, trace in enumerate(themed.data):
        trace.uid = f"trace-{i}"  # plotly draws a random one otherwise: byte-stable SVG
    return themed


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
