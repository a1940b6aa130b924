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
