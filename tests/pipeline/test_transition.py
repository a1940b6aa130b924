"""The transition reading on hand-made signal tables whose answer is known: the change point
sits where most signals start to move, one signal moving alone (or one early flicker) is no
transition, the interval widens when the signals disagree; each signal's test against its
control; the FVU sums against a direct computation; the answer line names the reading."""

import numpy as np
import pandas as pd
import pytest
import torch

from rlinterp.pipeline.transition import (
    SIGNAL_COLUMNS,
    FvuParts,
    change_point,
    index_signal,
    lineage_signal,
    persona_patch_signal,
    poisson_interval,
    signals_of,
)
from rlinterp.pipeline.verdict import transition_clause, verdict_lines

STEPS = (5, 10, 25, 50, 100)


def _signals(moved: dict[str, tuple[int, ...]]) -> pd.DataFrame:
    """One row per signal and step; each signal moved at the steps given."""
    rows = [
        {
            "series": "r",
            "step": step,
            "signal": name,
            "value": 0.0,
            "lo": 0.0,
            "hi": 0.0,
            "null": 0.0,
            "moved": step in at,
        }
        for name, at in moved.items()
        for step in STEPS
    ]
    return pd.DataFrame(rows, columns=list(SIGNAL_COLUMNS))


def test_the_change_point_is_where_two_signals_start_to_agree():
    later = (25, 50, 100)
    signals = _signals(
        {
            "index": (),
            "fvu_drift": (10, 25, 50, 100),
            "lineage": later,
            "persona_patch": later,
            "circuits": (),
        }
    )
    point = change_point(signals)
    assert point.found and point.step == 25 and point.n_signals == 5
    assert point.moved == {"fvu_drift": 10, "lineage": 25, "persona_patch": 25}
    assert point.silent == ("index", "circuits")
    # any one signal left out, two still agree from step 25
    assert (point.step_lo, point.step_hi, point.support) == (25, 25, 1.0)
    two = _signals({"index": (), "fvu_drift": later, "lineage": later, "persona_patch": (), "circuits": ()})
    point = change_point(two)  # it hangs on both: leaving either out finds nothing
    assert point.found and point.step == 25 and point.support == 3 / 5


def test_one_signal_moving_alone_or_one_agreeing_step_is_no_transition():
    alone = _signals({"index": (), "fvu_drift": STEPS, "lineage": (), "circuits": ()})
    assert not change_point(alone).found
    once = _signals({"index": (10,), "fvu_drift": STEPS, "lineage": ()})  # two agree at step 10 only
    assert not change_point(once).found
    flicker = _signals({"index": (5, 50, 100), "fvu_drift": (50, 100), "lineage": (50, 100)})
    point = change_point(flicker)
    assert point.found and point.step == 50 and point.moved["index"] == 5
    assert not change_point(_signals({"index": STEPS})).found  # one signal is its own reading


def test_a_step_that_stops_agreeing_once_keeps_the_transition_and_signals_left_out_move_it():
    signals = _signals(
        {"fvu_drift": (5, 10, 25, 50, 100), "persona_patch": (10, 25, 100), "lineage": (25, 50, 100)}
    )
    point = change_point(signals)  # agreeing steps: 10, 25, 50, 100
    assert point.found and point.step == 10
    # without persona_patch agreement starts at 25, without lineage at 10 (then 50 fails once)
    assert (point.step_lo, point.step_hi) == (10, 25) and point.support == 1.0


def test_poisson_interval_is_garwoods():
    assert poisson_interval(0, 0.9) == pytest.approx((0.0, 2.9957), abs=1e-4)
    assert poisson_interval(10, 0.9) == pytest.approx((5.4254, 16.9622), abs=1e-4)


