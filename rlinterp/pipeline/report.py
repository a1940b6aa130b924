"""The report of a run: one self-contained ``report.html`` and a ``report.md`` summary.

The HTML report is the ordered tuple of sections ``SECTIONS``; each renders from a
``RunResult`` into markup and figures, and a section whose stage has not run shows an
empty-state line instead. A section composes the sections its analysis contributes
(``diff.report``, ``readings.report``, ``tracking.report``, ``selection.report``,
``circuits.report``, ``fidelity.report``: the tables each command's own report shows too),
one block per series side by side. The page is the report kit's (``core.report``): it
opens offline, with plotly.js inlined once.

Both open with the answer per regime (``verdict.verdict_lines``, the lines the CLI summary
ends with). ``report.md`` holds it, the headline table and the top features, for pasting
into an issue or a lab notebook. Both escape model text (HTML entities in the page; code spans with
backticks removed in Markdown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pandas as pd

from ..circuits.report import VERDICT_NOTE, verdict_table
from ..core.artifacts import atomic_write, read_json_object
from ..core.report import Part, Section, empty, esc, fmt, page, side_by_side, table
from ..diff.report import kl_figure, lens_table, top_tokens_table
from ..fidelity import figures as fidelity_figures
from ..fidelity.report import NOTE as FIDELITY_NOTE
from ..fidelity.report import ONSET_COLUMNS, gao_fits, interval_table, reading_list
from ..readings.report import SHOWN as READINGS_TABLES
from ..readings.report import readings_parts
from ..selection.report import INDEX_NOTE, LAYERS_NOTE, index_table, layers_table
from ..tracking.report import NOTE as TRACKING_NOTE
from ..tracking.report import SUMMARY_COLUMNS as TRACKING_COLUMNS
from ..tracking.report import changed_latents_table
from .figures import (
    activations_figure,
    behaviour_figure,
    fidelity_figure,
    fvu_drift_figure,
    index_figure,
    rewards_figure,
    tracking_figure,
    transition_figure,
    weights_figure,
)
from .result import RunResult, fidelity_lines
from .verdict import verdict_lines

Parts: TypeAlias = tuple[Part, ...]


@dataclass(frozen=True)
class RunSection:
    """One section of the run report."""

    id: str
    """Anchor and navigation name."""
    title: str
    """Its heading."""
    render: Callable[[RunResult], Parts]
    """Its parts (markup and figures, in order) from a run; an empty-state line when the
    stage it shows has not run."""


def behaviour_section(run: RunResult) -> Parts:
    if run.behaviour.empty:
        return (empty("No behaviour table: the series do not come from the organism."),)
    columns = [c for c in run.behaviour.columns if c not in ("share_none_near", "share_none_far")]
    return (behaviour_figure(run), table(run.behaviour, columns))


def weights_section(run: RunResult) -> Parts:
    return (weights_figure(run),) if run.diffs else (empty("No diff yet."),)


def activations_section(run: RunResult) -> Parts:
    return (activations_figure(run),) if run.diffs else (empty("No diff yet."),)


def outputs_section(run: RunResult) -> Parts:
    if not run.diffs:
        return (empty("No diff yet."),)
    blocks = {name: lens_table(d.lens) + top_tokens_table(d.top_tokens, n=8) for name, d in run.diffs.items()}
    return (kl_figure(run), side_by_side(blocks))


def readings_section(run: RunResult) -> Parts:
    tables = {
        name: run.in_run_order(run.tables.get(f"readings/{name}", pd.DataFrame())) for name in READINGS_TABLES
    }
    if all(frame.empty for frame in tables.values()):
        return (empty("The readings have not run (stage 'readings')."), _skipped(run, "readings"))
    parts: list[Part] = []
    for title, shown in readings_parts(tables, lambda frame, render: _per_series(run, frame, render)).items():
        parts += [f"<h3>{esc(title)}</h3>", *shown]
    return (*parts, _skipped(run, "readings"))


def dictionaries_section(run: RunResult) -> Parts:
    if run.fvu_drift.empty:
        return (empty("No dictionaries yet: the dictionaries stage has not run."),)
    quality = run.fvu_drift[run.fvu_drift["step"] == 0].head(1)
    columns = ["explained_variance", "l0", "dead_fraction", "dense_fraction", "n_tokens"]
    info = run.dictionary_info
    extra = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in info.get("extra", {}).items())
    return (
        f"<p>Base SAE at <code>{esc(info.get('hook', ''))}</code>, quality on the base model:</p>",
        table(quality, columns),
        fvu_drift_figure(run),
        f"<ul>{extra}</ul>" if extra else "",
    )


def features_section(run: RunResult, cards: int | None = None) -> Parts:
    latents = run.latent_table()
    if latents.empty:
        return (empty("No feature cards yet: the dictionaries stage has not run."),)
    n = cards if cards is not None else int(run.config.get("dictionaries", {}).get("cards", 24))
    carded = [run.card(int(j)) for j in latents["latent"].head(n)]
    anchors: dict[object, str] = {c.latent: c.anchor for c in carded}
    intro = (
        f"<p>Every latent of the base SAE; the {len(carded)} whose activity changed most link to "
        "their card. Type to filter; click a header to sort.</p>"
    )
    latent_table = table(latents, table_id="latents", links=("latent", anchors))
    return (intro, latent_table, *(c.to_html() for c in carded))


def _skipped(run: RunResult, stage: str) -> str:
    """The series a stage could not analyse, with its reasons (``stages.SKIPPED``)."""
    path = run.root / stage / "skipped.json"
    remedy = f"delete {run.root / 'stages' / stage}.json to run the {stage} stage again"
    reasons = read_json_object(path, remedy) if path.is_file() else {}
    return "".join(empty(f"{name}: not analysed ({why})") for name, why in reasons.items())


def _per_series(run: RunResult, frame: pd.DataFrame, render: Callable[[pd.DataFrame], str]) -> str:
    """One block per series (``render`` of its rows), side by side, in the run's order."""
    groups = run.in_run_order(frame).groupby("series", sort=False)
    return side_by_side({str(name): render(rows) for name, rows in groups})


