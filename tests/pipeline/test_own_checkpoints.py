"""``rlinterp run`` on your own checkpoints, driven as README shows it: a TRL run folder of
LoRA adapters (``--series runs/grpo-lora``) and full-weight checkpoint folders (``--series
BASE CKPT...``), through every stage, with persona-labelled texts and a behaviour metric of
the user's own, checking what the report says (the answer per series, every section, no
stage that skipped).

The models are tiny random-init Llamas (``tests.own_checkpoints``), so the budgets below
are small; what is checked is that every stage ran on these checkpoints and that the report
and the terminal summary state the answer."""

import json
import re
from html import escape
from pathlib import Path

import pandas as pd
import pytest

from rlinterp.cli import main
from rlinterp.pipeline.stages import NO_REASONING

from ..own_checkpoints import STEPS, build_series

SECTIONS = (
    "summary",
    "weights",
    "activations",
    "outputs",
    "dictionaries",
    "features",
    "tracking",
    "persona",
    "circuits",
    "fidelity",
)
BUDGETS = [
    "--harvest-batch-size", "8",
    "--dictionaries-d-sae", "32",
    "--dictionaries-k", "4",
    "--dictionaries-n-tokens", "4000",
    "--dictionaries-batch-size", "64",
    "--dictionaries-cards", "4",
    "--tracking-independent-tokens", "2000",
    "--tracking-stagewise-n-tokens", "1000",
    "--tracking-sampling-samples-per-prompt", "4",
    "--tracking-sampling-max-new-tokens", "16",
    "--selection-index-n-bootstrap", "20",
    "--selection-n-random", "1",
    "--circuits-exact-prompts", "4",
    "--circuits-max-prompts", "4",
]  # fmt: skip
"""Small enough for a few seconds a stage on one core; every stage still runs."""


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    return build_series(tmp_path_factory.mktemp("own"))


def _run(capsys, argv: list[str]) -> str:
    code = main(["run", *argv, *BUDGETS])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _check_report(out: Path, name: str, adapters: bool) -> None:
    """Every stage ran on the series (none skipped it but fidelity, which needs answers that
    state their reasoning and says so), and the report, report.md and the stage markers say
    so."""
    for stage in ("diff", "dictionaries", "tracking", "selection", "circuits", "fidelity"):
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    for stage in ("tracking", "selection", "circuits"):
        assert json.loads((out / stage / "skipped.json").read_text()) == {}, stage
    assert json.loads((out / "fidelity" / "skipped.json").read_text()) == {name: NO_REASONING}
    assert (out / "diff" / name / "manifest.json").is_file()
    checkpoints = json.loads((out / "diff" / name / "manifest.json").read_text())["checkpoints"]
    assert [c["step"] for c in checkpoints] == [0, *STEPS]
    assert [c["adapter"] for c in checkpoints] == [False, *([adapters] * len(STEPS))]
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in html, section
    skipped = escape(f"{name}: not analysed ({NO_REASONING})")
    assert html.count("not analysed") == 1 and skipped in html  # fidelity's, with its reason
    markdown = (out / "report.md").read_text()
    answer = markdown.split("## Answer (selection or new computation, per regime)")[1]
    line = re.search(r"^- `(.*)`$", answer, re.MULTILINE)
    assert line is not None and line.group(1).startswith(f"{name}: ")
    # the answer names a reading, the interval of the last step and the signals
    assert re.search(r"(selection|new computation|undecided)", line.group(1))
    assert f"last step {STEPS[-1]}" in line.group(1) or f"step {STEPS[0]}" in line.group(1)
    assert "signals of new computation:" in line.group(1)
    assert f"<li>{line.group(1)}</li>" in html.replace("&#x27;", "'")


def _inputs(own: dict[str, Path], out: Path) -> list[str]:
    """What a user gives besides the series: their texts and their behaviour metric."""
    return [
        "--out",
        str(out),
        "--prompts-source",
        str(own["texts"]),
        "--circuits-prompts",
        str(own["behaviour"]),
    ]


@pytest.mark.slow
def test_a_trl_lora_run_folder_through_every_stage(capsys, own, tmp_path):
    out = tmp_path / "grpo-lora"
    # the base is the one its adapters name in adapter_config.json
    printed = _run(capsys, ["--series", str(own["run"]), "--series-name", "grpo-lora", *_inputs(own, out)])
    _check_report(out, "grpo-lora", adapters=True)
    assert re.search(r"^grpo-lora: ", printed, re.MULTILINE), printed
    assert printed.rstrip().endswith(f"report: {out / 'report.html'}")
    # the weights diff records the adapters' rank on the weights they update, and only there
    weights = pd.read_parquet(out / "diff" / "grpo-lora" / "weights.parquet")
    updated = weights["parameter"].str.contains("q_proj|v_proj|down_proj")
    assert (weights.loc[updated, "adapter_rank"] == 2).all()
    assert weights.loc[~updated, "adapter_rank"].isna().all()


@pytest.mark.slow
def test_full_weight_checkpoint_folders_through_every_stage(capsys, own, tmp_path):
    out = tmp_path / "full"
    series = ["--series", str(own["base"]), *(str(own["full"] / f"step-{s}") for s in STEPS)]
    printed = _run(capsys, [*series, *_inputs(own, out)])
    _check_report(out, "checkpoints", adapters=False)
    assert re.search(r"^checkpoints: ", printed, re.MULTILINE), printed
    # the same command again resumes every stage and says the same
    assert _run(capsys, [*series, *_inputs(own, out)]) == printed