def test_each_signal_moves_by_its_own_test():
    index = pd.DataFrame(
        {
            "series": "r",
            "step": [0, 5, 10],
            "index": [0.0, 0.55, 0.8],
            "index_lo": [0.0, 0.45, 0.6],
            "index_hi": [0.0, 0.65, 0.9],
            "choice_shares": [np.nan, 0.8, 0.05],
            "choice_shares_random": [np.nan, 0.1, 0.1],
        }
    )
    assert index_signal("r", index)["moved"].tolist() == [False, True]  # 5 straddles 0.5
    pointwise = index.assign(side=["selection", "novelty", "novelty"])  # a side read from the point
    assert index_signal("r", pointwise)["moved"].tolist() == [False, True]
    patch = persona_patch_signal("r", index)
    assert patch["moved"].tolist() == [False, True] and patch["null"].tolist() == [0.1, 0.1]
    summary = pd.DataFrame(
        {
            "series": "r",
            "source": "on-policy",
            "step": [0, 5, 10],
            "n_born": [0, 1, 9],
            "n_repurposed": [0, 1, 3],
            "self_nonstable": [0, 2, 2],
        }
    )
    lineage = lineage_signal("r", summary, 0.9)
    assert lineage["value"].tolist() == [2.0, 12.0] and lineage["moved"].tolist() == [False, True]
    assert (lineage["lo"] < lineage["value"]).all() and (lineage["value"] < lineage["hi"]).all()


def test_signals_of_reads_only_its_series_and_skips_what_did_not_run():
    index = pd.DataFrame(
        {
            "series": ["a", "a", "b", "b"],
            "step": [0, 5, 0, 5],
            "index": [0, 0.9, 0, 0.1],
            "index_lo": [0, 0.8, 0, 0.0],
            "index_hi": [0, 1.0, 0, 0.2],
        }
    )
    rows = signals_of("a", {"selection/index": index}, pd.DataFrame(), None, 0.9)
    assert rows[["signal", "step", "moved"]].values.tolist() == [["index", 5, True]]
    assert signals_of("c", {}, pd.DataFrame(), None, 0.9).empty


def test_fvu_parts_give_the_fvu_of_the_tokens_and_of_each_resample():
    generator = torch.Generator().manual_seed(0)
    acts = torch.randn(60, 4, generator=generator, dtype=torch.float64) + 3.0
    recon = acts + 0.3 * torch.randn(60, 4, generator=generator, dtype=torch.float64)
    prompt = torch.arange(60) // 20  # three prompts of 20 tokens
    parts = FvuParts(
        error_sq=torch.zeros(3, dtype=torch.float64).index_add_(0, prompt, ((acts - recon) ** 2).sum(1)),
        total_sq=torch.zeros(3, dtype=torch.float64).index_add_(0, prompt, (acts**2).sum(1)),
        n_tokens=torch.full((3,), 20.0, dtype=torch.float64),
        sums=torch.zeros(3, 4, dtype=torch.float64).index_add_(0, prompt, acts),
    )
    direct = ((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert float(parts.fvu(torch.ones(1, 3, dtype=torch.float64))) == pytest.approx(float(direct))
    twice_first = (
        torch.cat([acts[:20], acts[:20], acts[40:]]),
        torch.cat([recon[:20], recon[:20], recon[40:]]),
    )
    x, r = twice_first
    expected = ((x - r) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    weights = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    assert float(parts.fvu(weights)) == pytest.approx(float(expected))


def test_the_answer_line_ends_with_the_combined_reading():
    index = pd.DataFrame(
        {
            "series": "r",
            "step": [0, 5, 10],
            "index": [0, 0.2, 0.3],
            "index_lo": [0, 0.1, 0.2],
            "index_hi": [0, 0.3, 0.4],
        }
    )
    point = {
        "series": "r",
        "found": True,
        "step": 10,
        "step_lo": 5,
        "step_hi": 10,
        "support": 0.8,
        "n_signals": 4,
        "moved": "fvu_drift@5, lineage@10",
        "silent": "index, circuits",
        "behavioural_step": 10,
    }
    tables = {"selection/index": index, "transition/change_points": pd.DataFrame([point])}
    (line,) = verdict_lines(tables, ["r"])
    assert line.startswith("r: selection at every step")
    assert line.endswith(
        "combined transition at step 10 (interval 5-10, support 0.8; 4 signals, moved fvu_drift@5, "
        "lineage@10, silent index, circuits; behavioural transition step 10)"
    )
    none = transition_clause(pd.Series(point | {"found": False, "behavioural_step": None}))
    assert none.startswith("combined transition: none (4 signals") and none.endswith("transition none)")