def tracking_section(run: RunResult) -> Parts:
    summary = run.tables.get("tracking/summary", pd.DataFrame())
    if summary.empty:
        return (empty("Feature tracking has not run (stage 'tracking')."), _skipped(run, "tracking"))
    per_series = _per_series(
        run, summary, lambda rows: table(rows, [c for c in TRACKING_COLUMNS if c in rows])
    )
    lineage = run.in_run_order(run.tables.get("tracking/lineage", pd.DataFrame()))
    return (
        TRACKING_NOTE,
        tracking_figure(run),
        per_series,
        changed_latents_table(lineage),
        _skipped(run, "tracking"),
    )


def persona_section(run: RunResult) -> Parts:
    index = run.tables.get("selection/index", pd.DataFrame())
    if index.empty:
        return (empty("No persona features or index yet (stage 'selection')."), _skipped(run, "selection"))
    transition, latents, causal, layers = (
        run.in_run_order(run.tables.get(f"selection/{name}", pd.DataFrame()))
        for name in ("transition", "persona_latents", "causal", "index_layers")
    )
    parts: list[Part] = [
        INDEX_NOTE,
        index_figure(run),
        table(transition),
        _per_series(run, index, index_table),
    ]
    if not layers.empty:
        parts += ["<h3>The index per block</h3>", LAYERS_NOTE, _per_series(run, layers, layers_table)]
    if not latents.empty:
        top = latents[latents["rank"] < 3] if "rank" in latents else latents
        parts += ["<h3>Persona latents (base SAE)</h3>", table(top, table_id="persona-latents")]
    if not causal.empty:
        parts += ["<h3>Causal checks</h3>", table(causal, table_id="causal")]
    return (*parts, _skipped(run, "selection"))


