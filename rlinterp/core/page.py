"""HTML building blocks of the run report and the feature cards.

Invariant: every string that can come from a model, a prompt file or a user (tokens,
contexts, labels, hook names) passes through ``esc`` (``html.escape`` with
``quote=True``) before it lands in markup, inside text and inside attribute values
alike. The page needs no network: plotly.js is inlined once by the report, and the small
script for the latent table (search and sort) is written here, in plain JavaScript.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go


def esc(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attribute values."""
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def table(frame: pd.DataFrame, columns: Sequence[str] | None = None, table_id: str | None = None) -> str:
    """A plain table; with ``table_id``, searchable and sortable (see ``SCRIPT``)."""
    columns = list(columns if columns is not None else frame.columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(fmt(row[c]))}</td>" for c in columns) + "</tr>"
        for _, row in frame.iterrows()
    )
    return _wrap(head, body, table_id)


def _wrap(head: str, body: str, table_id: str | None) -> str:
    if table_id is None:
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return (
        f"<input class='search' type='search' placeholder='filter rows' data-table='{esc(table_id)}'>"
        f"<div class='scroll'><table class='sortable' id='{esc(table_id)}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def linked_table(
    frame: pd.DataFrame, columns: Sequence[str], link_column: str, anchors: dict[object, str], table_id: str
) -> str:
    """A searchable, sortable table whose ``link_column`` cells link to ``#anchor`` where
    ``anchors`` has the cell's value. Numeric cells sort as numbers (``data-v``)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            text = esc(fmt(value))
            if c == link_column and value in anchors:
                text = f"<a href='#{esc(anchors[value])}'>{text}</a>"
            sort_key = f" data-v='{esc(value)}'" if isinstance(value, int | float) else ""
            cells.append(f"<td{sort_key}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _wrap(head, "".join(rows), table_id)


def highlighted(tokens: Sequence[str], values: Sequence[float], scale: float, mark: int | None) -> str:
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
    return "<code class='ctx'>" + "".join(spans) + "</code>"


def sparkline(
    series: dict[str, tuple[Sequence[float | int], Sequence[float]]], width: int = 260, height: int = 70
) -> str:
    """A small inline SVG line chart (no script needed): ``name -> (x, y)``, one colour
    per series, axes scaled over all of them."""
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)]
    if not points:
        return "<p class='empty'>no data</p>"
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
    return (
        f"<svg class='spark' width='{width}' height='{height}' role='img'>{''.join(lines)}"
        f"<text x='5' y='{height - 2}' font-size='9'>step {esc(fmt(x0))}</text>"
        f"<text x='{width - 5}' y='{height - 2}' font-size='9' text-anchor='end'>{esc(fmt(x1))}</text>"
        f"<text x='5' y='10' font-size='9'>max {esc(fmt(y1))}</text></svg><div class='legend'>{legend}</div>"
    )


PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
"""Okabe-Ito: distinguishable with the common colour-vision deficiencies."""


def figure_div(figure: go.Figure, include_plotlyjs: bool) -> str:
    """A figure as a ``div`` (class ``figure``); plotly.js inlined when asked (once a page)."""
    body = figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config={"displaylogo": False})
    return f"<div class='figure'>{body}</div>"


def empty(text: str) -> str:
    return f"<p class='empty'>{esc(text)}</p>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; font-family: monospace;
         white-space: pre-wrap; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; }
.side { display: flex; flex-wrap: wrap; gap: 1em; }
.side > div { flex: 1 1 0; min-width: 320px; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
code.ctx { display: block; white-space: pre-wrap; margin: 0.2em 0; font-size: 0.85em; }
code.ctx span.peak { outline: 2px solid #0072B2; }
.empty { color: #777; font-style: italic; }
.legend { font-size: 0.8em; }
input.search { margin-top: 0.5em; width: 20em; }
div.scroll { max-height: 32em; overflow: auto; }
"""

SCRIPT = """
document.querySelectorAll('input.search').forEach(function (box) {
  box.addEventListener('input', function () {
    var needle = box.value.toLowerCase();
    var rows = document.getElementById(box.dataset.table).tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      rows[i].style.display = rows[i].textContent.toLowerCase().indexOf(needle) >= 0 ? '' : 'none';
    }
  });
});
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var index = th.cellIndex;
    var up = th.dataset.dir !== 'up';
    th.dataset.dir = up ? 'up' : 'down';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index], y = b.cells[index];
      var p = x.dataset.v !== undefined ? parseFloat(x.dataset.v) : x.textContent;
      var q = y.dataset.v !== undefined ? parseFloat(y.dataset.v) : y.textContent;
      var order = p < q ? -1 : p > q ? 1 : 0;
      return up ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}"
        f"<script>{SCRIPT}</script></body></html>"
    )
