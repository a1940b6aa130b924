"""Figures and report sections of feature tracking, and ``rlinterp track``'s report.

Figures are built from a ``TrackResult``'s tables only. The sections (``NOTE``,
``changed_latents_table``) are what the track report and the run report both show; the
page is the report kit's. Every piece of model text is escaped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write
from ..core.report import Html, Section, empty, fmt, marked, page, table
from .lineage import CHANGES
from .result import TrackResult

TRACKED_CLASSES = ("amplified", "suppressed", "born", "died")
"""Lineage classes whose latents the tracking report draws."""
LATENTS_PER_CLASS = 3
"""Latents drawn per class and source: those whose mass changed most between the first
and the last step."""
SAMPLE_ROWS = 6
"""On-policy samples shown per step (the first and the last)."""
SUMMARY_COLUMNS = (
    "source",
    "step",
    "explained_variance",
    *(f"n_{c}" for c in CHANGES),
    "born",
    "noise_born",
    "novel_born",
    "seed_born",
)
"""The headline columns of a tracking summary (the run report's table per series)."""
NOTE = Html(
    "<p>Every latent of the dictionary followed over the RL steps (<code>rlinterp track</code>): its "
    "lineage class per step and token source; <i>born</i> / <i>noise_born</i> count new directions of "
    "an SAE trained on the step against the seed control's chance count; <i>novel_born</i> / "
    "<i>seed_born</i> the same on the step's own tokens with only the model changed.</p>"
)
"""What the tracking tables say, above them in every report."""


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


def changed_latents_table(lineage: pd.DataFrame) -> Html:
    """The tracked latents in a changing class at the last step (of each series, when the
    table holds several), searchable and sortable."""
    if "evidence" in lineage:
        lineage = lineage[lineage["evidence"] == "tracked"]
    if lineage.empty:
        return empty("No tracked latent changed class at the last step.")
    keys = ["series"] if "series" in lineage else []
    last_step = lineage.groupby(keys)["step"].transform("max") if keys else lineage["step"].max()
    last = lineage[lineage["step"] == last_step]
    changed = last[last["class"].isin(CHANGES)]
    if changed.empty:
        return empty("No tracked latent changed class at the last step.")
    shown = ["series", "source", "latent", "class", "frequency_ratio", "activity_ratio", "dec_cos_base"]
    return Html(
        "<p>Latents in a changing class at the last step (type to filter; click a header to "
        "sort):</p>" + table(changed, [c for c in shown if c in changed], table_id="lineage")
    )


def contexts_table(result: TrackResult, source: str, latents: dict[str, list[int]]) -> Html:
    """Per chosen latent: its class with the evidence at the last step, and its distinct top
    contexts at the first and the last step."""
    contexts = result.contexts[result.contexts["source"] == source]
    if contexts.empty or not any(latents.values()):
        return Html("")
    steps = (contexts["step"].min(), contexts["step"].max())
    tracked = result.lineage[
        (result.lineage["source"] == source)
        & (result.lineage["evidence"] == "tracked")
        & (result.lineage["step"] == steps[1])
    ].set_index("latent")
    rows = []
    for cls, members in latents.items():
        for latent in members:
            row: dict[str, Any] = {"class": cls, "latent": latent}
            row[f"evidence at step {steps[1]}"] = _evidence(
                tracked.loc[latent] if latent in tracked.index else None
            )
            for step in steps:
                shown = contexts[(contexts["latent"] == latent) & (contexts["step"] == step)]
                shown = shown.sort_values("rank").drop_duplicates(["context", "token"]).head(3)
                lines = [
                    Html(f"{marked(r.context, r.token)} ({float(r.activation):.3g})")
                    for r in shown.itertuples()
                ]
                row[f"top contexts, step {step}"] = Html("<br>".join(lines) or "(never fires)")
            rows.append(row)
    frame = pd.DataFrame(rows)
    return table(frame, markup=[c for c in frame.columns if c not in ("class", "latent")])


def _evidence(row: pd.Series | None) -> Html:
    if row is None:
        return Html("")
    names = ("frequency_ratio", "activation_ratio", "activity_ratio", "dec_cos_base")
    return Html("<br>".join(f"{name}: {fmt(float(row[name]))}" for name in names if pd.notna(row[name])))


def samples_table(samples: pd.DataFrame) -> Html:
    """The first answer to the first prompts at the first and the last step: prompt, then
    the answer the checkpoint wrote, marked."""
    if samples.empty:
        return empty("No on-policy samples (the on-policy source was not tracked).")
    first, last = samples["step"].min(), samples["step"].max()
    shown = samples[samples["step"].isin((first, last)) & (samples["sample"] == 0)]
    shown = shown.groupby("step", sort=True).head(SAMPLE_ROWS)
    rows = pd.DataFrame(
        {
            "step": shown["step"],
            "text": [marked(p, r) for p, r in zip(shown["prompt"], shown["response"], strict=True)],
        }
    )
    return Html(
        "<p>On-policy samples (prompt, then the answer the checkpoint wrote, marked):</p>"
        + table(rows, markup=["text"])
    )


def tracking_sections(result: TrackResult) -> tuple[Section, ...]:
    """The sections of a track report: summary, one per token source, samples."""
    summary = pd.DataFrame(result.summary())
    shown = [c for c in summary.columns if not summary[c].isna().all()]
    fit = fit_figure(result.trajectory_fit, result.stagewise_fit)
    sections = [Section("Summary", (NOTE, table(summary, shown), fit, changed_latents_table(result.lineage)))]
    for source in map(str, result.trajectory_fit["source"].unique()):
        latents = chosen_latents(result, source)
        figure = trajectory_figure(result.trajectories, source, latents)
        sections.append(Section(f"Source: {source}", (figure, contexts_table(result, source, latents))))
    sections.append(Section("On-policy samples", (samples_table(result.samples),)))
    return tuple(sections)


def render_tracking_report(result: TrackResult, title: str) -> str:
    """The tracking report as one self-contained HTML page."""
    return page(title, tracking_sections(result))


def write_tracking_report(result: TrackResult, path: str | Path, title: str | None = None) -> None:
    """Write the report of the track run beside ``path`` to ``path`` (atomically); the
    default title names the tracked dictionary, from the run's manifest."""
    path = Path(path)
    if title is None:
        manifest = path.parent / "manifest.json"
        found = json.loads(manifest.read_text()) if manifest.is_file() else {}
        steps = result.trajectory_fit["step"].nunique() - 1
        tracked = f"{found['method']} at {found['hook']} " if "method" in found else ""
        title = f"rlinterp track: {tracked}over {steps} checkpoints"
    text = render_tracking_report(result, title)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
