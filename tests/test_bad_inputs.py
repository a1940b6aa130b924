"""Bad inputs, by class, as a user meets them on their own checkpoints (a TRL run of LoRA
adapters and full-weight folders, ``tests.own_checkpoints``): each is one line on stderr
that names the option or file and says what to do, exit status 2, before anything is
computed, and ``--out`` is left as it was (absent here).

The classes: a missing or non-string label; a token outside the tokenizer's vocabulary (a
byte-order mark inside a prompt file, a circuits target); an empty step selection; a hook
whose activations have the wrong shape; a dictionary of the wrong width; a budget that
drops a whole persona; an adapter whose config disagrees with its weights; an option that
contradicts the series."""

import json
import shutil
from pathlib import Path

import pytest

from rlinterp.cli import main

from .own_checkpoints import PERSONAS, STEPS, build_series, questions


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    return build_series(tmp_path_factory.mktemp("own"))


def _refused(capsys, argv: list[str], out: Path) -> str:
    """Run ``argv`` with ``--out out``; the one stderr line, after checking the exit status
    and that ``out`` was not created."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse's errors exit, ours return
        raise SystemExit(main([*argv, "--out", str(out)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    return err


def _full(own: dict[str, Path]) -> list[str]:
    return ["--series", str(own["base"]), *(str(own["full"] / f"step-{s}") for s in STEPS)]


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "found"),
    [(None, "is missing"), (3, "is 3, not a non-empty string"), ("", "is '', not a non-empty string")],
)
def test_a_missing_or_non_string_label(capsys, own, tmp_path, value, found):
    rows = [json.loads(line) for line in own["texts"].read_text().splitlines()]
    if value is None:
        del rows[4]["persona"]
    else:
        rows[4]["persona"] = value
    texts = _rows(tmp_path / "texts.jsonl", rows)
    err = _refused(capsys, ["selection", *_full(own), "--texts", str(texts)], tmp_path / "o")
    assert f"{texts}:5: label 'persona' {found}; give every row a 'persona' string" in err


# -- tokens outside the vocabulary ----------------------------------------------------------


def test_a_byte_order_mark_starting_a_file_is_dropped_and_one_inside_is_refused(capsys, own, tmp_path):
    from rlinterp.activations.prompts import PromptSet

    plain = "\n".join(q for q, _ in questions()) + "\n"
    (tmp_path / "plain.txt").write_text(plain)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + plain.encode())
    assert PromptSet.from_file(tmp_path / "bom.txt") == PromptSet.from_file(tmp_path / "plain.txt")
    # two files joined: the second one's mark is inside a line, a character like any other
    (tmp_path / "joined.txt").write_bytes(plain.encode() + b"\xef\xbb\xbf" + plain.encode())
    argv = ["diff", *_full(own), "--prompts", str(tmp_path / "joined.txt")]
    err = _refused(capsys, argv, tmp_path / "o")
    assert f"prompt {len(questions()) + 1} ('\\ufeff" in err
    assert "holds a byte-order mark (U+FEFF), which the checkpoints' tokenizer does not know" in err


@pytest.mark.parametrize(("field", "value"), [("positive", "é"), ("prompt", "q: 1 plus 1 ≈ a:")])
def test_a_circuits_target_or_prompt_outside_the_vocabulary(capsys, own, tmp_path, field, value):
    rows = [{"prompt": q + " ", "positive": a[0], "negative": "x"} for q, a in questions()]
    rows[2][field] = value
    behaviour = _rows(tmp_path / "digits.jsonl", rows)
    argv = ["circuits", *_full(own), "--metric", "digits", "--prompts", str(behaviour)]
    err = _refused(capsys, argv, tmp_path / "o")
    what = "target" if field == "positive" else "prompt 3"
    assert f"behaviour {what} ({value!r}) holds {value[-4] if field == 'prompt' else value!r}" in err
    assert "which the checkpoints' tokenizer does not know (it reads them as <unk>)" in err


# -- steps, hooks, dictionaries -------------------------------------------------------------


def test_an_empty_step_selection(capsys, own, tmp_path):
    argv = ["diff", "--series", str(own["run"]), "--prompts", str(own["texts"]), "--steps", "0"]
    err = _refused(capsys, argv, tmp_path / "o")
    assert "--steps 0 selects no RL checkpoint (step 0 is the base); choose among steps 10, 20" in err


@pytest.mark.parametrize(
    ("hook", "shape"),
    [("blocks.0.attn.hook_pattern", "(1, 4, 8, 8)"), ("blocks.1.attn.hook_z", "(1, 8, 4, 8)")],
)
def test_a_hook_whose_activations_are_not_one_vector_per_token(capsys, own, tmp_path, hook, shape):
    argv = ["diff", *_full(own), "--prompts", str(own["texts"]), "--hooks", "blocks.1.hook_resid_post", hook]
    err = _refused(capsys, argv, tmp_path / "o")
    assert f"hook {hook} gives activations of shape {shape} on a prompt of 8 tokens" in err
    assert "choose hooks like ['blocks.0.hook_resid_pre'" in err


@pytest.fixture(scope="module")
def narrow_sae(tmp_path_factory) -> Path:
    """A finished SAE at blocks.1.hook_resid_post of a 16-wide model (the series is 32 wide)."""
    import torch

    from rlinterp.dictionaries.config import DictionaryConfig
    from rlinterp.dictionaries.train import train_dictionary

    from .conftest import synthetic_store

    root = tmp_path_factory.mktemp("narrow")
    hook = "blocks.1.hook_resid_post"
    acts = {"base": torch.randn(512, 16, generator=torch.Generator().manual_seed(0))}
    store = synthetic_store(root / "store", acts, hook=hook)
    cfg = DictionaryConfig(d_sae=8, k=2, n_tokens=512, batch_size=64)
    return train_dictionary(store, "sae", hook, root / "sae", cfg)


def test_a_dictionary_of_another_width(capsys, own, tmp_path, narrow_sae):
    argv = ["selection", *_full(own), "--texts", str(own["texts"]), "--dictionary", str(narrow_sae)]
    err = _refused(capsys, argv, tmp_path / "o")
    assert (
        f"--dictionary {narrow_sae} has d_in 16 but blocks.1.hook_resid_post of the series has width 32"
        in err
    )
    err = _refused(capsys, [*argv, "--hook", "blocks.0.hook_resid_post"], tmp_path / "o")
    assert "was trained at blocks.1.hook_resid_post, not at --hook blocks.0.hook_resid_post" in err
    run = [
        "run",
        *_full(own),
        "--prompts-source",
        str(own["texts"]),
        "--selection-dictionary",
        str(narrow_sae),
    ]
    err = _refused(capsys, run, tmp_path / "o")
    assert "has d_in 16 but blocks.1.hook_resid_post of the series has width 32" in err
    track = ["track", *_full(own), "--prompts", str(own["texts"]), "--dictionary", str(narrow_sae)]
    err = _refused(capsys, track, tmp_path / "o")
    assert "has d_in 16 but blocks.1.hook_resid_post of the series has width 32" in err


# -- budgets --------------------------------------------------------------------------------


def test_a_budget_that_drops_a_whole_persona(capsys, own, tmp_path):
    rows = [json.loads(line) for line in own["texts"].read_text().splitlines()]
    by_persona = sorted(rows, key=lambda r: r["persona"])  # hedger's texts, then helper's, then terse's
    run = ["run", *_full(own), "--prompts-source", str(_rows(tmp_path / "by-persona.jsonl", by_persona))]
    err = _refused(capsys, [*run, "--prompts-max-prompts", "8"], tmp_path / "o")
    assert "prompts.max_prompts = 8 keeps the first 8 texts, which hold no persona 'helper', 'terse'" in err
    assert "raise --prompts-max-prompts" in err
    # one text of each persona first: none dropped, but one text each is too few to fit
    interleaved = rows[: len(PERSONAS)] + by_persona
    run = ["run", *_full(own), "--prompts-source", str(_rows(tmp_path / "first.jsonl", interleaved))]
    err = _refused(capsys, [*run, "--prompts-max-prompts", str(len(PERSONAS))], tmp_path / "o")
    assert "prompts.max_prompts = 3 leaves too few texts for personas" in err


# -- adapters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 8}, "has a rank-2 update, but the config says r = 8"),
        ({"target_modules": ["q_proj", "v_proj"]}, "which target_modules ['q_proj', 'v_proj'] does not name"),
        ({"rank_pattern": {"v_proj": 4}}, "v_proj has a rank-2 update, but the config says r = 4"),
    ],
)
def test_an_adapter_whose_config_disagrees_with_its_weights(capsys, own, tmp_path, change, message):
    run = tmp_path / "grpo-lora"
    shutil.copytree(own["run"], run)
    config_path = run / f"checkpoint-{STEPS[-1]}" / "adapter_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | change))
    err = _refused(capsys, ["diff", "--series", str(run), "--prompts", str(own["texts"])], tmp_path / "o")
    assert f"{config_path} disagrees with adapter_model.safetensors" in err and message in err


# -- options that contradict the series -----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["diff", "--prompts", "organism", "--regime", "weak"],
            "--regime weak picks a regime of an organism",
        ),
        (["diff", "--prompts", "organism"], "'organism' as prompts needs a series from an organism"),
        (["circuits", "--metric", "answer"], "--metric answer (an organism metric; for other series give"),
        (["run"], "prompts.source = 'organism' takes the persona texts of the organism"),
        (
            ["run", "--prompts-source", "T", "--series-regimes", "weak"],
            "series.regimes applies to an organism",
        ),
        (["run", "--prompts-source", "T", "--dictionaries-hook", "blocks.0.attn.hook_z"], "is not harvested"),
    ],
)
def test_an_option_that_contradicts_the_series(capsys, own, tmp_path, argv, message):
    argv = [a if a != "T" else str(own["texts"]) for a in argv]
    err = _refused(capsys, [*argv, *_full(own)], tmp_path / "o")
    assert message in err
