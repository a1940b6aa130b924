"""The run report: every section present, plotly.js once, the latent table linking to the
cards, and model text escaped everywhere (page, every card, Markdown, Jupyter)."""

import html
import re

import pandas as pd
import pytest

from rlinterp.pipeline.figures import (
    FIGURES,
    fvu_drift_figure,
    index_figure,
    kl_figure,
    latent_trajectory_figure,
    paper,
    series_colour,
    tracking_figure,
    weights_figure,
)
from rlinterp.pipeline.report import SECTIONS, RunSection, render_markdown, render_run_report
from rlinterp.pipeline.result import summary_text
from tests.run_fixtures import EVIL, N_LATENTS, SERIES, synthetic_run

ESCAPED = html.escape(EVIL, quote=True)


@pytest.fixture
def run(tmp_path):
    return synthetic_run(tmp_path)


def _cards(page: str) -> dict[int, str]:
    parts = re.split(r"<div class='card' id='latent-(\d+)'>", page)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_section_renders_and_plotly_is_inlined_once(run):
    page = render_run_report(run)
    for section in SECTIONS:
        assert f"<h2 id='{section.id}'>{section.title}</h2>" in page
    assert page.count("* plotly.js v") == 1
    assert "<script src=" not in page and "<link" not in page  # opens offline
    # stages that have not run say so
    assert "Feature tracking has not run" in page and "No persona features" in page


def test_model_text_is_escaped_in_the_page_and_every_card(run):
    page = render_run_report(run)
    assert EVIL not in page and "<script>alert" not in page
    assert "onmouseover='alert" not in page
    cards = _cards(page)
    assert sorted(cards) == [2, 3, 4]  # the three latents whose activity changed most
    for latent, card in cards.items():
        body = card.split("<div class='card'")[0]
        assert ESCAPED in body, latent  # in its contexts and its decoder tokens
        assert EVIL not in body
        # side by side: base and each series' checkpoint
        for series in ("base", *SERIES):
            assert f"<h4>{series}: " in body


def test_the_markdown_keeps_model_text_in_code_spans(run):
    markdown = render_markdown(run)
    rows = [line for line in markdown.splitlines() if line.startswith("| 4 |")]
    assert len(rows) == 1
    # every cell holding model text is one code span: no raw markup outside backticks
    outside = re.sub(r"`[^`]*`", "", rows[0])
    assert "<" not in outside and ">" not in outside
    assert markdown.startswith("# rlinterp run: weak, strong")


def test_the_latent_table_links_to_the_cards_and_sorts_by_change(run):
    table = run.latent_table()
    assert table["latent"].tolist() == [4, 3, 2, 1, 0]
    assert table["strong_change"].round(6).tolist() == [0.4, 0.3, 0.2, 0.1, 0.0]
    assert table["weak_change"].abs().max() == 0
    page = render_run_report(run)
    for latent in (2, 3, 4):
        assert f"<a href='#latent-{latent}'>{latent}</a>" in page
    assert "<a href='#latent-1'>" not in page
    assert "<input class='search'" in page and "table class='sortable' id='latents'" in page


def test_jupyter_reprs_escape(run):
    assert EVIL not in run._repr_html_() and "weak" in run._repr_html_()
    assert "<td>step-5</td>" in run.diffs["weak"]._repr_html_()
    card = run.card(0)._repr_html_()
    assert ESCAPED in card and EVIL not in card


def test_a_section_appears_where_it_is_declared(run):
    at = [s.id for s in SECTIONS].index("tracking") + 1
    extra = RunSection("extra", "Extra", lambda r: (f"<p>{len(r.series)} series</p>",))
    page = render_run_report(run, (*SECTIONS[:at], extra, *SECTIONS[at:]))
    assert page.index("<h2 id='tracking'>") < page.index("<h2 id='extra'>Extra</h2><p>2 series</p>")
    assert page.index("<h2 id='extra'>") < page.index("<h2 id='persona'>")
    assert "<h2 id='extra'>" not in render_run_report(run)  # nothing registered by the call


def test_figures_carry_the_table_values(run):
    fvu = fvu_drift_figure(run)
    assert [t.name for t in fvu.data] == list(SERIES)
    assert list(fvu.data[1].y) == [0.1, 0.4] and list(fvu.data[0].y) == [0.1, 0.2]
    kl = kl_figure(run)
    assert [list(t.y) for t in kl.data] == [[0.0, 0.7], [0.0, 0.7]]
    trajectory = latent_trajectory_figure(run, 4)
    assert [list(t.y) for t in trajectory.data] == [[1.0, 1.0], [1.0, 1.4]]
    for name, make in FIGURES.items():
        figure = make(run)
        themed = paper(figure)
        assert themed.layout.font.size == 8 and themed.layout.width in (252, 504), name
        assert figure.layout.width is None  # the report's figure is not modified


