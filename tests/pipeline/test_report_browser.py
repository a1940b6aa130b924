"""The run report in a real browser: it loads offline in headless Chromium with no console
message at all (no error, no uncaught exception) and plotly draws every figure."""

import pytest

from rlinterp.pipeline.report import render_run_report
from tests.browser import chromium, figures_rendered, render
from tests.run_fixtures import synthetic_run

pytestmark = pytest.mark.skipif(
    chromium() is None, reason="needs Debian's chromium; `make setup` installs it (apt-get install chromium)"
)


def test_the_console_is_captured(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.log('hi'); throw new Error('boom')</script></body></html>")
    console = render(page, budget_ms=1000).console
    assert console[0] == '"hi", source: ' + page.resolve().as_uri() + " (1)"
    assert "Uncaught Error: boom" in console[1]


def test_report_loads_without_console_messages_and_draws_every_figure(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_run_report(synthetic_run(tmp_path, stages=True)), encoding="utf-8")
    rendered = render(page)
    assert rendered.console == []
    drawn = figures_rendered(rendered.dom)
    # behaviour, weights, activations, outputs, the four readings, FVU drift, tracking, the index
    assert len(drawn) == 11 and all(drawn), drawn
    assert "<script>alert" not in rendered.dom  # hostile model text stayed text
    # the latent table's script ran without error and the cards are in the page
    assert rendered.dom.count('class="card"') == 3


PROBE = """
<script>
(function () {
  function latents() {
    var rows = document.getElementById('latents').tBodies[0].rows, shown = [];
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].style.display !== 'none') { shown.push(rows[i].cells[0].textContent); }
    }
    return shown;
  }
  function type(text) {
    var box = document.querySelector("input.search[data-table='latents']");
    box.value = text;
    box.dispatchEvent(new Event('input'));
  }
  var header = document.getElementById('latents').tHead.rows[0].cells[0];
  var seen = {initial: latents()};
  type('0.3'); seen.filtered = latents();
  type('SCRIPT'); seen.case_blind = latents();
  type(''); seen.cleared = latents();
  header.click(); seen.ascending = latents();
  header.click(); seen.descending = latents();
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
})();
</script>
"""


def test_latent_table_filters_as_typed_and_sorts_on_header_clicks(tmp_path):
    """The report's own script, driven as a reader would: typing into the search box hides
    the rows that do not contain the text (case-blind), clicking a header sorts by it
    numerically, clicking again reverses."""
    import html
    import json
    import re

    page = tmp_path / "report.html"
    text = render_run_report(synthetic_run(tmp_path))
    page.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    rendered = render(page)
    assert rendered.console == []
    seen = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', rendered.dom).group(1)))
    # the table starts sorted by change (latent j moved by j / 10 in strong)
    assert seen["initial"] == ["4", "3", "2", "1", "0"]
    assert seen["filtered"] == ["3"]  # only latent 3's change reads 0.3
    assert seen["case_blind"] == seen["initial"]  # every row promotes the <script> text
    assert seen["cleared"] == seen["initial"]
    assert seen["ascending"] == ["0", "1", "2", "3", "4"]
    assert seen["descending"] == ["4", "3", "2", "1", "0"]
