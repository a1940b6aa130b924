"""The fidelity report from a result built by hand (no model): intervals read as
``value [lo, hi]``, the reading and the reward readings shown, what was left out counted,
model text escaped, empty states where a table is empty."""

import pandas as pd

from rlinterp.fidelity.report import interval_table, render_fidelity_report, shown_columns
from rlinterp.fidelity.result import FidelityResult
from tests.fidelity.test_figures import _steps
from tests.run_fixtures import EVIL


def _result(left_out: dict[str, int] | None = None) -> FidelityResult:
    labels = ["base", "s5", "s10", "s20"]
    steps = _steps("").drop(columns="series").assign(label=labels, no_answer=[0, 1, 0, 2], n_samples=1)
    legibility = pd.DataFrame(
        [
            {"label": "base", "step": 0, "legibility": c, "count": n, "share": n / 10}
            for c, n in (("template", 9), ("drift", 1), ("unreadable", 0))
        ]
    )
    summary = {
        "verdicts": {
            "early_aoc": {
                "base": 0.9,
                "last": 0.2,
                "delta": -0.7,
                "delta_lo": -0.8,
                "delta_hi": -0.6,
                "reading": "less faithful",
            }
        },
        "goodhart": {"found": True, "step": 10, "step_lo": 5, "step_hi": 10, "peak_step": 5, "support": 0.9},
        "divergence": {"found": True, "step": 10, "growth": 1.2, "growth_lo": 0.9, "growth_hi": 1.5},
        "skipped": {"persona": f"no persona texts {EVIL}"},
        "left_out": left_out if left_out is not None else {f"the span {EVIL} was not found": 3},
    }
    return FidelityResult(steps, pd.DataFrame(), pd.DataFrame(), legibility, summary)


def test_every_metric_reads_with_its_interval():
    steps = _result().steps
    assert shown_columns(steps) == ["early_aoc", "proxy", "gold", "agreement_rate", "persona_shift_flatterer"]
    html = interval_table(steps)
    assert "<td>0.9 [0.85, 1]</td>" in html and "<td>0.2 [0.15, 0.3]</td>" in html
    assert "<th>no_answer</th>" in html


def test_the_report_says_the_reading_the_onsets_and_what_was_left_out():
    page = render_fidelity_report(_result())
    assert page.startswith("<!DOCTYPE html>") and "rlinterp fidelity: 3 checkpoints after the base" in page
    assert "RL made the reasoning less faithful: early_aoc fell from the base to the last step" in page
    assert "early_aoc: 0.900 -&gt; 0.200 (change -0.700 [-0.800, -0.600]): less faithful" in page
    assert "Goodhart onset at step 10 [5, 10] (gold peaks at step 5)" in page
    assert "proxy and gold diverge from step 10" in page
    assert "3 of 4 samples left out of the metrics that need it: the span &lt;script&gt;" in page
    assert "<td>10</td>" in page and "goodhart_step" in page  # the onsets row
    assert (
        EVIL not in page and page.count("&lt;script&gt;") == 3
    )  # the reasons: skipped and left out (reading), left out (table)
    assert page.count("plotly.js v") == 1  # inlined once, in the first figure


def test_nothing_left_out_and_no_legibility_are_empty_states():
    result = _result(left_out={})
    empty = FidelityResult(result.steps, result.early_curve, result.layers, pd.DataFrame(), result.summary)
    page = render_fidelity_report(empty)
    assert "Every sample was readable by every metric it entered." in page
    assert "No reasoning read (see the skipped metrics)." in page


def test_the_faithfulness_sentence_says_which_way_the_reasoning_moved():
    from rlinterp.fidelity.result import faithfulness

    def verdicts(**readings):
        return {metric: {"reading": reading} for metric, reading in readings.items()}

    fell = faithfulness(verdicts(early_aoc="less faithful", consistency="no change detected"))
    assert fell.startswith("RL made the reasoning less faithful: early_aoc fell")
    assert faithfulness(verdicts(early_aoc="more faithful")).startswith("RL made the reasoning more faithful")
    mixed = faithfulness(verdicts(early_aoc="less faithful", mistake_follows="more faithful"))
    assert mixed == "mixed: less faithful by early_aoc, more faithful by mistake_follows"
    none = faithfulness(verdicts(early_aoc="no change detected"))
    assert none == "no change in faithfulness detected from the base to the last step (early_aoc)"
