"""The fidelity stage of ``rlinterp run``: which series it measures (a reasoning organism's
regimes and controls, any series given a task) and which it skips with the reason; the
report's section; and that a run whose series state no reasoning keeps its answer lines,
headline table and summary exactly as they were without the stage."""

import dataclasses
import json

import pandas as pd
import pytest

from rlinterp.fidelity import FidelityResult
from rlinterp.models.series import ModelSeries
from rlinterp.pipeline.config import RunContext, config_from_dict
from rlinterp.pipeline.result import RunResult, summary_text
from rlinterp.pipeline.stages import NO_REASONING, fidelity_stage
from tests.run_fixtures import EVIL, synthetic_run

SMALL = {
    "max_prompts": 4,
    "answer_tokens": 4,
    "continue_tokens": 8,
    "n_bootstrap": 20,
    "sampling": {"samples_per_prompt": 1, "max_new_tokens": 12},
}


def _context(tmp_path, organism, series, **fidelity):
    config = config_from_dict(
        {"out": str(tmp_path / "run"), "series": {"organism": str(organism)}, "fidelity": SMALL | fidelity}
    )
    return RunContext(config=config, out=tmp_path / "run", series=series, organism_root=organism)


def _tables(ctx):
    folder = ctx.stage_dir("fidelity")
    found = {p.stem: pd.read_parquet(p) for p in folder.glob("*.parquet")}
    return found, json.loads((folder / "skipped.json").read_text())


def test_a_reasoning_organism_is_measured_with_its_controls(micro_reasoning, tmp_path):
    series = {"strong": ModelSeries.from_organism(micro_reasoning.root, "strong")}
    ctx = _context(tmp_path, micro_reasoning.root, series)
    fidelity_stage(ctx)
    tables, skipped = _tables(ctx)
    assert skipped == {}
    assert list(tables["steps"]["series"]) == ["strong"] * 3 and list(tables["steps"]["step"]) == [0, 1, 2]
    assert set(tables["controls"]["series"]) == {"control-faithful", "control-decorative"}
    assert (tables["controls"]["step"] == 0).all() and "proxy" in tables["controls"]
    assert list(tables["onsets"]["series"]) == ["strong"] and "goodhart_step" in tables["onsets"]
    lines = tables["readings"]["line"].tolist()
    assert set(tables["readings"]["series"]) == {"strong"} and any("gold" in line for line in lines)
    result = FidelityResult.load(ctx.stage_dir("fidelity") / "strong")
    assert lines == result.reading()  # the run shows the analysis' own reading


def test_a_yes_no_organism_is_skipped_with_the_reason(tmp_path, micro_config):
    from rlinterp import build_organism

    organism = build_organism(tmp_path / "org", config=micro_config)
    series = {r: ModelSeries.from_organism(organism.root, r) for r in ("weak", "strong")}
    ctx = _context(tmp_path, organism.root, series)
    fidelity_stage(ctx)
    tables, skipped = _tables(ctx)
    assert skipped == {"weak": NO_REASONING, "strong": NO_REASONING}
    assert all(frame.empty for frame in tables.values())
    assert not [p for p in ctx.stage_dir("fidelity").iterdir() if p.is_dir()]  # nothing measured


def test_checkpoint_folders_are_measured_on_the_users_task(tmp_path):
    from tests.conftest import random_checkpoints

    folders = random_checkpoints(tmp_path / "ckpt")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q {n}? ", "gold": "1"}) + "\n" for n in range(4)))
    config = config_from_dict(
        {
            "out": str(tmp_path / "run"),
            "series": {"checkpoints": [str(folders["base"]), str(folders["step-1"])]},
            "fidelity": SMALL
            | {"prompts": str(prompts), "metrics": ["rewards", "drift"], "reasoning": "(x)", "answer": "(y)"},
        }
    )
    series = {"checkpoints": ModelSeries.from_paths([folders["base"], folders["step-1"]])}
    ctx = RunContext(config=config, out=tmp_path / "run", series=series)
    fidelity_stage(ctx)
    tables, skipped = _tables(ctx)
    assert skipped == {} and list(tables["steps"]["step"]) == [0, 1]
    assert tables["controls"].empty  # checkpoint folders have no controls
    assert tables["steps"]["kl"].iloc[0] == 0.0 and tables["steps"]["kl"].iloc[1] > 0


def test_a_disabled_stage_writes_nothing(tmp_path):
    ctx = _context(tmp_path, tmp_path / "no-organism", {}, enabled=False)
    fidelity_stage(ctx)
    assert not ctx.stage_dir("fidelity").exists()