def test_empty_tables_give_empty_states(tmp_path):
    import dataclasses

    run = dataclasses.replace(
        synthetic_run(tmp_path),
        fvu_drift=pd.DataFrame(),
        latent_steps=pd.DataFrame(),
        contexts=pd.DataFrame(),
        decoder_tokens=pd.DataFrame(),
        behaviour=pd.DataFrame(),
    )
    page = render_run_report(run)
    assert "No dictionaries yet" in page and "No feature cards yet" in page and "No behaviour table" in page
    assert len(run.latent_table()) == 0 and N_LATENTS == 5


def test_later_stages_fill_their_sections_the_summary_and_the_cards(tmp_path):
    run = synthetic_run(tmp_path, stages=True)
    summary = run.summary().set_index(["series", "step"])
    assert (
        summary.loc[("strong", 5), "changed_latents"] == 3
        and summary.loc[("weak", 5), "changed_latents"] == 0
    )
    assert summary.loc[("strong", 5), "index"] == 0.8 and summary.loc[("weak", 5), "index"] == 0.1
    assert summary.loc[("strong", 5), "circuits_shortcut"] == "new"
    assert summary.loc[("weak", 5), "circuits_shortcut"] == "enhanced"
    page = render_run_report(run)
    for gone in ("Feature tracking has not run", "No persona features", "No circuit diffs yet"):
        assert gone not in page
    tracking = page[page.index("<h2 id='tracking'>") : page.index("<h2 id='persona'>")]
    assert "id='lineage'" in tracking and "<td>amplified</td>" in tracking  # latent 4, strong, last step
    persona = page[page.index("<h2 id='persona'>") : page.index("<h2 id='circuits'>")]
    assert ESCAPED in persona and EVIL not in page  # a persona named by the user's data
    per_block = persona[persona.index("The index per block") :]
    assert per_block.count("<td>novelty (0.7-0.9)</td>") == 1  # strong, step 5, block 1 only
    assert per_block.count("<td>selection (0-0.2)</td>") == 3  # the other RL cells
    circuits = page[page.index("<h2 id='circuits'>") :]
    assert "<td>new</td>" in circuits and "<td>enhanced</td>" in circuits
    # the five before, tracking, the index, and one per reading
    assert page.count("<div class='figure'>") == 11
    readings = page[page.index("<h2 id='readings'>") : page.index("<h2 id='dictionaries'>")]
    assert "<h3>weak</h3>" in readings and "<h3>strong</h3>" in readings  # regimes side by side
    assert html.escape(repr(EVIL), quote=True) in readings and "Amplified sampling" in readings
    card = run.card(4).to_html()
    assert "<th>step 5</th>" in card and "<td>amplified</td>" in card
    text = summary_text(run)
    assert "strong: new computation from step 5 (block 1, index 0.8, interval 0.7-0.9)" in text
    assert "index change point (step 5, interval 5-5, block 1), behaviour (step 5)" in text
    assert "weak: selection at every step (last step 5: block 0, index 0.1, interval 0-0.2)" in text
    assert "strong: new computation from step 5" in render_markdown(run)


def test_the_weights_figure_shows_a_thousandfold_smaller_regime_on_a_log_scale(tmp_path):
    import dataclasses
    import math

    run = synthetic_run(tmp_path)
    strong = run.diffs["strong"]
    gentle = strong.weights_by_component.assign(
        rel_frobenius=strong.weights_by_component["rel_frobenius"] / 1000
    )
    run = dataclasses.replace(
        run, diffs={"weak": dataclasses.replace(strong, weights_by_component=gentle), "strong": strong}
    )
    figure = weights_figure(run)
    weak, loud = (trace.z.tolist() for trace in figure.data)
    # the base (step 0, no change) is left out; cells are log10 of the change
    assert [list(t.x) for t in figure.data] == [["5"], ["5"]]
    assert loud == [[pytest.approx(math.log10(0.1))], [pytest.approx(math.log10(0.3))]]
    assert weak == [[pytest.approx(math.log10(1e-4))], [pytest.approx(math.log10(3e-4))]]
    bar = figure.layout.coloraxis.colorbar
    assert list(bar.tickvals) == [-4, -3, -2, -1, 0] and list(bar.ticktext) == [
        "0.0001",
        "0.001",
        "0.01",
        "0.1",
        "1",
    ]
    # the gentle regime's two sites differ by a tenth of the scale, not by 0.1% of it
    assert (weak[1][0] - weak[0][0]) / 4 > 0.1


