"""The answer of a run, one line per regime: selection or new computation, from which step,
in which block, with the interval and the signals that say so.

The line is read from the selection-versus-novelty index per step (``selection/index``),
which reads every block (``selection.index``): a step reads ``novelty`` when some block's
whole interval lies above ``selection.index.SELECTION_SIDE`` (0.5), ``selection`` when every
block's lies below, and ``undecided`` otherwise (its ``side``; index tables written before
the index read every block are read from the step's interval, ``selection.report.step_side``).
A regime is

- ``new computation from step S``: S is the first step that reads novelty and every later
  step reads novelty too; ``new computation at step S, ..., not sustained`` when a later
  step (the last one's reading is shown) reads otherwise;
- ``selection at every step``: every RL step reads selection;
- ``selection, undecided at ...`` / ``undecided at every step``: no step reads novelty and
  some (or every) step straddles 0.5.

Every step a line names comes with its block (the most novel one) and interval.

Each line then names the signals (``SIGNALS``) that see new computation, with the step
each sees it from (the index's change point with its interval and block), and those that
are silent. A signal reads one run table for one series and returns where it says new
computation starts (an ``Onset``), or None where it says selection; a new signal (a
tracking or circuits count) is one more row of ``SIGNALS``. The HTML report, ``report.md``
and the CLI summary all show these lines (``verdict_lines``); ``rlinterp selection`` prints
its series' verdict (``regime_verdict``).

Where the transition stage has run, each line ends with the combined reading
(``pipeline.transition``): the change point over every signal with its interval and
support, the signals that moved (each from its first moved step) and the silent ones, beside
the behavioural transition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

from ..core.report import fmt
from ..selection.report import step_side


class Onset(NamedTuple):
    """Where a signal says new computation starts."""

    step: int
    detail: str
    """What backs it, e.g. its interval (empty when nothing more is known)."""


@dataclass(frozen=True)
class Signal:
    """One piece of evidence for new computation."""

    name: str
    """How the verdict lines name it."""
    table: str
    """The run table it reads (a ``RunResult.tables`` key), restricted to one series."""
    onset: Callable[[pd.DataFrame], Onset | None]
    """Where it says new computation starts, from that series' rows (None: selection)."""


def _steps(index: pd.DataFrame) -> pd.DataFrame:
    """The RL steps of one series' index rows (the base, step 0, is the reference)."""
    return index[index["step"] > index["step"].min()].sort_values("step")


def _interval(row: pd.Series) -> str:
    lo, hi = fmt(float(row["index_lo"])), fmt(float(row["index_hi"]))
    block = f"block {int(row['layer'])}, " if _known(row.get("layer")) else ""
    return f"{block}index {fmt(float(row['index']))}, interval {lo}-{hi}"


def _known(value: object) -> bool:
    return value is not None and not pd.isna(value)


def index_onset(index: pd.DataFrame) -> Onset | None:
    """The first step that reads novelty (the verdict states its block and interval)."""
    for _, row in _steps(index).iterrows():
        if step_side(row) == "novelty":
            return Onset(int(row["step"]), "")
    return None


def change_point_onset(transition: pd.DataFrame) -> Onset | None:
    """The index's change point from the selection side to the novelty side, if found, with
    its interval and the block it names."""
    if transition.empty or not bool(transition["index_found"].iloc[0]):
        return None
    row = transition.iloc[0]
    block = f", block {int(row['index_layer'])}" if _known(row.get("index_layer")) else ""
    interval = f"interval {int(row['index_step_lo'])}-{int(row['index_step_hi'])}"
    return Onset(int(row["index_step"]), interval + block)


def behaviour_onset(transition: pd.DataFrame) -> Onset | None:
    """The first step where most sampled answers match no persona (organism series)."""
    step = (
        transition["behavioural_step"].iloc[0]
        if "behavioural_step" in transition and len(transition)
        else None
    )
    return None if step is None or pd.isna(step) else Onset(int(step), "")


