"""The CLI: bad input gets one actionable line on stderr and exit status 2."""

import pytest

from rlinterp.cli import main


def _one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unknown_preset(capsys):
    err = _one_line_error(capsys, ["organism", "--preset", "huge"])
    assert "invalid choice: 'huge'" in err


def test_seed_must_be_an_integer(capsys):
    err = _one_line_error(capsys, ["organism", "--seed", "one"])
    assert "argument --seed: expected integer, got 'one'" in err


def test_unwritable_output(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    err = _one_line_error(capsys, ["organism", "--preset", "tiny", "--out", str(tmp_path / "file" / "x")])
    assert err.startswith("rlinterp organism: error: cannot write to")


def test_diff_needs_a_regime_for_an_organism(capsys, tmp_path, micro_config):
    from rlinterp import build_organism

    build_organism(tmp_path / "org", config=micro_config)
    err = _one_line_error(
        capsys,
        ["diff", "--series", str(tmp_path / "org"), "--prompts", "organism", "--out", str(tmp_path / "d")],
    )
    assert "say which regime to diff with --regime" in err


def test_diff_cli_writes_a_report(capsys, tmp_path, micro_config):
    from rlinterp import build_organism

    build_organism(tmp_path / "org", config=micro_config)
    argv = ["diff", "--series", str(tmp_path / "org"), "--regime", "strong", "--prompts", "organism"]
    assert main([*argv, "--out", str(tmp_path / "d"), "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "strong-step-2" in out and (tmp_path / "d" / "report.html").is_file()


def _commands():
    from rlinterp.cli import COMMANDS, DICTIONARIES

    return [[c.name] for c in COMMANDS] + [["dictionaries", c.name] for c in DICTIONARIES]


@pytest.mark.parametrize("argv", [[], ["dictionaries"], *_commands()], ids=" ".join)
def test_help_renders_for_every_command(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rlinterp {' '.join(argv)}".rstrip()) and "Traceback" not in out


def test_a_percent_sign_in_a_docstring_survives_argparse():
    import argparse
    from dataclasses import dataclass

    from rlinterp.core.options import add_options

    @dataclass(frozen=True)
    class Budget:
        share: float = 0.5
        """Keep 50% of the tokens (100%: all); ``%(prog)s`` is not a format."""

    parser = argparse.ArgumentParser(prog="x")
    add_options(parser, Budget)
    assert "Keep 50% of the tokens (100%: all); %(prog)s is not a format. (default: 0.5)" in " ".join(
        parser.format_help().split()
    )


def _parsed(argv):
    """The command dataclass ``main`` would build from ``argv``."""
    from rlinterp.cli import _parser
    from rlinterp.core.options import from_args

    args = _parser().parse_args(argv)
    return from_args(args.command.options, args, args.added)


def test_every_default_comes_from_the_configs():
    """Given only the required options, each command is its dataclass with its configs'
    own defaults: the parser holds no default of its own."""
    from rlinterp.commands import (
        CircuitsCommand,
        DiffCommand,
        ReadingsCommand,
        SelectionCommand,
        TrackCommand,
        TrainCommand,
    )
    from rlinterp.models.spec import SeriesSpec

    series = SeriesSpec(("base", "step-1"))
    given = ["--series", "base", "step-1", "--out", "o"]
    assert _parsed(["diff", *given, "--prompts", "p.txt"]) == DiffCommand(
        series=series, prompts="p.txt", out="o"
    )
    assert _parsed(["track", *given, "--dictionary", "d"]) == TrackCommand(
        series=series, dictionary="d", out="o"
    )
    assert _parsed(["selection", *given, "--texts", "t"]) == SelectionCommand(
        series=series, texts="t", out="o"
    )
    assert _parsed(["circuits", *given, "--metric", "m"]) == CircuitsCommand(
        series=series, metric="m", out="o"
    )
    assert _parsed(["readings", *given, "--prompts", "p.txt"]) == ReadingsCommand(
        series=series, prompts="p.txt", out="o"
    )
    train = ["dictionaries", "train", "--store", "s", "--method", "sae", "--hook", "h", "--out", "o"]
    assert _parsed(train) == TrainCommand(store="s", method="sae", hook="h", out="o")


def test_options_reach_nested_configs_and_say_none():
    given = ["--series", "b", "c", "--out", "o"]
    circuits = _parsed(["circuits", *given, "--metric", "m", "--exact-prompts", "none", "--batch-size", "4"])
    assert circuits.circuits.exact_prompts is None and circuits.circuits.batch_size == 4
    selection = _parsed(["selection", *given, "--texts", "t", "--index-n-bootstrap", "20", "--seed", "3"])
    assert (selection.selection.index.n_bootstrap, selection.selection.index.seed) == (20, 0)
    assert selection.selection.seed == 3
    track = _parsed(["track", *given, "--dictionary", "d", "--sampling-seed", "5", "--sources", "texts"])
    assert track.track.sampling.seed == 5 and track.track.sources == ("texts",)
    assert track.track.sampling.samples_per_prompt == 1  # the command's own budget, not the run's
    diff = _parsed(
        ["diff", *given, "--prompts", "p", "--hooks", "a", "b", "--executor", "ray", "--task-gpus", "1"]
    )
    assert diff.harvest.hooks == ("a", "b") and diff.executor.kind == "ray" and diff.executor.num_gpus == 1.0
    readings = _parsed(
        ["readings", *given, "--prompts", "p", "--amplify-sampling-seed", "2", "--label", "none"]
        + ["--readings", "pca", "topics", "--topics-checkpoints", "last"]
    )
    found = readings.readings
    assert found.amplify.sampling.seed == 2 and found.label is None and found.readings == ("pca", "topics")
    assert found.topics.checkpoints == "last" and found.amplify.checkpoints == "all"  # not the run's budget


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["circuits", "--exact-prompts", "0"], "exact_prompts must be positive or None"),
        (["diff", "--prompts", "p", "--steps", "every"], "--steps 'every' is neither every:<k> nor a list"),
        (["track", "--dictionary", "d", "--sources", "texts", "texts"], "sources must be distinct names"),
        (["readings", "--prompts", "p", "--readings", "patchscope"], "add 'pca' to readings"),
    ],
)
def test_a_config_error_is_one_line_before_anything_runs(capsys, argv, expected, tmp_path):
    extra = ["--metric", "m"] if argv[0] == "circuits" else []
    err = _one_line_error(capsys, [*argv, *extra, "--series", "b", "c", "--out", str(tmp_path / "o")])
    assert err.startswith(f"rlinterp {argv[0]}: error: ") and expected in err
    assert not (tmp_path / "o").exists()


def test_fidelity_options_come_from_its_configs():
    from rlinterp.commands import FidelityCommand
    from rlinterp.fidelity.config import FidelityConfig, TaskConfig
    from rlinterp.models.spec import SeriesSpec

    given = ["fidelity", "--series", "base", "step-1", "--out", "o"]
    assert _parsed(given) == FidelityCommand(series=SeriesSpec(("base", "step-1")), out="o")
    typed = _parsed(
        [
            *given,
            "--reasoning",
            "<t>(.*)</t>",
            "--answer",
            r"A: (\d)",
            "--step-pattern",
            r"\d+\.",
            "--sampling-seed",
            "3",
        ]
        + ["--metrics", "early", "rewards", "--n-bootstrap", "50"]
    )
    assert typed.task == TaskConfig(reasoning="<t>(.*)</t>", answer=r"A: (\d)", step=r"\d+\.")
    assert typed.fidelity.sampling.seed == 3 and typed.fidelity.metrics == ("early", "rewards")
    assert typed.fidelity.n_bootstrap == 50 and typed.fidelity.max_pairs == FidelityConfig.max_pairs


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--reasoning", "<t>(.*)</t>"], "give the reasoning regex and the answer regex together"),
        (["--reasoning", "<t>(.*", "--answer", "(x)"], "the reasoning regex '<t>(.*' does not compile"),
        (["--reasoning", "<t>.*</t>", "--answer", "(x)"], "needs a group"),
        (["--prompts", "p.txt"], "prompts 'p.txt' is not a .jsonl file"),
        (["--reasoning", "(x)", "--answer", "(y)", "--filler", "ab"], "filler must be one visible character"),
        (["--metrics", "early", "--max-prompts", "1"], "max_prompts must be at least 2"),
        ([], "these checkpoints come from no organism; give --prompts FILE.jsonl"),
    ],
)
def test_a_fidelity_task_error_is_one_line_before_anything_runs(capsys, tmp_path, extra, expected):
    folders = [str(tmp_path / "base"), str(tmp_path / "step-1")]
    err = _one_line_error(capsys, ["fidelity", "--series", *folders, "--out", str(tmp_path / "o"), *extra])
    assert err.startswith("rlinterp fidelity: error: ") and expected in err
    assert not (tmp_path / "o").exists()


