"""Opening a page in headless Chromium (Debian's ``chromium``, installed by ``make setup``):
the DOM after its scripts ran, every console message it logged, what a reader would see
wrong in its layout (``layout_problems``), and a screenshot."""

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)$")


class Rendered(NamedTuple):
    dom: str
    """The document after its scripts ran (``--dump-dom``)."""
    console: list[str]
    """Every console message (logs, errors, uncaught exceptions), in order."""


def chromium() -> str | None:
    return shutil.which("chromium")


def _chromium(
    target: str, *options: str, budget_ms: int, width: int, height: int
) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                chromium() or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                f"--window-size={width},{height}",
                f"--virtual-time-budget={budget_ms}",
                *options,
                target,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )


def render(page: Path, budget_ms: int = 20_000, width: int = 1280) -> Rendered:
    """Load ``page`` offline in headless Chromium (a window ``width`` pixels wide), let its
    scripts run for up to ``budget_ms`` of virtual time, and return the DOM and the console
    messages."""
    done = _chromium(page.resolve().as_uri(), "--dump-dom", budget_ms=budget_ms, width=width, height=1000)
    console = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE.search(line))]
    return Rendered(done.stdout, console)


def screenshot(page: Path, out: Path, anchor: str = "", width: int = 1280, height: int = 1600) -> Path:
    """A PNG of what a reader sees in a ``width`` x ``height`` window scrolled to the element
    with id ``anchor`` (the page's blocks before it hidden: headless Chromium draws the
    top of the page whatever the scroll)."""
    shown = out.with_suffix(".html")
    hide = (
        "<script>window.addEventListener('load', function () { setTimeout(function () {"
        f"var at = document.getElementById({json.dumps(anchor)});"
        "for (var el = at && at.previousElementSibling; el; el = el.previousElementSibling) {"
        "el.style.display = 'none'; } }, 0); });</script>"
    )
    shown.write_text(page.read_text(encoding="utf-8").replace("</body>", hide + "</body>"), encoding="utf-8")
    _chromium(shown.resolve().as_uri(), f"--screenshot={out}", budget_ms=20_000, width=width, height=height)
    shown.unlink()
    return out


LAYOUT_PROBE = """
<script>
window.addEventListener('load', function () { setTimeout(function () {
  // What a reader sees as one block: a table or a figure counts whole (their insides are
  // the table's and plotly's own layout); text blocks, headings and inputs each alone.
  var WHOLE = 'table, div.figure, svg';
  var BLOCKS = 'h1, h2, h3, h4, p, nav, input, ul, pre, code.ctx, .legend, ' + WHOLE;
  function shown(el) {
    var r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden';
  }
  function seen(el) {  // the element's rectangle, cut by every ancestor that clips it
    var r = el.getBoundingClientRect(), box = {l: r.left, t: r.top, r: r.right, b: r.bottom};
    for (var a = el.parentElement; a; a = a.parentElement) {
      var s = getComputedStyle(a), q = a.getBoundingClientRect();
      if (s.overflowX !== 'visible') { box.l = Math.max(box.l, q.left); box.r = Math.min(box.r, q.right); }
      if (s.overflowY !== 'visible') { box.t = Math.max(box.t, q.top); box.b = Math.min(box.b, q.bottom); }
    }
    return box;
  }
  function name(el) {
    var cls = typeof el.className === 'string' && el.className ? '.' + el.className.split(' ').join('.') : '';
    return el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + cls + ' "' +
      el.textContent.trim().slice(0, 30) + '"';
  }
  var els = Array.prototype.filter.call(document.querySelectorAll(BLOCKS), function (el) {
    var r = el.getBoundingClientRect();  // wholly left of or above the page: no reader sees it
    return shown(el) && r.right > 0 && r.bottom > 0 && !(el.parentElement && el.parentElement.closest(WHOLE));
  });
  var boxes = els.map(seen), found = [];
  els.forEach(function (el, i) {  // a block leaves its box: its parent's width
    var b = boxes[i], p = el.parentElement.getBoundingClientRect();
    if (b.r > b.l && (b.l < p.left - 1 || b.r > p.right + 1)) {
      found.push('overflow: ' + name(el) + ' is wider than its box ' + name(el.parentElement));
    }
  });
  for (var i = 0; i < els.length; i++) {
    for (var j = i + 1; j < els.length; j++) {
      if (els[i].contains(els[j]) || els[j].contains(els[i])) { continue; }
      var a = boxes[i], b = boxes[j];
      var w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
      if (w > 1 && h > 1) { found.push('overlap: ' + name(els[i]) + ' and ' + name(els[j])); }
    }
  }
  var out = document.createElement('pre');
  out.id = 'layout-probe';
  out.style.display = 'none';
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
}, 0); });
</script>
"""


def layout_problems(text: str, tmp: Path, width: int = 1280) -> list[str]:
    """What a reader would see wrong in the page ``text`` in a window ``width`` pixels wide:
    two visible blocks (text, headings, tables, figures) drawn over each other, and blocks
    wider than their box (a table that neither fits nor scrolls inside it)."""
    page = tmp / "layout.html"
    page.write_text(text.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    dom = render(page, width=width).dom
    found = re.search(r'<pre id="layout-probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, "the layout probe did not run"
    return json.loads(html.unescape(found.group(1)))


def figures_rendered(dom: str) -> list[bool]:
    """For each report figure (``<div class="figure">``), whether plotly drew its SVG."""
    chunks = dom.split('<div class="figure">')[1:]
    return ['class="main-svg"' in chunk.split('<div class="figure">')[0] for chunk in chunks]
