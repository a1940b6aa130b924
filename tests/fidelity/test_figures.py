"""The fidelity figures from tables alone: intervals drawn where the tables have them, the
Goodhart onset marked, Gao et al.'s fitted curve beside the measured points."""

import numpy as np
import pandas as pd

from rlinterp.fidelity import figures


def _steps(series: str) -> pd.DataFrame:
    step = np.array([0, 5, 10, 20])
    rows = {"series": series, "step": step, "sqrt_kl": np.sqrt([0.0, 0.5, 2.0, 6.0])}
    for name, values in {
        "early_aoc": [0.9, 0.8, 0.5, 0.2],
        "proxy": [0.5, 1.0, 2.0, 3.0],
        "gold": [0.5, 0.7, 0.4, 0.1],
        "agreement_rate": [0.3, 0.2, 0.4, 0.6],
        "persona_shift_flatterer": [0.0, 0.1, 0.5, 0.9],
    }.items():
        rows[name] = np.array(values)
        rows[f"{name}_lo"], rows[f"{name}_hi"] = rows[name] - 0.05, rows[name] + 0.1
    return pd.DataFrame(rows)


def test_metric_figures_draw_one_panel_per_series_with_their_intervals():
    steps = pd.concat([_steps("weak"), _steps("strong")], ignore_index=True)
    figure = figures.fidelity_figure(steps)
    early = [t for t in figure.data if t.name.startswith("early answering")]
    assert len(early) == 2 and list(early[0].y) == [0.9, 0.8, 0.5, 0.2]
    assert np.allclose(early[0].error_y.array, 0.1) and np.allclose(early[0].error_y.arrayminus, 0.05)
    assert [a.text for a in figure.layout.annotations] == ["weak", "strong"]
    assert {t.name for t in figures.drift_figure(steps).data} == {"agreement"}
    assert {t.name for t in figures.persona_shift_figure(steps).data} == {"flatterer"}


def test_the_onset_and_the_fitted_curve_are_drawn():
    steps = _steps("strong")
    onset = {"strong": {"found": True, "step": 20}}
    rewards = figures.rewards_figure(steps, onset)
    assert [s.x0 for s in rewards.layout.shapes] == [20]
    fits = {"strong": {"gold": {"alpha": 0.5, "beta": 0.4}}}
    gao = figures.gao_figure(steps, fits)
    fitted = next(t for t in gao.data if t.name == "gold (fit)")
    d = np.asarray(fitted.x)
    assert np.allclose(fitted.y[1:], d[1:] * (0.5 - 0.4 * np.log(d[1:])))
    measured = next(t for t in gao.data if t.name == "gold (measured)")
    assert np.allclose(measured.y, [0.0, 0.2, -0.1, -0.4])  # change from step 0
