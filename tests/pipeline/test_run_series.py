"""What ``rlinterp run --series`` and ``[series]`` accept: every form ``rlinterp diff``
takes, with the same resolution; options that contradict the series and names that cannot
be a series are refused before anything is written; a refused or failed start leaves
``--out`` as it was found."""

import json
from pathlib import Path

import pytest

from rlinterp.cli import main
from rlinterp.errors import RlinterpError
from rlinterp.pipeline.config import config_from_dict, load_config

from ..conftest import random_checkpoints


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:  # argparse's errors exit, ours return
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _printed(capsys, tmp_path, argv) -> object:
    assert main(["run", *argv, "--print-config"]) == 0
    (tmp_path / "printed.toml").write_text(capsys.readouterr().out)
    return load_config(tmp_path / "printed.toml")


def test_series_takes_every_form_diff_takes(capsys, tmp_path):
    run_dir = tmp_path / "runs" / "grpo"
    for name in ("checkpoint-5", "checkpoint-10"):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "adapter_config.json").write_text("{}")
    series = _printed(capsys, tmp_path, ["--series", str(run_dir)]).series
    assert series.organism is None and series.checkpoints == (str(run_dir),)
    folders = [str(run_dir / "checkpoint-5"), str(run_dir / "checkpoint-10")]
    series = _printed(capsys, tmp_path, ["--series", *folders, "--series-base", "b"]).series
    assert series.checkpoints == tuple(folders) and series.base == "b"
    # one path that is no checkpoint and no run directory: an organism, built there if missing
    series = _printed(capsys, tmp_path, ["--series", str(tmp_path / "new-organism")]).series
    assert series.organism == str(tmp_path / "new-organism") and series.checkpoints == ()


def test_series_replaces_an_organism_config(capsys, tmp_path):
    """A config file's organism settings do not apply to checkpoints given with --series,
    but options typed beside it are checked against it."""
    (tmp_path / "tiny.toml").write_text('[series]\norganism = "org"\npreset = "tiny"\nregimes = ["weak"]\n')
    argv = ["--config", str(tmp_path / "tiny.toml"), "--series", "a", "b"]
    series = _printed(capsys, tmp_path, argv).series
    assert (series.checkpoints, series.preset, series.regimes) == (("a", "b"), "default", ())
    err = _one_line_error(capsys, ["run", "--series", "a", "b", "--series-regimes", "weak", "--print-config"])
    assert "series.regimes applies to an organism, but the series is checkpoints" in err


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ({"checkpoints": ["a", "b"], "preset": "tiny"}, "series.preset applies to an organism"),
        ({"checkpoints": ["a", "b"], "seed": 3}, "series.seed applies to an organism"),
        ({"checkpoints": ["a", "b"], "regimes": ["weak"]}, "series.regimes applies to an organism"),
        ({"organism": "o", "base": "b"}, "series.base applies to checkpoints"),
        ({"organism": "o", "name": "mine"}, "series.name names a checkpoint series"),
        ({"checkpoints": ["a"], "steps": "every"}, "series.steps 'every' is neither every:<k>"),
        ({"checkpoints": ["a"], "name": "base"}, "is what every series calls its base model"),
        ({"checkpoints": ["a"], "name": "a/b"}, "is not a folder name"),
        ({"checkpoints": ["a"], "name": ".hidden"}, "is not a folder name"),
        ({"checkpoints": ["a"], "name": " "}, "is empty"),
        ({"checkpoints": ["a"], "name": "a\nb"}, "holds a control character"),
    ],
)
def test_an_option_that_contradicts_the_series_is_refused(series, message):
    with pytest.raises(RlinterpError, match=message):
        config_from_dict({"series": series})


def test_toml_empty_strings_mean_none():
    series = config_from_dict({"series": {"checkpoints": ["a"], "base": "", "steps": ""}}).series
    assert series.base is None and series.steps is None


@pytest.mark.parametrize("name", ["grpo-lora", "my run", "ünï-code", "1st.try", "<b>&amp;"])
def test_a_name_a_user_can_type_is_a_series(name):
    assert config_from_dict({"series": {"checkpoints": ["a"], "name": name}}).series.name == name


def test_diff_options_that_contradict_the_series_are_refused(capsys, tmp_path):
    folders = random_checkpoints(tmp_path)
    capsys.readouterr()  # the checkpoints' own save bars
    argv = ["diff", "--series", str(folders["base"]), str(folders["step-1"]), "--prompts", "p.txt"]
    err = _one_line_error(capsys, [*argv, "--out", str(tmp_path / "o"), "--regime", "weak"])
    assert "--regime weak picks a regime of an organism" in err
    assert not (tmp_path / "o").exists()


