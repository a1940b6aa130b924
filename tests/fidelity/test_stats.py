"""Intervals and the reward-overfitting readings on constructed trajectories whose answer is
known: a ratio of sums, a gold reward that peaks and falls (or keeps rising), a gap that
opens at a known step, and Gao et al.'s curve recovered from its own values."""

import numpy as np
import pytest

from rlinterp.fidelity.stats import Resampler, curve, divergence, gao_fit, goodhart_onset, ratio


def _resampler(n_prompts=40, seed=0):
    return Resampler.make(n_prompts, n_bootstrap=400, confidence=0.9, seed=seed)


def _per_prompt(values, n_prompts=40, per_prompt=4, noise=0.0, seed=0):
    """Samples of a step whose per-sample value is ``values`` plus noise."""
    rng = np.random.default_rng(seed)
    prompts = np.repeat(np.arange(n_prompts), per_prompt)
    return prompts, values + noise * rng.standard_normal(len(prompts))


def test_ratio_is_a_ratio_of_sums_that_skips_missing_values():
    r = _resampler(n_prompts=3)
    est = ratio(np.array([0, 0, 1, 2]), np.array([1.0, np.nan, 3.0, 2.0]), np.array([1.0, 5.0, 1.0, 2.0]), r)
    assert est.value == pytest.approx(6.0 / 4.0) and est.n == 3
    constant = ratio(np.array([0, 1, 2]), np.ones(3), None, r)
    assert constant.value == 1.0 and np.allclose(constant.replicates, 1.0)  # no spread, no interval


def test_the_interval_covers_the_mean_of_noisy_samples():
    r = _resampler()
    prompts, values = _per_prompt(0.3, noise=1.0)
    lo, hi = r.interval(ratio(prompts, values, None, r).replicates)
    assert lo < 0.3 < hi and hi - lo < 0.6


def _trajectory(means, noise=0.05):
    r = _resampler()
    return r, [ratio(*_per_prompt(m, noise=noise, seed=i), None, r) for i, m in enumerate(means)]


def test_goodhart_onset_is_the_step_after_a_gold_peak_that_falls():
    r, gold = _trajectory([0.2, 0.6, 0.8, 0.5, 0.3])
    onset = goodhart_onset([0, 5, 10, 20, 40], gold, r)
    assert onset["found"] and onset["peak_step"] == 10 and onset["step"] == 20
    assert onset["step_lo"] <= 20 <= onset["step_hi"] and onset["drop_lo"] > 0


def test_no_onset_when_gold_keeps_rising_or_falls_within_noise():
    r, rising = _trajectory([0.2, 0.4, 0.6, 0.8])
    assert not goodhart_onset([0, 1, 2, 3], rising, r)["found"]
    r, flat = _trajectory([0.5, 0.52, 0.5, 0.49], noise=0.5)
    assert not goodhart_onset([0, 1, 2, 3], flat, r)["found"]


def test_divergence_finds_the_step_where_the_gap_opens():
    r, proxy = _trajectory([0.5, 0.6, 0.9, 1.5])
    _, gold = _trajectory([0.4, 0.5, 0.5, 0.3])
    found = divergence([0, 1, 2, 3], proxy, gold, r)
    assert found["found"] and found["step"] == 2
    _, same = _trajectory([0.5, 0.6, 0.7, 0.8])
    assert not divergence([0, 1, 2, 3], same, [g for g in same], r)["found"]


def test_gao_fit_recovers_its_own_curve():
    d = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    alpha, beta = 0.8, 0.4
    r, kl = _trajectory(d**2, noise=0.0)
    _, reward = _trajectory(0.1 + curve(d, alpha, beta), noise=0.0)
    fit = gao_fit(kl, reward, r)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-6) and fit["beta"] == pytest.approx(beta, abs=1e-6)
    assert fit["d_peak"] == pytest.approx(np.exp(alpha / beta - 1)) and fit["rmse"] < 1e-9