def circuits_section(run: RunResult) -> Parts:
    steps = run.tables.get("circuits/steps", pd.DataFrame())
    if steps.empty:
        return (empty("No circuit diffs yet (stage 'circuits')."), _skipped(run, "circuits"))
    verdicts = steps.pivot_table(
        index=["series", "step"], columns="metric", values="verdict", aggfunc="first", sort=False
    )
    by_metric = verdicts.reset_index().rename_axis(columns=None)
    return (
        "<p>Which components carry each behaviour metric's change (<code>rlinterp circuits</code>).</p>",
        VERDICT_NOTE,
        _per_series(run, by_metric, lambda rows: table(rows, ["step", *verdicts.columns])),
        _per_series(run, steps, verdict_table),
        _skipped(run, "circuits"),
    )


def fidelity_section(run: RunResult) -> Parts:
    steps = run.in_run_order(run.tables.get("fidelity/steps", pd.DataFrame()))
    if steps.empty:
        return (empty("No reasoning fidelity measured (stage 'fidelity')."), _skipped(run, "fidelity"))
    readings = run.tables.get("fidelity/readings", pd.DataFrame())
    onsets = run.in_run_order(run.tables.get("fidelity/onsets", pd.DataFrame()))
    controls = run.tables.get("fidelity/controls", pd.DataFrame())
    measured = run.summary()
    measured = measured[measured["series"].isin(set(steps["series"]))]
    beside = [c for c in measured.columns if c not in ("kl_mean", "activation_change", "fvu")]
    parts: list[Part] = [
        FIDELITY_NOTE,
        _per_series(run, readings, lambda rows: reading_list(rows["line"])),
    ]
    if not controls.empty:
        parts += [
            "<h3>Known answers: the faithful and the decorative control</h3>"
            "<p>The same texts, answered from the written intermediate (faithful) or from the question "
            "(decorative): a metric that reads faithfulness is high on the first and low on the second.</p>",
            interval_table(controls, ("series",)),
        ]
    parts += [
        fidelity_figure(run),
        rewards_figure(run),
        fidelity_figures.gao_figure(steps, gao_fits(onsets)),
        fidelity_figures.drift_figure(steps),
        _per_series(run, steps, lambda rows: interval_table(rows, ("step",))),
        "<h3>Reward overfitting: Goodhart onset, divergence, Gao et al. fit</h3>",
        table(onsets, ["series", *(c for c in ONSET_COLUMNS if c in onsets)]),
        "<h3>Beside the index, the lineage and the circuits of the same steps</h3>",
        _per_series(run, measured, lambda rows: table(rows, [c for c in beside if c != "series"])),
        _skipped(run, "fidelity"),
    ]
    return tuple(parts)


TRANSITION_NOTE = (
    "<p>One reading of the transition (<code>pipeline.transition</code>): per RL step each "
    "signal's value with its interval, what its control gives (<code>null</code>) and whether it "
    "<i>moved</i> towards new computation by its own test: the index's interval above 0.5; the "
    "base SAE's FVU drift above 0 (paired bootstrap over prompts); born and repurposed latents "
    "above the self control's count (Poisson); the persona-choice patch reproducing no more of "
    "the behaviour change than random subspaces; a circuits sub-component verdict "
    "<i>new</i>; the rule probe's interval above the base's. A step agrees when at least two "
    "signals moved there; the change point is where most steps start to agree (two-segment "
    "fit), its interval the range found with each signal left out in turn and its support the "
    "share of those that still find one, beside the behavioural transition.</p>"
)


def transition_section(run: RunResult) -> Parts:
    signals = run.tables.get("transition/signals", pd.DataFrame())
    if signals.empty:
        return (empty("No transition reading yet (stage 'transition')."),)
    points = run.in_run_order(run.tables.get("transition/change_points", pd.DataFrame()))
    columns = ["step", "signal", "value", "lo", "hi", "null", "moved"]
    return (
        TRANSITION_NOTE,
        table(points),
        transition_figure(run),
        _per_series(run, signals, lambda rows: table(rows, columns)),
    )


