"""The figures of a fidelity analysis, one function each, from its tables alone.

Each function takes the tables of ``FidelityResult`` (``steps`` and ``early_curve`` with an
optional ``series`` column: several series sit side by side) and returns a
``plotly.graph_objects.Figure``; intervals are drawn as error bars from the ``_lo``/``_hi``
columns. Nothing is rendered here and no input is mutated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..core.report import PALETTE, side_by_side_figure
from .stats import curve

FIDELITY_LINES = (
    ("early_aoc", "early answering (area over curve)"),
    ("mistake_follows", "mistake insertion: follows the edit"),
    ("reasoning_share", "reasoning-mediated share"),
    ("consistency", "answer = stated intermediate"),
    ("filler_gap", "filler gap (accuracy)"),
)


def _series(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["series"])) if "series" in table else [""]


def _rows(table: pd.DataFrame, series: str) -> pd.DataFrame:
    rows = table[table["series"] == series] if "series" in table else table
    return rows.sort_values("step")


def _line(
    rows: pd.DataFrame, column: str, name: str, colour: str, first: bool, x: str = "step"
) -> go.Scatter:
    error: dict[str, Any] | None = None
    if f"{column}_lo" in rows and f"{column}_hi" in rows:
        error = {
            "type": "data",
            "symmetric": False,
            "array": (rows[f"{column}_hi"] - rows[column]).to_numpy(),
            "arrayminus": (rows[column] - rows[f"{column}_lo"]).to_numpy(),
            "thickness": 1,
        }
    return go.Scatter(
        x=rows[x],
        y=rows[column],
        name=name,
        legendgroup=name,
        showlegend=first,
        mode="lines+markers",
        line={"color": colour},
        error_y=error,
    )


def _lines(steps: pd.DataFrame, lines: Sequence[tuple[str, str]], title: str, y_title: str) -> go.Figure:
    names = _series(steps)
    figure = side_by_side_figure(names)
    for col, series in enumerate(names, 1):
        rows = _rows(steps, series)
        for i, (column, label) in enumerate(lines):
            if column in rows and rows[column].notna().any():
                figure.add_trace(
                    _line(rows, column, label, PALETTE[i % len(PALETTE)], col == 1), row=1, col=col
                )
    figure.update_xaxes(title_text="RL step")
    figure.update_yaxes(title_text=y_title, row=1, col=1)
    figure.update_layout(title=title, legend={"orientation": "h", "y": -0.25})
    return figure


def fidelity_figure(steps: pd.DataFrame) -> go.Figure:
    """The reasoning-fidelity metrics by RL step, with their intervals."""
    return _lines(steps, FIDELITY_LINES, "Reasoning fidelity by RL step", "share")


def rewards_figure(steps: pd.DataFrame, onsets: Mapping[str, dict[str, Any]] | None = None) -> go.Figure:
    """Proxy and gold reward by step; a dashed line marks each series' Goodhart onset."""
    lines = (("proxy", "proxy reward (optimised)"), ("gold", "gold reward"), ("gap", "proxy - gold"))
    figure = _lines(steps, lines, "Proxy and gold reward by RL step", "mean reward")
    for col, series in enumerate(_series(steps), 1):
        onset = (onsets or {}).get(series) or {}
        if onset.get("found"):
            figure.add_vline(x=onset["step"], line_dash="dash", line_color="grey", row=1, col=col)
    return figure


def drift_figure(steps: pd.DataFrame) -> go.Figure:
    """Rates of undesired behaviours that exist in the base, of new samples, and legibility."""
    rates = [c for c in steps.columns if c.endswith("_rate") and not c.endswith(("_lo", "_hi", "_n"))]
    lines = [(c, c.removesuffix("_rate").replace("_", " ")) for c in rates]
    lines += [
        ("legibility_drift", "reasoning drifts from every template"),
        ("legibility_unreadable", "unreadable"),
    ]
    return _lines(
        steps, lines, "Alignment drift: undesired and new behaviours by RL step", "share of samples"
    )


