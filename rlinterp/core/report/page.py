"""The page shell of the report kit: every report rlinterp writes (``rlinterp diff``,
``track``, ``circuits``, the run report) and every feature card is one ``page`` of
``Section``s.

A section is a title and its parts, in order: markup (``markup.Html``, built with the
kit's functions) and plotly figures, each placed where its entry is. The page is
self-contained and opens offline: one stylesheet (``STYLE``), plotly.js inlined exactly
once (in the page's first figure; no CDN), and one small plain-JavaScript script that
makes the searchable tables filter and sort (``SCRIPT``). Figures get ids from their
position in the page, so the same content gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import plotly.graph_objects as go

from .markup import Html, esc

Part: TypeAlias = str | go.Figure
"""What a section shows: markup (``Html``, or a ``str`` built from escaped pieces) or a
figure."""


@dataclass(frozen=True)
class Section:
    """One section of a page."""

    title: str
    """Its heading (text, escaped; ``Html`` for a heading with markup)."""
    parts: tuple[Part, ...]
    """Markup and figures, in order."""
    id: str | None = None
    """Anchor and navigation entry; None: the heading has neither."""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; font-family: monospace;
         white-space: pre-wrap; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; }
mark { background: #ffd54f; }
.side { display: flex; flex-wrap: wrap; gap: 1em; }
.side > div { flex: 1 1 0; min-width: min(320px, 100%); }
.side.fit > div { flex: 1 1 auto; min-width: 0; max-width: 100%; }
div.table { max-width: 100%; overflow-x: auto; }
div.table.long { max-height: 32em; overflow-y: auto; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
code.ctx { display: block; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0.2em 0;
           font-size: 0.85em; }
code.ctx span.peak { outline: 2px solid #0072B2; }
.empty { color: #777; font-style: italic; }
ul.answer li { font-weight: 600; margin: 0.3em 0; }
.legend { font-size: 0.8em; }
input.search { margin-top: 0.5em; width: 20em; }
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


def figure_div(figure: go.Figure, include_plotlyjs: bool, div_id: str) -> Html:
    """A figure as a ``div`` (class ``figure``); plotly.js inlined when asked (once a page)."""
    body = figure.to_html(
        full_html=False, include_plotlyjs=include_plotlyjs, div_id=div_id, config={"displaylogo": False}
    )
    return Html(f"<div class='figure'>{body}</div>")


def page(title: str, sections: Sequence[Section], nav: bool = False) -> str:
    """The whole page: its title, a navigation line when ``nav`` (to every section with an
    id), then every section; plotly.js is inlined in the first figure only."""
    body = []
    if nav:
        links = "".join(f"<a href='#{esc(s.id)}'>{esc(s.title)}</a>" for s in sections if s.id)
        body.append(f"<nav>{links}</nav>")
    figures = 0
    for section in sections:
        anchor = f" id='{esc(section.id)}'" if section.id else ""
        body.append(f"<h2{anchor}>{esc(section.title)}</h2>")
        for part in section.parts:
            if isinstance(part, go.Figure):
                body.append(figure_div(part, include_plotlyjs=figures == 0, div_id=f"figure-{figures}"))
                figures += 1
            else:
                body.append(part)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{''.join(body)}"
        f"<script>{SCRIPT}</script></body></html>"
    )


def fragment(parts: Sequence[str]) -> str:
    """Markup to show outside a page (a notebook's ``_repr_html_``): the stylesheet, then
    ``parts``."""
    return f"<style>{STYLE}</style>{''.join(parts)}"
