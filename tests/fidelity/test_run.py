"""``run_fidelity`` end to end on micro organisms (built in seconds, not trained to behave;
``micro_reasoning`` is the session's): the layout, what is skipped and why, the base against
itself, resume."""

import dataclasses
import json

import numpy as np
import pytest

from rlinterp.activations.config import SamplingConfig
from rlinterp.errors import RlinterpError
from rlinterp.fidelity import FidelityConfig, FidelityResult, figures, organism_task, run_fidelity
from rlinterp.models.series import ModelSeries
from rlinterp.organism import build_organism
from tests.conftest import make_micro_config

CFG = FidelityConfig(
    sampling=SamplingConfig(samples_per_prompt=2, max_new_tokens=12),
    max_prompts=4,
    answer_tokens=4,
    continue_tokens=8,
    n_bootstrap=20,
)


@pytest.fixture(scope="module")
def micro_plain(tmp_path_factory):
    return build_organism(tmp_path_factory.mktemp("organism") / "plain", config=make_micro_config(), seed=0)


def test_a_reasoning_organism_has_controls_and_gold_beside_the_proxy(micro_reasoning):
    assert micro_reasoning.manifest["world"] == "reasoning"
    assert set(micro_reasoning.controls) == {"faithful", "decorative"}
    assert all((p / "model.safetensors").is_file() for p in micro_reasoning.controls.values())
    behaviour = micro_reasoning.behaviour()
    assert {"reward", "gold", "accuracy"} <= set(behaviour.columns)
    assert (behaviour["gold"] <= behaviour["accuracy"] + 1e-9).all()  # gold also needs the reasoning
    log = micro_reasoning.root / "weak" / "log.parquet"
    import pandas as pd

    assert {"reward", "gold"} <= set(pd.read_parquet(log).columns)


def test_every_metric_per_step_and_the_base_against_itself(micro_reasoning, tmp_path):
    series = ModelSeries.from_organism(micro_reasoning.root, "strong")
    task = organism_task(micro_reasoning, "strong")
    result = run_fidelity(series, task, tmp_path / "fid", CFG)
    steps = result.steps
    assert list(steps["step"]) == [0, 1, 2]
    for column in ("proxy", "gold", "gap", "kl", "new_rate", "agreement_rate", "wrong_rate", "consistency"):
        assert {column, f"{column}_lo", f"{column}_hi"} <= set(steps.columns), column
    base = steps.iloc[0]
    assert base["kl"] == 0.0 and base["kl_lo"] == 0.0  # the base against itself
    shifts = [
        c for c in steps.columns if c.startswith("persona_shift_") and not c.endswith(("_lo", "_hi", "_n"))
    ]
    assert len(shifts) == 3 and all(base[c] == 0.0 for c in shifts)
    assert set(result.legibility["legibility"]) == {"template", "drift", "unreadable"}
    assert result.legibility.groupby("step")["count"].sum().eq(8).all()  # 4 prompts x 2 samples
    assert json.loads((tmp_path / "fid" / "manifest.json").read_text())["kind"] == "rlinterp.fidelity"
    drawn = result.figures()
    assert set(drawn) == {"fidelity", "early_curve", "rewards", "gao", "drift", "persona_shift"}
    # the micro model's text is rarely readable: a figure draws exactly the metrics measured
    fidelity_lines = {"early_aoc", "mistake_follows", "reasoning_share", "consistency", "filler_gap"}
    measured = {c for c in fidelity_lines if c in steps and steps[c].notna().any()}
    assert {t.name for t in drawn["fidelity"].data} == {
        name for column, name in figures.FIDELITY_LINES if column in measured
    }
    assert all(len(drawn[name].data) for name in ("rewards", "gao", "drift", "persona_shift"))
    again = run_fidelity(series, task, tmp_path / "fid", CFG)  # finished: reused as it is
    assert again.steps.equals(FidelityResult.load(tmp_path / "fid").steps)
    with pytest.raises(RlinterpError, match="other inputs"):
        run_fidelity(series, task, tmp_path / "fid", dataclasses.replace(CFG, seed=1))


def test_a_yes_no_organism_skips_the_reasoning_metrics_with_the_reason(micro_plain, tmp_path):
    series = ModelSeries.from_organism(micro_plain.root, "weak")
    result = run_fidelity(series, organism_task(micro_plain, "weak"), tmp_path / "fid", CFG)
    skipped = result.summary["skipped"]
    reasoning = {"early", "mistake", "filler", "patching", "consistency"}
    assert reasoning <= set(skipped) and all("state no reasoning" in skipped[m] for m in reasoning)
    assert "too few persona texts" in skipped["persona"]  # the micro organism writes 4 per persona
    assert "early_aoc" not in result.steps and np.isfinite(result.steps["gold"]).all()
    assert any("skipped" in line for line in result.reading())


def test_an_interrupted_run_resumes_from_its_finished_checkpoints(micro_reasoning, tmp_path, monkeypatch):
    from rlinterp.fidelity import analysis

    series = ModelSeries.from_organism(micro_reasoning.root, "weak")
    task = organism_task(micro_reasoning, "weak")
    out = tmp_path / "fid"
    measured = []
    original = analysis.reasoning_rows

    def dies_at_the_last(model, tokenizer, task, samples, cfg):
        measured.append(model)
        if len(measured) == len(series):
            raise KeyboardInterrupt
        return original(model, tokenizer, task, samples, cfg)

    monkeypatch.setattr(analysis, "reasoning_rows", dies_at_the_last)
    with pytest.raises(KeyboardInterrupt):
        run_fidelity(series, task, out, CFG)
    assert not (out / "manifest.json").exists()
    measured.clear()
    monkeypatch.setattr(analysis, "reasoning_rows", lambda *a: measured.append(a[0]) or original(*a))
    resumed = run_fidelity(series, task, out, CFG)
    assert len(measured) == 1  # only the checkpoint that had not finished
    fresh = run_fidelity(series, task, tmp_path / "fresh", CFG)
    assert resumed.steps.equals(fresh.steps)


def test_a_prompt_outside_the_vocabulary_is_refused_before_the_claim(micro_plain, tmp_path):
    """As every command's prompts: a character the checkpoints' tokenizer reads only as its
    unknown token is one line naming the prompt, and nothing is written."""
    series = ModelSeries.from_organism(micro_plain.root, "weak")
    task = organism_task(micro_plain, "weak")
    prompts = tuple(prompt + "\u2248" for prompt in task.prompts)
    refused = r"prompt 1 .* holds '≈', which the checkpoints' tokenizer does not know"
    with pytest.raises(RlinterpError, match=refused):
        run_fidelity(series, dataclasses.replace(task, prompts=prompts), tmp_path / "fid", CFG)
    assert not (tmp_path / "fid").exists()