def test_the_index_figure_draws_one_half_and_the_transitions(tmp_path):
    run = synthetic_run(tmp_path, stages=True)
    figure = index_figure(run)
    half = [s for s in figure.layout.shapes if s.y0 == 0.5 and s.y1 == 0.5]
    assert len(half) == 1 and half[0].line.dash == "dash"
    vertical = [s for s in figure.layout.shapes if s.x0 == s.x1]
    assert [(s.x0, s.line.color) for s in vertical] == [(5, series_colour(run, "strong"))]  # weak has none
    assert [a.text for a in figure.layout.annotations if "transition" in a.text] == [
        " strong: transition (block 1)"
    ]
    paper_figure = paper(figure)
    assert len(paper_figure.layout.shapes) == 2 and paper_figure.layout.yaxis.range == (-0.05, 1.05)


def test_series_keep_the_run_order_in_every_table_and_figure(tmp_path):
    import dataclasses

    run = synthetic_run(tmp_path, stages=True)
    backwards = {name: frame.iloc[::-1] for name, frame in run.tables.items()}
    run = dataclasses.replace(run, tables=backwards, fvu_drift=run.fvu_drift.iloc[::-1])
    assert run.series == ["weak", "strong"]
    page = render_run_report(run)
    for section, after in (("tracking", "persona"), ("persona", "circuits"), ("circuits", None)):
        body = page[page.index(f"<h2 id='{section}'>") : page.index(f"<h2 id='{after}'>") if after else None]
        assert 0 < body.index("<h3>weak</h3>") < body.index("<h3>strong</h3>"), section
    assert [a.text for a in tracking_figure(run).layout.annotations] == ["weak", "strong"]
    shuffled = dataclasses.replace(
        run, contexts=run.contexts.iloc[::-1], latent_steps=run.latent_steps.iloc[::-1]
    )
    card = shuffled.card(4).to_html()
    assert card.index("<h4>base: ") < card.index("<h4>weak: ") < card.index("<h4>strong: ")
    assert card.index("weak mean act.") < card.index("strong mean act.")
    for make in (index_figure, fvu_drift_figure, kl_figure):
        figure = make(run)
        assert [t.name for t in figure.data] == ["weak", "strong"], make.__name__
        assert [t.line.color for t in figure.data] == [
            series_colour(run, "weak"),
            series_colour(run, "strong"),
        ]


def test_the_circuits_sections_say_what_the_verdict_cannot_see(tmp_path):
    page = render_run_report(synthetic_run(tmp_path, stages=True))
    circuits = page[page.index("<h2 id='circuits'>") :]
    # the component verdict's blind spot, and the sub-component verdict that looks inside
    assert "new computation written into a component the base already used reads <i>enhanced</i>" in circuits
    assert "Below the component" in circuits and "subcomponent_verdict" in circuits


@pytest.mark.parametrize("names", [("grpo-lora", "ppo run 2"), ("ünï-code", "<b>&amp;")], ids=str)
def test_any_series_name_a_user_can_type_renders_everywhere(tmp_path, names):
    """Series names are folder names, not identifiers: hyphens, spaces, other scripts and
    markup reach the HTML report, report.md, the terminal summary and every figure."""
    import dataclasses

    run = synthetic_run(tmp_path, stages=True)
    rename = dict(zip(SERIES, names, strict=True))

    def renamed(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(series=frame["series"].replace(rename)) if "series" in frame else frame

    run = dataclasses.replace(
        run,
        diffs={rename[k]: v for k, v in run.diffs.items()},
        fvu_drift=renamed(run.fvu_drift),
        latent_steps=renamed(run.latent_steps),
        contexts=renamed(run.contexts),
        tables={k: renamed(v) for k, v in run.tables.items()},
    )
    page, markdown, summary = render_run_report(run), render_markdown(run), summary_text(run)
    for name in names:
        assert f"<li>{html.escape(name)}: " in page.replace("&#x27;", "'")
        assert f"- `{name}: " in markdown
        assert f"\n{name}: " in summary
    assert "<b>&amp;" not in page  # escaped, never markup
    latents = markdown.split("## Top features")[1]
    assert all(f"{name}_change" in latents for name in names)
    for make in (index_figure, fvu_drift_figure, kl_figure):
        assert [t.name for t in make(run).data] == list(names), make.__name__
