"""``rlinterp track`` end to end on the planted checkpoints of ``tests/planted.py``: the
amplified, suppressed and rewired neurons are found as what they are, a series of identical
checkpoints is all stable, and bad input is a one-line error that writes nothing."""

import json

import pytest
from sae_lens import StandardSAE, StandardSAEConfig

from rlinterp import RlinterpError
from rlinterp.cli import main
from rlinterp.dictionaries import DictionaryConfig, train_dictionary
from rlinterp.harvest import HarvestConfig, harvest
from rlinterp.onpolicy import SamplingConfig
from rlinterp.prompts import PromptSet
from rlinterp.series import Checkpoint, ModelSeries
from rlinterp.stagewise import StagewiseConfig
from rlinterp.track import TrackConfig, run_track

from .planted import build_planted, planted_prompts

FAST = TrackConfig(
    sources=("texts", "on-policy"),
    sampling=SamplingConfig(samples_per_prompt=1, max_new_tokens=24),
    batch_size=64,
    stagewise=StagewiseConfig(n_tokens=20_000),
    independent_tokens=40_000,
)


def split_prompts(n: int = 192) -> PromptSet:
    """The planted prompts cut into a prompt (16 characters) and a given answer."""
    return PromptSet.from_records([{"prompt": t[:16], "response": t[16:]} for t in planted_prompts(n).texts])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted models and a TopK SAE (64 latents, k 4) trained on the base."""
    root = tmp_path_factory.mktemp("planted")
    models = build_planted(root / "models")
    base = ModelSeries((Checkpoint("base", 0, models.base),))
    store = harvest(
        base, planted_prompts(256), root / "store", HarvestConfig(hooks=(models.hook,), batch_size=64)
    )
    train_dictionary(
        store, "sae", models.hook, root / "sae", DictionaryConfig(d_sae=64, k=4, n_tokens=60_000)
    )
    return models, root / "sae"


def series_of(models, *kinds: str) -> ModelSeries:
    return ModelSeries(
        (
            Checkpoint("base", 0, models.base),
            *(Checkpoint(k, i + 1, models.path(k)) for i, k in enumerate(kinds)),
        )
    )


def hand_set_sae(path, d_in: int, hook: str) -> None:
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=8))
    sae.save_model(path)
    (path / "rlinterp.json").write_text(
        json.dumps({"method": "sae", "kind": "sae", "hook": hook, "config": {}})
    )


def test_bad_input_is_one_line_and_writes_nothing(planted, tmp_path):
    models, sae = planted
    out = tmp_path / "out"
    cases = [
        (
            (ModelSeries((Checkpoint("base", 0, models.base),)), split_prompts(), sae),
            "needs a base and at least one",
        ),
        ((series_of(models, "amplified"), PromptSet.from_list(["abc"]), sae), "'texts' source needs prompts"),
    ]
    hand_set_sae(tmp_path / "narrow", 16, models.hook)
    cases.append(((series_of(models, "amplified"), split_prompts(), tmp_path / "narrow"), "d_in 16 but"))
    hand_set_sae(tmp_path / "deep", 32, "blocks.5.hook_resid_post")
    cases.append(((series_of(models, "amplified"), split_prompts(), tmp_path / "deep"), "do not have"))
    for (series, prompts, dictionary), message in cases:
        with pytest.raises(RlinterpError, match=message) as error:
            run_track(series, prompts, dictionary, out, FAST)
        assert "\n" not in str(error.value)
        assert not out.exists()
    with pytest.raises(RlinterpError, match="sampling budget is zero"):
        SamplingConfig(samples_per_prompt=0)


def test_cli_zero_budget_is_one_line(planted, tmp_path, capsys):
    models, sae = planted
    argv = ["track", "--series", str(models.base), str(models.amplified), "--dictionary", str(sae)]
    argv += [
        "--prompts",
        str(tmp_path / "p.txt"),
        "--out",
        str(tmp_path / "out"),
        "--samples-per-prompt",
        "0",
    ]
    (tmp_path / "p.txt").write_text("hello there\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sampling budget is zero" in err
    assert not (tmp_path / "out").exists()
