"""The answer per regime, on hand-made index tables whose reading is known: a step reads
novelty only when its whole interval lies above 0.5, undecided when it straddles 0.5; the
line names the first novelty step with its interval and every signal; the same lines open
the HTML report, report.md and the CLI summary."""

import dataclasses

import pandas as pd
import pytest

from rlinterp.pipeline.report import render_markdown, render_run_report
from rlinterp.pipeline.result import summary_text
from rlinterp.pipeline.verdict import SIGNALS, Onset, Signal, regime_verdict, verdict_lines
from rlinterp.selection.report import index_table, reading
from tests.run_fixtures import synthetic_run


def _index(rows: list[tuple[int, float, float, float]], series: str = "r") -> pd.DataFrame:
    """``(step, index, lo, hi)`` rows after a base row (step 0, index 0)."""
    frame = pd.DataFrame([(0, 0.0, 0.0, 0.0), *rows], columns=["step", "index", "index_lo", "index_hi"])
    return frame.assign(series=series)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(0.0, 0.2, "selection"), (0.51, 0.6, "novelty"), (0.45, 0.56, "undecided"), (0.5, 0.6, "undecided")],
)
def test_a_step_reads_from_its_interval(lo, hi, expected):
    assert reading(lo, hi) == expected


def test_the_first_step_whose_interval_clears_one_half_starts_new_computation():
    # step 10's point estimate is above 0.5, but its interval straddles it: undecided
    index = _index([(10, 0.55, 0.45, 0.65), (20, 0.7, 0.6, 0.8), (30, 0.8, 0.7, 0.9)])
    assert regime_verdict(index) == (
        "new computation from step 20 (index 0.7, interval 0.6-0.8), "
        "undecided at step 10 (index 0.55, interval 0.45-0.65)"
    )


def test_new_computation_that_does_not_last_says_so():
    # as the weak regime of notebooks/tiny.toml read: one step above 0.5, then back below
    index = _index([(5, 0.48, 0.46, 0.49), (10, 0.5465, 0.5327, 0.5602), (40, 0.3976, 0.38, 0.41)])
    assert regime_verdict(index) == (
        "new computation at step 10 (index 0.5465, interval 0.5327-0.5602), not sustained: "
        "last step 40 reads selection (index 0.3976, interval 0.38-0.41)"
    )


def test_undecided_steps_are_named_with_their_interval():
    index = _index([(10, 0.546, 0.45, 0.56), (20, 0.2, 0.1, 0.3)])
    assert regime_verdict(index) == (
        "selection (last step 20: index 0.2, interval 0.1-0.3), "
        "undecided at step 10 (index 0.546, interval 0.45-0.56)"
    )
    both = _index([(10, 0.5, 0.4, 0.6), (20, 0.52, 0.49, 0.55)])
    assert regime_verdict(both).startswith("undecided at every step: step 10 (index 0.5")
    assert regime_verdict(_index([(5, 0.1, 0.0, 0.2)])) == (
        "selection at every step (last step 5: index 0.1, interval 0-0.2)"
    )


def test_the_index_table_shows_the_interval_beside_every_side():
    index = _index([(10, 0.546, 0.45, 0.56)]).assign(side=["selection", "novelty"])
    html = index_table(index)
    assert "<td>selection (0-0)</td>" in html and "<td>undecided (0.45-0.56)</td>" in html
    assert "<td>novelty</td>" not in html  # the point estimate's side alone would mislead


def test_the_index_side_from_its_blocks_decides_and_the_block_is_named():
    """An index that read every block carries each step's side (novelty when a block's
    interval clears 0.5): step 10's interval over the blocks' maximum lies above 0.5, yet no
    single block's does, so it is undecided; step 20 is novelty in block 2."""
    index = _index([(10, 0.6, 0.52, 0.7), (20, 0.9, 0.8, 0.95)]).assign(
        side=["selection", "undecided", "novelty"], layer=[0, 1, 2]
    )
    assert regime_verdict(index) == (
        "new computation from step 20 (block 2, index 0.9, interval 0.8-0.95), "
        "undecided at step 10 (block 1, index 0.6, interval 0.52-0.7)"
    )
    html = index_table(index)
    assert "<td>undecided (0.52-0.7)</td>" in html and "<td>novelty (0.8-0.95)</td>" in html


def test_lines_name_every_signal_and_follow_the_run_order(tmp_path):
    run = synthetic_run(tmp_path, stages=True)
    lines = verdict_lines(run.tables, run.series)
    assert lines == [
        "weak: selection at every step (last step 5: block 0, index 0.1, interval 0-0.2); "
        "signals of new computation: none; silent: index, index change point, behaviour",
        "strong: new computation from step 5 (block 1, index 0.8, interval 0.7-0.9); signals of new "
        "computation: index (step 5), index change point (step 5, interval 5-5, block 1), "
        "behaviour (step 5)",
    ]
    # the tables in another order: the lines keep the run's
    tables = {k: v.iloc[::-1] for k, v in run.tables.items()}
    assert [line.split(":")[0] for line in verdict_lines(tables, run.series)] == ["weak", "strong"]


def test_a_new_signal_plugs_in_as_one_row(tmp_path):
    run = synthetic_run(tmp_path, stages=True)

    def births(rows: pd.DataFrame) -> Onset | None:
        born = rows[rows["n_born"] > 0]
        return Onset(int(born["step"].min()), "births above the floor") if len(born) else None

    signals = (*SIGNALS, Signal("tracking births", "tracking/summary", births))
    weak, strong = verdict_lines(run.tables, run.series, signals)
    assert weak.endswith("silent: index, index change point, behaviour, tracking births")
    assert strong.endswith("behaviour (step 5), tracking births (step 5, births above the floor)")


def test_the_same_lines_open_the_report_the_markdown_and_the_summary(tmp_path):
    run = synthetic_run(tmp_path, stages=True)
    lines = verdict_lines(run.tables, run.series)
    page = render_run_report(run)
    answer = page.index("<ul class='answer'>")
    assert answer < page.index("<h2 id='weights'>")  # the top of the report, before any section
    for line in lines:
        assert f"<li>{line}</li>" in page
        assert f"- `{line}`" in render_markdown(run)
        assert line in summary_text(run)
    assert render_markdown(run).index("## Answer") < render_markdown(run).index("| series |")
    no_selection = dataclasses.replace(run, tables={})
    assert "No answer yet" in render_run_report(no_selection) and "## Answer" not in render_markdown(
        no_selection
    )