SIGNALS: tuple[Signal, ...] = (
    Signal("index", "selection/index", index_onset),
    Signal("index change point", "selection/transition", change_point_onset),
    Signal("behaviour", "selection/transition", behaviour_onset),
)
"""The evidence each verdict line names, in order. The index decides the verdict (see the
module docstring); every signal is shown beside it, agreeing or not."""


def regime_verdict(index: pd.DataFrame) -> str:
    """The verdict of one series from its index rows (see the module docstring)."""
    steps = _steps(index)
    if steps.empty:
        return "no RL step"
    readings = [step_side(row) for _, row in steps.iterrows()]
    named = {
        kind: [
            f"step {int(row['step'])} ({_interval(row)})"
            for (_, row), r in zip(steps.iterrows(), readings, strict=True)
            if r == kind
        ]
        for kind in ("novelty", "undecided")
    }
    last = steps.iloc[-1]
    last_step = f"last step {int(last['step'])}"
    undecided = f", undecided at {', '.join(named['undecided'])}" if named["undecided"] else ""
    if named["novelty"]:
        first = readings.index("novelty")
        if all(r == "novelty" for r in readings[first:]):
            return f"new computation from {named['novelty'][0]}{undecided}"
        later = f"{last_step} reads {readings[-1]} ({_interval(last)})"
        return f"new computation at {', '.join(named['novelty'])}, not sustained: {later}{undecided}"
    if len(named["undecided"]) == len(readings):
        return f"undecided at every step: {', '.join(named['undecided'])}"
    head = "selection at every step" if not undecided else "selection"
    return f"{head} ({last_step}: {_interval(last)}){undecided}"


def verdict_lines(
    tables: Mapping[str, pd.DataFrame], series: Sequence[str], signals: Sequence[Signal] = SIGNALS
) -> list[str]:
    """One line per regime of ``series`` (in that order) from a run's ``tables``
    (``RunResult.tables``), once the selection stage has run: its verdict, the ``signals``
    that see new computation (with their step) and those that are silent."""
    index = tables.get("selection/index", pd.DataFrame())
    if index.empty:
        return []
    lines = []
    for name in [s for s in series if s in set(index["series"])]:
        seen, silent = [], []
        for signal in signals:
            table = tables.get(signal.table, pd.DataFrame())
            rows = table[table["series"] == name] if "series" in table else table.iloc[0:0]
            onset = signal.onset(rows) if len(rows) else None
            if onset is None:
                silent.append(signal.name)
            else:
                detail = f", {onset.detail}" if onset.detail else ""
                seen.append(f"{signal.name} (step {onset.step}{detail})")
        line = f"{name}: {regime_verdict(index[index['series'] == name])}"
        line += f"; signals of new computation: {', '.join(seen) or 'none'}"
        line += f"; silent: {', '.join(silent)}" if silent else ""
        points = tables.get("transition/change_points", pd.DataFrame())
        own = points[points["series"] == name] if "series" in points else points.iloc[0:0]
        lines.append(line + (f"; {transition_clause(own.iloc[0])}" if len(own) else ""))
    return lines


def transition_clause(point: pd.Series) -> str:
    """The combined reading of one series (a ``transition/change_points`` row) in words."""
    behaviour = point.get("behavioural_step")
    behaviour_text = "none" if behaviour is None or pd.isna(behaviour) else f"step {int(behaviour)}"
    moved = point["moved"] or "none"
    silent = f", silent {point['silent']}" if point["silent"] else ""
    evidence = (
        f"{int(point['n_signals'])} signals, moved {moved}{silent}; behavioural transition {behaviour_text}"
    )
    if not bool(point["found"]):
        return f"combined transition: none ({evidence})"
    lo, hi, support = int(point["step_lo"]), int(point["step_hi"]), fmt(float(point["support"]))
    where = f"step {int(point['step'])} (interval {lo}-{hi}, support {support}"
    return f"combined transition at {where}; {evidence})"