# -- a refused start leaves --out as it was ----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    folders = random_checkpoints(root)
    (root / "prompts.txt").write_text("".join(f"the quick brown fox {i}\n" for i in range(8)))
    return {**folders, "prompts": root / "prompts.txt"}


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "empty"])
def test_a_run_refused_after_its_claim_leaves_out_as_found(capsys, tmp_path, existing):
    """The organism to build lies in a folder of someone else's files: refused before the
    run claims (or, from Python, before anything computes), and --out is as it was."""
    out = tmp_path / "deep" / "run"
    if existing:
        out.mkdir(parents=True)
    foreign = tmp_path / "org"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, ["run", "--series", str(foreign), "--out", str(out)])
    assert "holds no rlinterp organism" in err
    assert out.is_dir() == existing and (not existing or not any(out.iterdir()))
    assert (tmp_path / "deep").exists() == existing


def test_a_diff_failing_before_it_computes_leaves_out_as_found(capsys, tmp_path, checkpoints):
    """A hook the models do not have is found once the diff has claimed --out (its store
    checks hooks on the base model): the claim files go again."""
    out = tmp_path / "diff"
    argv = ["diff", "--series", str(checkpoints["base"]), str(checkpoints["step-1"])]
    argv += ["--prompts", str(checkpoints["prompts"]), "--out", str(out)]
    argv += ["--hooks", "blocks.7.hook_resid_post"]
    err = _one_line_error(capsys, argv)
    assert "unknown hook(s) ['blocks.7.hook_resid_post']" in err
    assert not out.exists()


def test_kept_as_found_keeps_what_was_computed(tmp_path):
    """Only claim files (and their folders) are undone; a partial result stays, and a
    directory that held something before is never touched."""
    from rlinterp.core import rundir

    out = tmp_path / "a"
    with pytest.raises(KeyboardInterrupt), rundir.kept_as_found(out):
        rundir.claim(out, rundir.DIFF, {"x": 1}, ["activations"])
        (out / "activations").mkdir()
        (out / "activations" / "shard.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert (out / "activations" / "shard.safetensors").is_file()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("mine")
    with pytest.raises(RlinterpError), rundir.kept_as_found(tmp_path / "b"):
        rundir.claim(tmp_path / "b", rundir.DIFF, {"x": 1}, ["activations"])
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["mine.txt"]


# -- --texts organism and friends work with any series of an organism's models -----------------


def test_organism_texts_come_from_the_organism_the_checkpoints_lie_in(tmp_path, micro_config):
    from rlinterp import build_organism
    from rlinterp.activations.prompts import PromptSet
    from rlinterp.models.spec import SeriesSpec

    organism = build_organism(tmp_path / "org", config=micro_config)
    texts = PromptSet.from_organism(organism.root)
    for series in [
        (str(organism.root / "weak"),),  # a regime's folder, as a run directory
        (str(organism.base), str(organism.root / "weak" / "step-2")),
        (str(organism.root / "manifest.json"),),
    ]:
        assert SeriesSpec(series).require_organism("'organism' as prompts") == organism.root
    regime = SeriesSpec((str(organism.root / "strong"),))
    assert PromptSet.from_organism(regime.require_organism("x")) == texts
    with pytest.raises(RlinterpError, match="these checkpoints come from none; give a file instead"):
        SeriesSpec((str(tmp_path / "elsewhere" / "a"), str(organism.base))).require_organism("'organism'")
    manifest = json.loads((organism.root / "manifest.json").read_text())
    assert manifest["kind"] == "rlinterp.organism"


@pytest.mark.parametrize(
    ("name", "message"), [("base", "is the base model's folder"), ("a/b", "is not a folder name")]
)
def test_an_organism_regime_is_named_as_a_folder(name, message):
    from rlinterp.organism.config import RegimeConfig

    with pytest.raises(RlinterpError, match=f"regime name {name!r} {message}"):
        RegimeConfig(name, lr=1e-3, kl_coef=0.0, shortcut_bonus=0.0, checkpoint_steps=(0, 1))
    assert RegimeConfig("grpo-lora", lr=1e-3, kl_coef=0.0, shortcut_bonus=0.0, checkpoint_steps=(0, 1))