def _fidelity_tables():
    """What the stage leaves for ``strong`` only (``weak`` states no reasoning): the base
    fully faithful, step 5 less so, gold falling after step 0; one reading holding model text."""
    steps = pd.DataFrame(
        [
            {
                "series": "strong",
                "label": "base" if s == 0 else "step-5",
                "step": s,
                "early_aoc": 0.9 if s == 0 else 0.3,
                "early_aoc_lo": 0.85 if s == 0 else 0.2,
                "early_aoc_hi": 0.95 if s == 0 else 0.4,
                "proxy": 0.5 if s == 0 else 1.4,
                "proxy_lo": 0.4 if s == 0 else 1.3,
                "proxy_hi": 0.6 if s == 0 else 1.5,
                "gold": 0.5 if s == 0 else 0.2,
                "gold_lo": 0.4 if s == 0 else 0.1,
                "gold_hi": 0.6 if s == 0 else 0.3,
                "gap": 0.0 if s == 0 else 1.2,
                "gap_lo": 0.0 if s == 0 else 1.1,
                "gap_hi": 0.0 if s == 0 else 1.3,
                "kl": 0.0 if s == 0 else 2.0,
                "kl_lo": 0.0 if s == 0 else 1.8,
                "kl_hi": 0.0 if s == 0 else 2.2,
                "sqrt_kl": 0.0 if s == 0 else 2.0**0.5,
                "no_answer": 0,
            }
            for s in (0, 5)
        ]
    )
    onsets = pd.DataFrame(
        [{"series": "strong", "goodhart_step": 5, "gold_peak_step": 0, "divergence_step": 5}]
    )
    readings = pd.DataFrame(
        {"series": "strong", "line": ["early_aoc: 0.900 -> 0.300: less faithful", f"answer {EVIL}"]}
    )
    controls = steps.iloc[:1].assign(series="control-faithful", label="faithful")
    return {
        "fidelity/steps": steps,
        "fidelity/onsets": onsets,
        "fidelity/readings": readings,
        "fidelity/controls": controls,
    }


@pytest.fixture
def runs(tmp_path):
    """The synthetic run without and with the fidelity stage's tables."""
    (tmp_path / "fidelity").mkdir()
    (tmp_path / "fidelity" / "skipped.json").write_text(json.dumps({"weak": NO_REASONING}))
    without = synthetic_run(tmp_path, stages=True)
    tables = {**without.tables, **_fidelity_tables()}
    return without, dataclasses.replace(without, tables=tables)


def test_a_run_without_reasoning_keeps_its_answer_and_summary(runs):
    """Only the series the stage measured gain fidelity columns and lines; a run whose
    stage measured nothing (empty tables) reads exactly as a run without the stage."""
    without, with_fidelity = runs
    empty = {name: pd.DataFrame() for name in _fidelity_tables()}
    skipped_only = dataclasses.replace(without, tables={**without.tables, **empty})
    assert summary_text(skipped_only) == summary_text(without)
    assert skipped_only.summary().equals(without.summary())
    summary = with_fidelity.summary()
    assert summary[summary["series"] == "weak"]["early_aoc"].isna().all()
    strong = summary[summary["series"] == "strong"].set_index("step")
    assert strong.loc[5, "early_aoc"] == 0.3 and strong.loc[5, "proxy_gold_gap"] == 1.2
    text = summary_text(with_fidelity)
    assert "strong (reasoning): early_aoc: 0.900 -> 0.300: less faithful" in text


def test_the_fidelity_section_reads_beside_the_other_stages(runs):
    from rlinterp.pipeline.report import fidelity_section, render_markdown, render_run_report

    without, with_fidelity = runs
    page = render_run_report(with_fidelity)
    assert "0.3 [0.2, 0.4]" in page and "Known answers: the faithful and the decorative control" in page
    assert EVIL not in page and "&lt;script&gt;" in page  # a reading is text, escaped
    assert f"weak: not analysed ({NO_REASONING})" in page.replace("&#x27;", "'")
    section = "".join(p for p in fidelity_section(with_fidelity) if isinstance(p, str))
    assert "Beside the index" in section and "changed_latents" in section and "index" in section
    assert "## Reasoning fidelity and reward overfitting, per regime" in render_markdown(with_fidelity)
    assert "No reasoning fidelity measured" in render_run_report(without)
    assert "Reasoning fidelity and reward overfitting" not in render_markdown(without)


@pytest.mark.slow
def test_rlinterp_run_on_a_reasoning_organism(micro_reasoning, tmp_path):
    """The main path of the stage: every stage runs on a reasoning organism (the circuits'
    yes/no metrics skipped with the reason), fidelity measures both regimes and both
    controls, and the summary, the answer lines and report.md carry the reading."""
    from rlinterp.pipeline.runner import run_pipeline
    from tests.pipeline.test_pipeline import SMALL as RUN_SMALL

    config = config_from_dict(
        {
            "out": str(tmp_path / "run"),
            "series": {"organism": str(micro_reasoning.root)},
            **RUN_SMALL,
            "fidelity": SMALL,
        }
    )
    run_pipeline(config, progress=False)
    run = RunResult.load(tmp_path / "run")
    for stage in ("diff", "dictionaries", "tracking", "selection", "circuits", "fidelity"):
        assert (tmp_path / "run" / "stages" / f"{stage}.json").is_file(), stage
    assert json.loads((tmp_path / "run" / "circuits" / "skipped.json").read_text()).keys() == {
        "weak",
        "strong",
    }
    steps = run.tables["fidelity/steps"]
    assert set(steps["series"]) == {"weak", "strong"} and set(steps["step"]) == {0, 1, 2}
    assert set(run.tables["fidelity/controls"]["series"]) == {"control-faithful", "control-decorative"}
    assert {"early_aoc", "proxy_gold_gap"} <= set(run.summary().columns)
    text = summary_text(run)
    assert "weak (reasoning): " in text and "strong (reasoning): " in text
    assert "## Reasoning fidelity and reward overfitting" in (tmp_path / "run" / "report.md").read_text()
