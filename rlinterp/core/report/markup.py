"""The markup of the report kit: escaping, value formatting, tables, token highlighting
and small inline charts.

Invariant: every string that can come from a model, a prompt file or a user (tokens,
contexts, labels, hook names) passes through ``esc`` (``html.escape`` with
``quote=True``) before it lands in markup, inside text and inside attribute values alike.
Markup built here from escaped pieces is an ``Html`` string, which ``esc`` passes through
unchanged; any other value is text. A table's cells are text unless its caller names
their column as markup (built with these functions).
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Collection, Mapping, Sequence

import pandas as pd

from .theme import PALETTE


class Html(str):
    """Markup whose text parts were escaped already (what this module returns)."""


def esc(value: object) -> Html:
    """``value`` as text safe inside HTML elements and quoted attribute values (``Html``
    passes through as it is)."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def fmt(value: object) -> str:
    """A table value as text: floats to 4 significant digits, missing values (None, NaN,
    pandas' NA) empty, a list of ``(name, value)`` pairs as ``name (0.12), ...``."""
    if isinstance(value, list | tuple):
        return ", ".join(
            f"{v[0]} ({v[1]:.2f})" if isinstance(v, list | tuple) and len(v) == 2 else str(v) for v in value
        )
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def table(
    frame: pd.DataFrame,
    columns: Sequence[str] | None = None,
    table_id: str | None = None,
    links: tuple[str, Mapping[object, str]] | None = None,
    markup: Collection[str] = (),
) -> Html:
    """``frame`` (its ``columns``, default all) as a table in its own box, which scrolls
    when the table is wider (or, searchable, longer) than the page gives it: a table never
    runs over what stands beside it. With ``table_id`` it is searchable (a filter box
    above it) and sortable (click a header; numeric cells sort as numbers).
    ``links = (column, anchors)``: that column's cells link to ``#anchor`` where
    ``anchors`` has the cell's value. The cells of the ``markup`` columns are markup built
    with this module (inserted as they are); every other cell is text, escaped. (A column
    cannot carry ``Html`` itself: pandas stores strings as plain ``str``.)"""
    columns = list(columns if columns is not None else frame.columns)
    link_column, anchors = links if links is not None else (None, {})
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for values in zip(*(frame[c].tolist() for c in columns), strict=True):
        cells = []
        for column, value in zip(columns, values, strict=True):
            text = Html(value) if column in markup else esc(fmt(value))
            if column == link_column and value in anchors:
                text = Html(f"<a href='#{esc(anchors[value])}'>{text}</a>")
            sort_key = f" data-v='{esc(value)}'" if table_id is not None and _number(value) else ""
            cells.append(f"<td{sort_key}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
    if table_id is None:
        return Html(f"<div class='table'><table>{body}</table></div>")
    return Html(
        f"<input class='search' type='search' placeholder='filter rows' data-table='{esc(table_id)}'>"
        f"<div class='table long'><table class='sortable' id='{esc(table_id)}'>{body}</table></div>"
    )


def marked(context: object, token: object) -> Html:
    """A context followed by its token, marked (the position a row is about)."""
    return Html(f"{esc(context)}<mark>{esc(token)}</mark>")


def side_by_side(blocks: Mapping[str, str]) -> Html:
    """Titled blocks (e.g. one table per series) side by side while they fit at their own
    width; a block too wide for its share of the line takes a line of its own, where its
    tables scroll if still too wide (``page.STYLE``: ``.side.fit``)."""
    inner = "".join(f"<div><h3>{esc(name)}</h3>{block}</div>" for name, block in blocks.items())
    return Html(f"<div class='side fit'>{inner}</div>")


def empty(text: str) -> Html:
    """The line a section shows instead of a table or figure it has no data for."""
    return Html(f"<p class='empty'>{esc(text)}</p>")


def highlighted(tokens: Sequence[str], values: Sequence[float], scale: float, mark: int | None) -> Html:
    """Tokens as spans shaded by their activation (relative to ``scale``); the token at
    ``mark`` is outlined. Each span's title shows its value."""
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
        alpha = 0.0 if scale <= 0 or not value > 0 else min(1.0, value / scale)
        cls = " class='peak'" if i == mark else ""
        spans.append(
            f"<span{cls} title='{esc(fmt(float(value)))}' "
            f"style='background: rgba(230, 97, 1, {alpha:.2f})'>{esc(token)}</span>"
        )
    return Html("<code class='ctx'>" + "".join(spans) + "</code>")


def sparkline(
    series: dict[str, tuple[Sequence[float | int], Sequence[float]]], width: int = 260, height: int = 70
) -> Html:
    """A small inline SVG line chart (no script needed): ``name -> (x, y)``, one colour
    per series, axes scaled over all of them."""
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)]
    if not points:
        return empty("no data")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    sx = (width - 10) / ((x1 - x0) or 1)
    sy = (height - 20) / ((y1 - y0) or 1)
    lines = []
    for (name, (xs, ys)), colour in zip(series.items(), PALETTE, strict=False):
        path = " ".join(
            f"{5 + (x - x0) * sx:.1f},{height - 15 - (y - y0) * sy:.1f}" for x, y in zip(xs, ys, strict=True)
        )
        lines.append(
            f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{path}'>"
            f"<title>{esc(name)}</title></polyline>"
        )
    legend = " ".join(
        f"<span style='color:{colour}'>&#9632; {esc(name)}</span>"
        for name, colour in zip(series, PALETTE, strict=False)
    )
    return Html(
        f"<svg class='spark' width='{width}' height='{height}' role='img'>{''.join(lines)}"
        f"<text x='5' y='{height - 2}' font-size='9'>step {esc(fmt(x0))}</text>"
        f"<text x='{width - 5}' y='{height - 2}' font-size='9' text-anchor='end'>{esc(fmt(x1))}</text>"
        f"<text x='5' y='10' font-size='9'>max {esc(fmt(y1))}</text></svg><div class='legend'>{legend}</div>"
    )