def test_a_reward_script_that_fails_is_refused_before_anything_runs(capsys, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "Q: 1+1?\\nA: "}\n')
    (tmp_path / "r.py").write_text("def reward(prompt, response):\n    return 1 / len(response)\n")
    argv = ["fidelity", "--series", "b", "c", "--prompts", str(tmp_path / "p.jsonl")]
    err = _one_line_error(
        capsys, [*argv, "--reward-script", str(tmp_path / "r.py"), "--out", str(tmp_path / "o")]
    )
    assert "fails on the first prompt with an empty response (ZeroDivisionError" in err
    assert not (tmp_path / "o").exists()


def test_fidelity_cli_measures_own_checkpoints_and_writes_a_report(capsys, tmp_path):
    """Checkpoint folders and a task of the user's: every step measured, the report and the
    reading written; a finished analysis of the same inputs is reused."""
    import json

    from tests.conftest import random_checkpoints

    folders = random_checkpoints(tmp_path / "ckpt")
    rows = [{"prompt": f"q {n}? ", "gold": str(n % 3)} for n in range(6)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["fidelity", "--series", str(folders["base"]), str(folders["step-1"])]
    argv += ["--prompts", str(tmp_path / "p.jsonl"), "--reasoning", r"^(?P<reasoning>[^0-9]*)(?=\d)"]
    argv += ["--answer", r"(?P<answer>\d)", "--sampling-max-new-tokens", "12", "--n-bootstrap", "20"]
    argv += ["--metrics", "early", "consistency", "rewards", "drift", "--out", str(tmp_path / "f")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = (tmp_path / "f" / "report.html").read_text()
    assert out.startswith(f"fidelity in {tmp_path / 'f'}") and "step-1" in out and "gold" in out
    assert "Reward overfitting" in report and report.count("plotly.js v") <= 1
    steps = __import__("pandas").read_parquet(tmp_path / "f" / "steps.parquet")
    assert list(steps["step"]) == [0, 1] and steps["kl"].iloc[0] == 0.0  # the base against itself
    assert main(argv) == 0  # finished: reused
