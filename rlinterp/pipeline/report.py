"""The report of a run: one self-contained ``report.html`` and a ``report.md`` summary.

The HTML report is a list of sections (``SECTIONS``); each renders from a ``RunResult``
into HTML and figures, and a section whose stage has not run shows an empty-state line
instead. Later stages add theirs with ``register_section``. The page inlines plotly.js
exactly once (in the first figure), so it opens offline; the latent table is searchable
and sortable with a few lines of plain JavaScript (``page.SCRIPT``).

``report.md`` holds the headline table and the top features, for pasting into an issue
or a lab notebook. Both escape model text (HTML entities in the page; code spans with
backticks removed in Markdown).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..core.artifacts import atomic_write
from ..core.page import empty, esc, figure_div, fmt, linked_table, page, table
from ..selection.analysis import CHOICE_COLUMNS
from ..selection.index import LAYER_COLUMNS
from .figures import (
    TRACKED_CHANGES,
    activations_figure,
    behaviour_figure,
    fvu_drift_figure,
    index_figure,
    kl_figure,
    tracking_figure,
    weights_figure,
)
from .result import RunResult, transitions


@dataclass(frozen=True)
class Content:
    """What a section shows: HTML blocks and figures, in order (a figure is placed where
    its entry is)."""

    parts: tuple[str | go.Figure, ...]


@dataclass(frozen=True)
class Section:
    """One section of the report."""

    id: str
    """Anchor and navigation name."""
    title: str
    render: Callable[[RunResult], Content]


def behaviour_section(run: RunResult) -> Content:
    if run.behaviour.empty:
        return Content((empty("No behaviour table: the series do not come from the organism."),))
    columns = [c for c in run.behaviour.columns if c not in ("share_none_near", "share_none_far")]
    return Content((behaviour_figure(run), table(run.behaviour, columns)))


def weights_section(run: RunResult) -> Content:
    return Content((weights_figure(run),)) if run.diffs else Content((empty("No diff yet."),))


def activations_section(run: RunResult) -> Content:
    return Content((activations_figure(run),)) if run.diffs else Content((empty("No diff yet."),))


def outputs_section(run: RunResult) -> Content:
    if not run.diffs:
        return Content((empty("No diff yet."),))
    columns = []
    for name, diff in run.diffs.items():
        columns.append(f"<div><h3>{esc(name)}</h3>{_lens(diff.lens)}{_top_tokens(diff.top_tokens)}</div>")
    return Content((kl_figure(run), f"<div class='side'>{''.join(columns)}</div>"))


def _lens(lens: pd.DataFrame) -> str:
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
    return (
        f"<p>Activation-difference lens at <b>{esc(last['label'].iloc[0])}</b> (mean difference "
        "through W_U):</p>" + table(pd.DataFrame(rows))
    )


def _top_tokens(tops: pd.DataFrame, n: int = 8) -> str:
    if tops.empty:
        return empty("No token changed.")
    last = tops[tops["label"] == tops["label"].iloc[-1]]
    kl = last[last["source"] == "kl"]
    if kl.empty:
        return empty("No KL rows at the last checkpoint.")
    shown = kl.drop_duplicates(["context", "token"]).head(n)
    rows = "".join(
        f"<tr><td>{esc(r.context)}<mark>{esc(r.token)}</mark></td><td>{esc(fmt(float(r.kl)))}</td>"
        f"<td>{esc(repr(r.base_top))} → {esc(repr(r.post_top))}</td></tr>"
        for r in shown.itertuples()
    )
    return (
        "<p>Positions whose next-token distribution moved most:</p><table><thead><tr><th>context "
        f"(position marked)</th><th>KL</th><th>base → post</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def dictionaries_section(run: RunResult) -> Content:
    if run.fvu_drift.empty:
        return Content((empty("No dictionaries yet: the dictionaries stage has not run."),))
    quality = run.fvu_drift[run.fvu_drift["step"] == 0].head(1)
    columns = ["explained_variance", "l0", "dead_fraction", "dense_fraction", "n_tokens"]
    info = run.dictionary_info
    extra = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in info.get("extra", {}).items())
    return Content(
        (
            f"<p>Base SAE at <code>{esc(info.get('hook', ''))}</code>, quality on the base model:</p>",
            table(quality, columns),
            fvu_drift_figure(run),
            f"<ul>{extra}</ul>" if extra else "",
        )
    )


def features_section(run: RunResult, cards: int | None = None) -> Content:
    latents = run.latent_table()
    if latents.empty:
        return Content((empty("No feature cards yet: the dictionaries stage has not run."),))
    n = cards if cards is not None else int(run.config.get("dictionaries", {}).get("cards", 24))
    carded = [run.card(int(j)) for j in latents["latent"].head(n)]
    anchors: dict[object, str] = {c.latent: c.anchor for c in carded}
    columns = [c for c in latents.columns]
    intro = (
        f"<p>Every latent of the base SAE; the {len(carded)} whose activity changed most link to "
        "their card. Type to filter; click a header to sort.</p>"
    )
    return Content(
        (intro, linked_table(latents, columns, "latent", anchors, "latents"), *(c.to_html() for c in carded))
    )


def _skipped(run: RunResult, stage: str) -> str:
    """The series a stage could not analyse, with its reasons (``run_stages.SKIPPED``)."""
    path = run.root / stage / "skipped.json"
    reasons = json.loads(path.read_text()) if path.is_file() else {}
    return "".join(empty(f"{name}: not analysed ({why})") for name, why in reasons.items())


def _per_series(frame: pd.DataFrame, columns: list[str]) -> str:
    """One table per series, side by side."""
    blocks = [
        f"<div><h3>{esc(name)}</h3>{table(rows, [c for c in columns if c in rows])}</div>"
        for name, rows in frame.groupby("series", sort=False)
    ]
    return f"<div class='side'>{''.join(blocks)}</div>"


def tracking_section(run: RunResult) -> Content:
    summary = run.tables.get("tracking/summary", pd.DataFrame())
    if summary.empty:
        return Content((empty("Feature tracking has not run (stage 'tracking')."), _skipped(run, "tracking")))
    counts = [f"n_{c}" for c in TRACKED_CHANGES]
    columns = [
        "source",
        "step",
        "explained_variance",
        *counts,
        "born",
        "noise_born",
        "novel_born",
        "seed_born",
    ]
    intro = (
        "<p>Every latent of the base SAE followed over the RL steps (<code>rlinterp track</code>): its "
        "lineage class per step and token source; <i>born</i> / <i>noise_born</i> count new directions of "
        "an SAE trained on the step against the seed control's chance count; <i>novel_born</i> / "
        "<i>seed_born</i> the same on the step's own tokens with only the model changed.</p>"
    )
    lineage = run.tables.get("tracking/lineage", pd.DataFrame())
    changed = pd.DataFrame()
    if not lineage.empty:
        last = lineage[lineage["step"] == lineage.groupby("series")["step"].transform("max")]
        changed = last[last["class"].isin(TRACKED_CHANGES)]
    shown = ["series", "source", "latent", "class", "frequency_ratio", "activity_ratio", "dec_cos_base"]
    latents = (
        "<p>Latents in a changing class at each series' last step (type to filter; click a header "
        "to sort):</p>" + table(changed, [c for c in shown if c in changed], table_id="lineage")
        if not changed.empty
        else empty("No tracked latent changed class at the last step.")
    )
    return Content(
        (intro, tracking_figure(run), _per_series(summary, columns), latents, _skipped(run, "tracking"))
    )


def persona_section(run: RunResult) -> Content:
    index = run.tables.get("selection/index", pd.DataFrame())
    if index.empty:
        return Content(
            (empty("No persona features or index yet (stage 'selection')."), _skipped(run, "selection"))
        )
    transition = run.tables.get("selection/transition", pd.DataFrame())
    layers = run.tables.get("selection/index_layers", pd.DataFrame())
    latents = run.tables.get("selection/persona_latents", pd.DataFrame())
    causal = run.tables.get("selection/causal", pd.DataFrame())
    columns = [
        "step",
        "index",
        "index_lo",
        "index_hi",
        "side",
        "layer",
        "dictionary_share",
        "fvu_drift",
        "persona_share",
        "persona_baseline",
        *(c for c in CHOICE_COLUMNS.values() if c in index.columns),
    ]
    parts: list[str | go.Figure] = [
        "<p>The selection-versus-novelty index per step (<code>rlinterp selection</code>) with its "
        "bootstrap interval: near 0, RL moved activations along the persona directions the base "
        "already had; near 1, along new ones. The transition is the index's change point; the "
        "behavioural step is where most sampled answers stop matching any persona. "
        "<code>choice_*</code>: patching each prompt's coordinates along the persona directions "
        "at its decision position from the checkpoint into the base, the share of the decision "
        "KL (<code>choice_kl</code>) and of the behaviour change (<code>choice_shares</code>) it "
        "reproduces, each beside random subspaces of the same dimension.</p>",
        index_figure(run),
        table(transition),
        _per_series(index, columns),
    ]
    if not layers.empty:
        parts += [
            "<h3>The index per block</h3><p>Each block's own change (on the checkpoint's input) "
            "against what the base block computes there: the share a read-out of its heads and "
            "neurons leaves unexplained, over a seed control's (<code>selection.readout</code>).</p>",
            _per_series(layers, [c for c in LAYER_COLUMNS if c not in ("label", "hook")]),
        ]
    if not latents.empty:
        top = latents[latents["rank"] < 3] if "rank" in latents else latents
        parts += ["<h3>Persona latents (base SAE)</h3>", table(top, table_id="persona-latents")]
    if not causal.empty:
        parts += ["<h3>Causal checks</h3>", table(causal, table_id="causal")]
    return Content((*parts, _skipped(run, "selection")))


def circuits_section(run: RunResult) -> Content:
    steps = run.tables.get("circuits/steps", pd.DataFrame())
    if steps.empty:
        return Content((empty("No circuit diffs yet (stage 'circuits')."), _skipped(run, "circuits")))
    verdicts = steps.pivot_table(
        index=["series", "step"], columns="metric", values="verdict", aggfunc="first"
    )
    columns = ["metric", "step", "change", "carriers", "joint_recovery", "overlap", "chance_overlap"]
    columns += ["cancellation", "verdict", "top_sufficiency"]
    return Content(
        (
            "<p>Which components carry each behaviour metric's change (<code>rlinterp circuits</code>): "
            "the <i>carriers</i> are the fewest components whose joint patch from the checkpoint into "
            "the base recovers the change; <i>enhanced</i> when most of them were already used by the "
            "base for the behaviour, <i>new</i> when not.</p>",
            _per_series(verdicts.reset_index().rename_axis(columns=None), ["step", *verdicts.columns]),
            _per_series(steps, columns),
            _skipped(run, "circuits"),
        )
    )


SECTIONS: list[Section] = [
    Section("behaviour", "Behaviour", behaviour_section),
    Section("weights", "Weights", weights_section),
    Section("activations", "Activations", activations_section),
    Section("outputs", "Outputs", outputs_section),
    Section("dictionaries", "Dictionaries", dictionaries_section),
    Section("features", "Features", features_section),
    Section("tracking", "Tracking", tracking_section),
    Section("persona", "Persona features and index", persona_section),
    Section("circuits", "Circuits", circuits_section),
]


def register_section(section: Section, after: str | None = None) -> None:
    """Add (or replace, by id) a report section, after the one with id ``after``."""
    ids = [s.id for s in SECTIONS]
    if section.id in ids:
        SECTIONS[ids.index(section.id)] = section
    else:
        SECTIONS.insert(ids.index(after) + 1 if after else len(SECTIONS), section)


def render_run_report(run: RunResult) -> str:
    """The whole report as one HTML string (plotly.js inlined once)."""
    nav = "<nav>" + "".join(f"<a href='#{esc(s.id)}'>{esc(s.title)}</a>" for s in SECTIONS) + "</nav>"
    body = [nav, "<h2 id='summary'>Summary</h2>", table(run.summary())]
    plotly_included = False
    for section in SECTIONS:
        body.append(f"<h2 id='{esc(section.id)}'>{esc(section.title)}</h2>")
        for part in section.render(run).parts:
            if isinstance(part, go.Figure):
                body.append(figure_div(part, include_plotlyjs=not plotly_included))
                plotly_included = True
            else:
                body.append(part)
    title = f"rlinterp run: {', '.join(run.series) or 'no series yet'}"
    return page(title, "".join(body))


def _md_cell(value: object) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", "\\n") + "`"


def render_markdown(run: RunResult, top: int = 10) -> str:
    """The headline table and the top features as Markdown."""
    summary = run.summary()
    lines = [f"# rlinterp run: {', '.join(run.series)}", "", f"Report: `{run.report_path}`", ""]
    lines += ["| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in summary.itertuples(index=False)]
    found = transitions(run)
    if found:
        lines += ["", "## Transitions (selection-versus-novelty index, behaviour)", ""]
        lines += [f"- {_md_code(line)}" for line in found]
    latents = run.latent_table()
    if not latents.empty:
        hook = run.dictionary_info.get("hook", "")
        lines += ["", f"## Top features (base SAE at `{hook}`, largest change in mean activation)", ""]
        change_columns = [c for c in latents.columns if c.endswith("_change")]
        lines += ["| latent | " + " | ".join(change_columns) + " | promotes | top context (base) |"]
        lines += ["|" + "---|" * (len(change_columns) + 3)]
        for row in latents.head(top).itertuples(index=False):
            context = run.contexts[
                (run.contexts["latent"] == row.latent) & (run.contexts["series"] == "base")
            ]
            snippet = "".join(context.iloc[0]["tokens"]) if len(context) else ""
            changes = " | ".join(_md_cell(getattr(row, c)) for c in change_columns)
            lines.append(
                f"| {row.latent} | {changes} | {_md_code(str(row.promotes))} | {_md_code(snippet)} |"
            )
    return "\n".join(lines) + "\n"


def write_reports(root: str | Path) -> Path:
    """Render ``report.html`` and ``report.md`` of the run in ``root``; return the HTML path."""
    run = RunResult.load(root)
    html_text = render_run_report(run)
    markdown = render_markdown(run)
    atomic_write(run.report_path, lambda tmp: tmp.write_text(html_text, encoding="utf-8"))
    atomic_write(run.root / "report.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    return run.report_path
