"""The run report in a real browser: it loads offline in headless Chromium with no console
message at all (no error, no uncaught exception) and plotly draws every figure."""

import pytest

from rlinterp.run_report import render_run_report
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
    page.write_text(render_run_report(synthetic_run(tmp_path)), encoding="utf-8")
    rendered = render(page)
    assert rendered.console == []
    drawn = figures_rendered(rendered.dom)
    assert len(drawn) == 5 and all(drawn), drawn  # behaviour, weights, activations, outputs, FVU drift
    assert "<script>alert" not in rendered.dom  # hostile model text stayed text
    # the latent table's script ran without error and the cards are in the page
    assert rendered.dom.count('class="card"') == 3
