"""What the world does to a run directory, and what ``rlinterp run`` makes of it: weights
edited in place after a run finished (every kind of series: checkpoint folders, a TRL run of
adapters, an organism), a full disk or a read-only or forbidden folder in the middle of a
run, a truncated progress or claim file, and ``rlinterp figures`` asked to write somewhere.

Each is one line on stderr, never results of other inputs returned as current, nothing
half-written taken as finished on the rerun, and nothing deleted."""

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from rlinterp.cli import main

from ..conftest import tree_hashes
from ..own_checkpoints import STEPS, build_series

QUICK = [
    "--harvest-batch-size", "8",
    "--dictionaries-d-sae", "16",
    "--dictionaries-k", "2",
    "--dictionaries-n-tokens", "1024",
    "--dictionaries-batch-size", "32",
    "--dictionaries-cards", "2",
    "--no-tracking-enabled",
    "--no-selection-enabled",
    "--no-circuits-enabled",
    "--no-progress",
]  # fmt: skip
"""The diff and dictionaries stages only, on tiny budgets: every fault below happens there."""


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    return build_series(tmp_path_factory.mktemp("own"))


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", *argv, *QUICK])
    return code, capsys.readouterr().err


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("rlinterp run: error: ") and "Traceback" not in err, err
    return line


def _edit_in_place(weights: Path) -> None:
    """Add 1 to one tensor of a safetensors file, at the same path (a user's "fix")."""
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights), metadata={"format": "pt"})


# -- weights changed in place ---------------------------------------------------------------


def _series_kinds(own: dict[str, Path], organism: Path) -> dict[str, tuple[list[str], Path, str]]:
    """Kind -> (--series arguments, the weight file to edit, the series/label it changes)."""
    last = STEPS[-1]
    return {
        "folders": (
            [str(own["base"]), *(str(own["full"] / f"step-{s}") for s in STEPS)],
            own["full"] / f"step-{last}" / "model.safetensors",
            f"checkpoints/step-{last}",
        ),
        "trl-adapters": (
            [str(own["run"])],
            own["run"] / f"checkpoint-{last}" / "adapter_model.safetensors",
            f"checkpoints/checkpoint-{last}",
        ),
        "organism": ([str(organism)], organism / "weak" / "step-2" / "model.safetensors", "weak/weak-step-2"),
    }


@pytest.mark.slow
def test_weights_edited_in_place_are_noticed_from_the_files(capsys, own, tmp_path, micro_config):
    """For every kind of series, the rerun of a finished run whose checkpoint file was edited
    is refused naming the checkpoint (the organism's manifest still records the old hash: the
    check reads the files); --force computes it again on the new weights."""
    import shutil

    from rlinterp import build_organism

    organism = build_organism(tmp_path / "org", config=micro_config).root
    recorded = json.loads((organism / "manifest.json").read_text())["weights_sha256"]
    for kind, (series, weights, changed) in _series_kinds(own, organism).items():
        copy = tmp_path / f"{kind}-weights.bak"
        shutil.copy2(weights, copy)
        out = tmp_path / kind
        argv = ["--series", *series, "--out", str(out)]
        prompts = [] if kind == "organism" else ["--prompts-source", str(own["texts"])]
        code, err = _run(capsys, [*argv, *prompts])
        assert code == 0, err
        before = tree_hashes(out)
        _edit_in_place(weights)
        try:
            line = _one_line(*_run(capsys, [*argv, *prompts]))
            assert "holds results for other weights at the same checkpoint paths" in line, kind
            assert f"(changed: {changed})" in line, line
            assert tree_hashes(out) == before, kind  # nothing rewritten as if current
            code, err = _run(capsys, [*argv, *prompts, "--force"])
            assert code == 0, err
            kl = pd.read_parquet(out / "diff" / changed.split("/")[0] / "outputs.parquet")
            assert kl["kl_mean"].notna().all()
        finally:
            shutil.copy2(copy, weights)  # the fixture's series stay as built for other tests
    assert json.loads((organism / "manifest.json").read_text())["weights_sha256"] == recorded


# -- OS errors ------------------------------------------------------------------------------


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    return {
        str(p.relative_to(out)): pd.read_parquet(p)
        for p in sorted(out.rglob("*.parquet"))
        if "activations" not in p.parts
    }


