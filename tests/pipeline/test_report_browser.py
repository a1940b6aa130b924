"""The run report in a real browser: it loads offline in headless Chromium with no console
message at all (no error, no uncaught exception), plotly draws every figure, and no two
blocks a reader sees overlap or run out of their box."""

import pytest

from rlinterp.pipeline.report import render_run_report
from tests.browser import chromium, figures_rendered, layout_problems, render
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


CELL = "<table><tr><td>{}</td></tr></table>"
OVERLAPPING = f"""<!DOCTYPE html><html><head><meta charset='utf-8'>
<style>.column {{ flex: 1 1 0; min-width: 0 }}</style></head><body>
<div style='width: 300px'><p>one paragraph</p><p style='margin-top: -1.5em'>drawn over it</p></div>
<div style='display: flex; width: 400px'>
  <div class='column'>{CELL.format("a_very_long_cell_that_cannot_wrap_at_all")}</div>
  <div class='column'><p>its neighbour</p></div>
</div>
<div style='width: 200px; overflow-x: auto'>{CELL.format("a_very_long_cell_that_scrolls_in_its_box")}</div>
</body></html>"""


def test_the_layout_check_sees_overlap_and_overflow(tmp_path):
    """The check itself can fail: two paragraphs drawn over each other, and a table wider
    than its flex column running over its neighbour; a table that scrolls in its box is fine."""
    found = layout_problems(OVERLAPPING, tmp_path)
    assert any(p.startswith('overlap: p "one paragraph" and p "drawn over it"') for p in found), found
    assert any(p.startswith('overflow: table "a_very_long_cell_that_cannot') for p in found), found
    assert any(p.startswith("overlap: table") and 'p "its neighbour"' in p for p in found), found
    assert not any("scrolls_in_its_box" in p for p in found), found
    assert len(found) == 3, found


@pytest.mark.parametrize("width", [1280, 800])
def test_no_two_blocks_overlap_and_every_table_fits_or_scrolls(tmp_path, width):
    """The run report as a reader sees it, on a wide and a narrow screen: per-regime tables
    side by side (tracking, index, circuits) never run over each other or out of their box."""
    run = synthetic_run(tmp_path, stages=True)
    assert layout_problems(render_run_report(run), tmp_path, width) == []


def test_the_command_reports_keep_their_layout(tmp_path):
    """The pages of ``rlinterp diff`` and ``rlinterp track`` come from the same kit."""
    from rlinterp.diff.report import render_report
    from rlinterp.tracking.report import render_tracking_report
    from tests.diff.test_report import _diff
    from tests.tracking.test_track_report import result

    for page in (render_report(_diff(), "diff"), render_tracking_report(result(), "track")):
        assert layout_problems(page, tmp_path, 1000) == []
