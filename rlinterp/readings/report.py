"""Report sections of the readings without a dictionary, and ``rlinterp readings``' report.

``readings_parts(tables, layout)`` is what the readings report and the run report both show:
per reading, a note on how to read it, its figure (``readings.figures``: one panel per
series) and its table, laid out by ``layout`` (the run report puts one block per series side
by side; the command's own report shows its one series). The page is the report kit's.
Model text (tokens, continuations, example contexts) is data: the kit's tables escape it,
and tokens are shown with ``repr`` so that spaces and newlines show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pandas as pd

from ..core.artifacts import atomic_write
from ..core.report import Html, Part, Section, empty, page, table
from .figures import amplified_figure, patchscope_figure, pca_figure, topics_figure

if TYPE_CHECKING:
    from .analysis import ReadingsResult

SHOWN = ("amplified", "pca", "patchscope", "topics")
"""The tables of a readings directory the reports show (``readings.analysis.TABLES``)."""
AMPLIFIED_COLUMNS = (
    "label",
    "alpha",
    "reward",
    "accuracy",
    "share_none",
    "base_logprob_mean",
    "answer_tokens",
)
"""Columns of the amplified table (those it has: the behaviour columns only on the organism)."""
PCA_COLUMNS = ("hook", "component", "explained", "cumulative", "cos_mean_diff")
PATCHSCOPE_COLUMNS = ("hook", "direction", "top_tokens", "continuation", "lens")
TOPICS_COLUMNS = ("topic", "share", "top_promoted", "top_context", "examples")

AMPLIFIED_NOTE = Html(
    "<p>Each RL checkpoint's change from the base multiplied by alpha (0 is the base, 1 the "
    "checkpoint) and sampled with the same random numbers; the answers' log-prob per token under "
    "the base says how far from the base's writing they went.</p>"
)
PCA_NOTE = Html(
    "<p>Per hook, the share of the per-token differences' variance along each component at the "
    "last step, and its cosine with the mean difference.</p>"
)
PATCHSCOPE_NOTE = Html(
    "<p>Patchscope: each direction, scaled to a typical activation, replaces the residual at the "
    "last token of an identity prompt in the base; top next tokens, greedy continuation, and the "
    "lens (the direction through W_U) beside them (smallest scale shown).</p>"
)
TOPICS_NOTE = Html(
    "<p>The positions whose next-token distribution moved most (KL), grouped by a non-negative "
    "factorisation of their context and promoted tokens.</p>"
)

Layout: TypeAlias = Callable[[pd.DataFrame, Callable[[pd.DataFrame], Html]], str]
"""How a table is laid out: ``layout(frame, render)`` (e.g. ``render`` per series, side by side)."""


def last_step(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the last step (of each series, when the table has a ``series`` column)."""
    if "series" not in frame:
        return frame[frame["step"] == frame["step"].max()]
    return frame[frame["step"] == frame.groupby("series", sort=False)["step"].transform("max")]


def _tokens(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """List-valued ``columns`` as one line of text, each item with ``repr``."""
    return frame.assign(
        **{c: frame[c].map(lambda items: " ".join(repr(str(i)) for i in items)) for c in columns}
    )


def amplified_table(rows: pd.DataFrame) -> Html:
    """Every amplified model (checkpoint and alpha) of one series."""
    return table(rows, [c for c in AMPLIFIED_COLUMNS if c in rows])


def pca_table(rows: pd.DataFrame) -> Html:
    """The components of every hook at the last step."""
    return table(last_step(rows), list(PCA_COLUMNS))


def patchscope_table(rows: pd.DataFrame) -> Html:
    """Every direction's reading at the smallest scale and the last step."""
    shown = last_step(rows[rows["scale"] == rows["scale"].min()])
    return table(_tokens(shown, ("top_tokens", "lens")), list(PATCHSCOPE_COLUMNS))


def topics_table(rows: pd.DataFrame) -> Html:
    """The topics of the last step with their top tokens and example contexts."""
    return table(_tokens(last_step(rows), ("top_promoted", "top_context", "examples")), list(TOPICS_COLUMNS))


def whole(frame: pd.DataFrame, render: Callable[[pd.DataFrame], Html]) -> str:
    """The default ``Layout``: one table of every row."""
    return render(frame)


def readings_parts(tables: Mapping[str, pd.DataFrame], layout: Layout = whole) -> dict[str, tuple[Part, ...]]:
    """Per reading (its title), the note, figure and table of ``tables`` (``SHOWN`` name ->
    table, a missing one empty), or an empty-state line."""
    found = {name: tables.get(name, pd.DataFrame()) for name in SHOWN}
    amplified, pca, patchscope, topics = (found[name] for name in SHOWN)
    parts: dict[str, tuple[Part, ...]] = {}
    parts["Amplified sampling"] = (
        (AMPLIFIED_NOTE, amplified_figure(amplified), layout(amplified, amplified_table))
        if not amplified.empty
        else (empty("No amplified sampling."),)
    )
    pca_parts: tuple[Part, ...] = (empty("No principal components of the differences."),)
    if not pca.empty:
        pca_parts = (PCA_NOTE, pca_figure(pca), layout(pca, pca_table))
        if not patchscope.empty:
            pca_parts += (
                PATCHSCOPE_NOTE,
                patchscope_figure(patchscope),
                layout(patchscope, patchscope_table),
            )
    parts["Principal components of the activation differences"] = pca_parts
    parts["Topics of the changed tokens"] = (
        (TOPICS_NOTE, topics_figure(topics), layout(topics, topics_table))
        if not topics.empty
        else (empty("No topics of the changed tokens."),)
    )
    return parts


def readings_sections(result: ReadingsResult) -> tuple[Section, ...]:
    """The sections of a readings report: one per reading."""
    return tuple(Section(title, parts) for title, parts in readings_parts(result.tables).items())


def write_readings_report(result: ReadingsResult, path: str | Path, title: str | None = None) -> None:
    """Write the report of ``result`` to ``path`` (atomically); the default title counts the
    RL checkpoints read."""
    if title is None:
        read = {label for frame in result.tables.values() if "label" in frame for label in frame["label"]}
        title = f"rlinterp readings: {len(read)} checkpoints vs base"
    text = page(title, readings_sections(result))
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
