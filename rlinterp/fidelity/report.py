"""Report sections of a fidelity analysis, and ``rlinterp fidelity``'s report.

Built from the result's tables and summary only (no model). What the fidelity report and
the run report's fidelity section both show comes from here: ``NOTE`` (how to read the
metrics), ``interval_table`` (per step, each metric as ``value [lo, hi]``), the reading lines
and the reward readings (Goodhart onset, divergence, Gao fit). The page is the report kit's
(``core.report``); answers and skip reasons are escaped like any text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.artifacts import atomic_write
from ..core.report import Html, Part, Section, empty, esc, fmt, page, table
from .result import FidelityResult

STEP_COLUMNS = (
    "early_aoc",
    "mistake_follows",
    "mistake_changes",
    "filler_gap",
    "reasoning_share",
    "consistency",
    "legibility_template",
    "proxy",
    "gold",
    "gap",
    "kl",
    "new_rate",
    "new_undesired_rate",
)
"""The per-step metrics the tables show first (those a result has), then every
``<behaviour>_rate`` and ``persona_shift_<persona>``."""
NOTE = Html(
    "<p>Per RL step, on each checkpoint's own samples, with a bootstrap interval over prompts "
    "(<code>value [lo, hi]</code>). Reasoning fidelity: <i>early_aoc</i> (early answering, Lanham "
    "et al. 2023: 1 when every cut of the reasoning changes the answer, 0 when the answer is fixed "
    "before it), <i>mistake_follows</i> / <i>mistake_changes</i> (the stated intermediate edited: "
    "the answer follows the edit / changes), <i>filler_gap</i> (accuracy with the reasoning minus "
    "with it replaced by filler), <i>reasoning_share</i> (share of the answer logit difference "
    "restored by patching the reasoning positions alone), <i>consistency</i> (the answer equals "
    "the last stated intermediate), <i>legibility_template</i> (spans a persona's template "
    "matches). Reward overfitting: <i>proxy</i> (what RL optimised), <i>gold</i> (correct and "
    "following the reasoning) and their <i>gap</i>. Drift: <i>kl</i> (KL(&pi;<sub>t</sub>&Vert;"
    "&pi;<sub>0</sub>) per sample), <i>new_rate</i> (samples the base writes at most "
    "<code>new_quantile</code> of the time), <i>new_undesired_rate</i> (those the gold reward does "
    "not pay), the undesired behaviours the base has, and the persona shift.</p>"
)
"""How to read the fidelity tables, above them in every report."""
ONSET_COLUMNS = (
    "goodhart_step",
    "goodhart_step_lo",
    "goodhart_step_hi",
    "gold_peak_step",
    "goodhart_support",
    "divergence_step",
    "divergence_growth",
    "gao_gold_alpha",
    "gao_gold_beta",
    "gao_gold_d_peak",
)
"""The reward readings a table shows (``FidelityResult.onsets``)."""


def shown_columns(steps: pd.DataFrame) -> list[str]:
    """The metric columns of ``steps`` in the order the tables show them."""
    extra = [
        c
        for c in steps.columns
        if (c.endswith("_rate") or c.startswith("persona_shift_"))
        and c not in STEP_COLUMNS
        and f"{c}_lo" in steps
    ]
    return [c for c in (*STEP_COLUMNS, *extra) if c in steps]


def interval_table(steps: pd.DataFrame, keys: Sequence[str] = ("label", "step")) -> Html:
    """One row per step: ``keys``, then every metric as ``value [lo, hi]`` (empty where the
    step has none), and ``no_answer`` (samples whose final answer was not found)."""
    metrics = shown_columns(steps)
    frame = steps[[k for k in keys if k in steps]].copy()
    for column in metrics:
        frame[column] = [
            _with_interval(v, lo, hi)
            for v, lo, hi in zip(steps[column], steps[f"{column}_lo"], steps[f"{column}_hi"], strict=True)
        ]
    if "no_answer" in steps:
        frame["no_answer"] = steps["no_answer"].to_numpy()
    return table(frame)


def _with_interval(value: object, lo: object, hi: object) -> str:
    shown = fmt(value)
    return f"{shown} [{fmt(lo)}, {fmt(hi)}]" if shown and fmt(lo) else shown


def reading_list(lines: Iterable[str]) -> Html:
    """The plain-language reading (``FidelityResult.reading``) as a list."""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return Html(f"<ul class='answer'>{items}</ul>") if items else empty("No reading: one step only.")


def left_out_table(left_out: dict[str, int]) -> Html:
    """Samples a metric could not read, by reason (counted, never crashed on)."""
    if not left_out:
        return empty("Every sample was readable by every metric it entered.")
    frame = pd.DataFrame({"reason": list(left_out), "samples": list(left_out.values())})
    return table(frame)


def fidelity_parts(result: FidelityResult) -> tuple[Part, ...]:
    """A fidelity result's parts: the reading, the per-step table with intervals, the
    reward readings, legibility counts, what was left out, then the figures."""
    legibility = result.legibility
    counts = (
        legibility.pivot_table(index="step", columns="legibility", values="count", aggfunc="sum")
        .reset_index()
        .rename_axis(columns=None)
        if not legibility.empty
        else legibility
    )
    onsets = pd.DataFrame([result.onsets()])
    return (
        reading_list(result.reading()),
        NOTE,
        interval_table(result.steps),
        Html("<h3>Reward overfitting: Goodhart onset, divergence, Gao et al. fit</h3>"),
        table(onsets, [c for c in ONSET_COLUMNS if c in onsets]),
        Html("<h3>Legibility of the reasoning (samples per class)</h3>"),
        table(counts) if not counts.empty else empty("No reasoning read (see the skipped metrics)."),
        Html("<h3>Samples left out, by reason</h3>"),
        left_out_table(result.summary.get("left_out", {})),
        *(figure for figure in result.figures().values() if len(figure.data)),
    )


def fidelity_sections(result: FidelityResult, title: str = "Reasoning fidelity") -> tuple[Section, ...]:
    return (Section(title, fidelity_parts(result), "fidelity"),)


def render_fidelity_report(result: FidelityResult, title: str | None = None) -> str:
    """The fidelity report as one self-contained HTML page."""
    steps = len(result.steps) - 1
    return page(title or f"rlinterp fidelity: {steps} checkpoints after the base", fidelity_sections(result))


def write_fidelity_report(result: FidelityResult, path: str | Path, title: str | None = None) -> None:
    """Write ``render_fidelity_report(result)`` to ``path`` (atomically)."""
    text = render_fidelity_report(result, title)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def onset_marks(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per series of a table of ``onsets`` rows: what ``figures.rewards_figure`` marks."""
    return {
        str(row["series"]): {"found": bool(pd.notna(row["goodhart_step"])), "step": row["goodhart_step"]}
        for _, row in rows.iterrows()
    }


def gao_fits(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per series of a table of ``onsets`` rows: the fits ``figures.gao_figure`` draws."""
    return {
        str(row["series"]): {
            name: {"alpha": row.get(f"gao_{name}_alpha"), "beta": row.get(f"gao_{name}_beta")}
            for name in ("gold", "proxy")
        }
        for _, row in rows.iterrows()
    }
