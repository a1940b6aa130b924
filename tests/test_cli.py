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
    assert "invalid int value: 'one'" in err


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