@pytest.fixture(scope="module")
def clean(own, tmp_path_factory) -> tuple[list[str], Path, int]:
    """One uninterrupted run: its arguments (without --out), directory, and how many files
    it wrote (renamed into place)."""
    argv = ["--series", str(own["base"]), *(str(own["full"] / f"step-{s}") for s in STEPS)]
    argv += ["--prompts-source", str(own["texts"])]
    out = tmp_path_factory.mktemp("clean") / "run"
    writes = []
    real = os.replace

    def counting(src, dst, *args, **kwargs):
        writes.append(dst)
        return real(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", counting)
        assert main(["run", *argv, "--out", str(out), *QUICK]) == 0
    return argv, out, sum(str(out) in str(d) for d in writes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "at"),
    [
        (errno.ENOSPC, "first"),  # the claim file itself
        (errno.ENOSPC, "middle"),
        (errno.ENOSPC, "last"),  # the run's manifest, after every other output
        (errno.EROFS, "first"),
        (errno.EACCES, "middle"),
    ],
)
def test_an_os_error_is_one_line_and_the_rerun_completes_the_same(capsys, clean, tmp_path, error, at):
    argv, clean_out, n_writes = clean
    fail_at = {"first": 1, "middle": n_writes // 2, "last": n_writes}[at]
    out = tmp_path / "run"
    count, real = 0, os.replace

    def failing(src, dst, *args, **kwargs):
        nonlocal count
        if str(out) in str(dst):
            count += 1
            if count == fail_at:
                raise OSError(error, os.strerror(error), str(dst))
        return real(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", failing)
        line = _one_line(*_run(capsys, [*argv, "--out", str(out)]))
    assert f": {os.strerror(error)}; " in line and "cannot write " in line
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    assert not (out / "manifest.json").is_file(), "a failed run looks finished"
    code, err = _run(capsys, [*argv, "--out", str(out)])
    assert code == 0, err
    mine, theirs = _tables(out), _tables(clean_out)
    assert mine.keys() == theirs.keys()
    for name, table in theirs.items():
        pd.testing.assert_frame_equal(mine[name], table, check_exact=False, rtol=1e-5, obj=name)


# -- damaged progress and claim files -------------------------------------------------------


@pytest.mark.parametrize(
    "damaged",
    ["stages/diff.json", "stages/dictionaries.json", ".run.json", "diff/checkpoints/manifest.json"],
)
def test_a_truncated_progress_or_claim_file_is_one_line_and_deletes_nothing(capsys, clean, tmp_path, damaged):
    import shutil

    argv, clean_out, _ = clean
    out = tmp_path / "run"
    shutil.copytree(clean_out, out)
    assert _run(capsys, [*argv, "--out", str(out)])[0] == 0  # the copy records its own path
    data = (out / damaged).read_bytes()
    (out / damaged).write_bytes(data[: len(data) // 2])
    before = tree_hashes(out)
    line = _one_line(*_run(capsys, [*argv, "--out", str(out)]))
    assert f"{out / damaged} is not valid JSON" in line, line
    assert tree_hashes(out) == before


# -- rlinterp figures -----------------------------------------------------------------------


@pytest.mark.slow
def test_figures_write_only_into_a_figure_folder(capsys, clean, tmp_path):
    import shutil

    pytest.importorskip("kaleido")
    if shutil.which("chromium") is None:
        pytest.skip("static export needs Chromium")
    _, clean_out, _ = clean
    run = tmp_path / "run"
    shutil.copytree(clean_out, run)
    before = tree_hashes(run)
    assert main(["figures", str(run), "--format", "svg"]) == 0
    written = {k for k in tree_hashes(run) if k not in before}
    assert written and all(k.startswith("figures/") for k in written)
    assert {k: v for k, v in tree_hashes(run).items() if k in before} == before
    assert main(["figures", str(run), "--format", "pdf"]) == 0  # an export replaces the last
    assert {p.suffix for p in (run / "figures").iterdir() if not p.name.startswith(".")} == {".pdf", ".json"}
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "draft.tex").write_text("mine")
    capsys.readouterr()
    assert main(["figures", str(run), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty and holds no rlinterp figure folder" in err
    assert [p.name for p in mine.iterdir()] == ["draft.tex"]
    assert main(["figures", str(run), "--out", str(run)]) == 2  # the run directory itself
    assert "holds a finished run, not a figure folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(clean_out, unfinished)
    (unfinished / "manifest.json").unlink()
    assert main(["figures", str(unfinished)]) == 2
    assert "unfinished" in capsys.readouterr().err and not (unfinished / "figures").exists()