SECTIONS: tuple[RunSection, ...] = (
    RunSection("behaviour", "Behaviour", behaviour_section),
    RunSection("weights", "Weights", weights_section),
    RunSection("activations", "Activations", activations_section),
    RunSection("outputs", "Outputs", outputs_section),
    RunSection("readings", "Readings without a dictionary", readings_section),
    RunSection("dictionaries", "Dictionaries", dictionaries_section),
    RunSection("features", "Features", features_section),
    RunSection("tracking", "Tracking", tracking_section),
    RunSection("persona", "Persona features and index", persona_section),
    RunSection("circuits", "Circuits", circuits_section),
    RunSection("fidelity", "Reasoning fidelity and reward overfitting", fidelity_section),
    RunSection("transition", "Transition", transition_section),
)
"""The run report's sections, in order."""


def render_run_report(run: RunResult, sections: tuple[RunSection, ...] = SECTIONS) -> str:
    """The whole report as one self-contained HTML page: the summary, then ``sections``."""
    shown = [Section(s.title, s.render(run), s.id) for s in sections]
    title = f"rlinterp run: {', '.join(run.series) or 'no series yet'}"
    reasoning = fidelity_lines(run)
    said = (reading_list(reasoning),) if reasoning else ()
    summary = Section("Summary", (_answer(run), *said, table(run.summary())), "summary")
    return page(title, [summary, *shown], nav=True)


def _answer(run: RunResult) -> str:
    """The verdict line of every regime (``verdict.verdict_lines``), first on the page."""
    lines = verdict_lines(run.tables, run.series)
    if not lines:
        return empty("No answer yet: the selection stage (the selection-versus-novelty index) has not run.")
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return (
        "<p>Per regime: selection (RL re-weighted what the base computes) or new computation, from "
        "which step, with the index interval (a step whose interval straddles 0.5 is undecided) "
        f"and the signals that see new computation:</p><ul class='answer'>{items}</ul>"
    )


def _md_cell(value: object) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", "\\n") + "`"


def render_markdown(run: RunResult, top: int = 10) -> str:
    """The answer per regime, the headline table and the top features as Markdown."""
    summary = run.summary()
    lines = [f"# rlinterp run: {', '.join(run.series)}", "", f"Report: `{run.report_path}`", ""]
    answer = verdict_lines(run.tables, run.series)
    if answer:
        lines += ["## Answer (selection or new computation, per regime)", ""]
        lines += [f"- {_md_code(line)}" for line in answer] + [""]
    reasoning = fidelity_lines(run)
    if reasoning:
        lines += ["## Reasoning fidelity and reward overfitting, per regime", ""]
        lines += [f"- {_md_code(line)}" for line in reasoning] + [""]
    lines += ["| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in summary.itertuples(index=False)]
    latents = run.latent_table()
    if not latents.empty:
        hook = run.dictionary_info.get("hook", "")
        lines += ["", f"## Top features (base SAE at `{hook}`, largest change in mean activation)", ""]
        change_columns = [c for c in latents.columns if c.endswith("_change")]
        lines += ["| latent | " + " | ".join(change_columns) + " | promotes | top context (base) |"]
        lines += ["|" + "---|" * (len(change_columns) + 3)]
        # Rows as dicts: a series name is any folder name ("grpo-lora"), not an identifier.
        for row in latents.head(top).to_dict("records"):
            context = run.contexts[
                (run.contexts["latent"] == row["latent"]) & (run.contexts["series"] == "base")
            ]
            snippet = "".join(context.iloc[0]["tokens"]) if len(context) else ""
            changes = " | ".join(_md_cell(row[c]) for c in change_columns)
            lines.append(
                f"| {row['latent']} | {changes} | {_md_code(str(row['promotes']))} | {_md_code(snippet)} |"
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