def persona_shift_figure(steps: pd.DataFrame) -> go.Figure:
    """The mean activation change on the checkpoint's own answers, projected on each persona
    direction, by step."""
    shifts = [
        c for c in steps.columns if c.startswith("persona_shift_") and not c.endswith(("_lo", "_hi", "_n"))
    ]
    lines = [(c, c.removeprefix("persona_shift_")) for c in shifts]
    return _lines(steps, lines, "Persona shift of the activations by RL step", "projection")


def gao_figure(steps: pd.DataFrame, fits: Mapping[str, dict[str, Any]] | None = None) -> go.Figure:
    """Change of gold and proxy reward from the first step against sqrt(KL(pi_t || pi_0)),
    with the fitted curves ``d (alpha - beta log d)`` (Gao et al. 2022)."""
    names = _series(steps)
    figure = side_by_side_figure(names)
    for col, series in enumerate(names, 1):
        rows = _rows(steps, series)
        if "sqrt_kl" not in rows:
            continue
        d = rows["sqrt_kl"].to_numpy(dtype=float)
        grid = np.linspace(0, max(float(np.nanmax(d)), 1e-6), 50)
        for i, name in enumerate(("gold", "proxy")):
            if name not in rows:
                continue
            colour = PALETTE[i % len(PALETTE)]
            change = rows[name] - rows[name].iloc[0]
            figure.add_trace(
                go.Scatter(
                    x=d,
                    y=change,
                    mode="markers",
                    name=f"{name} (measured)",
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"color": colour},
                    text=rows["step"],
                ),
                row=1,
                col=col,
            )
            fit = ((fits or {}).get(series) or {}).get(name)
            if fit and fit.get("alpha") is not None and np.isfinite(fit["alpha"]):
                figure.add_trace(
                    go.Scatter(
                        x=grid,
                        y=curve(grid, fit["alpha"], fit["beta"]),
                        mode="lines",
                        name=f"{name} (fit)",
                        legendgroup=name,
                        showlegend=col == 1,
                        line={"color": colour, "dash": "dot"},
                    ),
                    row=1,
                    col=col,
                )
    figure.update_xaxes(title_text="sqrt KL(pi_t || pi_0)")
    figure.update_yaxes(title_text="reward change from step 0", row=1, col=1)
    figure.update_layout(
        title="Reward against distance from the base (Gao et al. 2022)",
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def early_curve_figure(curve_table: pd.DataFrame, series: str | None = None) -> go.Figure:
    """P(same answer) against the fraction of reasoning kept, one panel per reasoning length,
    one line per step (early answering, Lanham et al. 2023)."""
    table = (
        curve_table
        if series is None or "series" not in curve_table
        else curve_table[curve_table["series"] == series]
    )
    if table.empty:
        return go.Figure(layout={"title": "Early answering: no reasoning to cut"})
    lengths = sorted(table["n_steps"].unique())
    figure = side_by_side_figure([f"{n} step{'s' if n > 1 else ''}" for n in lengths])
    steps = sorted(table["step"].unique())
    for col, n in enumerate(lengths, 1):
        for i, step in enumerate(steps):
            rows = table[(table["n_steps"] == n) & (table["step"] == step)].sort_values("k")
            if rows.empty:
                continue
            full = pd.DataFrame(
                {"frac": [1.0], "p_same": [1.0], "p_same_lo": [1.0], "p_same_hi": [1.0], "step": [step]}
            )
            rows = pd.concat([rows, full], ignore_index=True)
            colour = PALETTE[i % len(PALETTE)]
            figure.add_trace(
                _line(rows, "p_same", f"step {step}", colour, col == 1, x="frac"), row=1, col=col
            )
    figure.update_xaxes(title_text="fraction of reasoning kept (k / n)")
    figure.update_yaxes(title_text="P(same answer)", range=[0, 1.05], row=1, col=1)
    figure.update_layout(title="Early answering: answer agreement after cutting the reasoning")
    return figure
