"""What commands print besides their results (``core.output``): one switch silences every
progress bar, rlinterp's and its libraries' (SAELens' norm-scaling bar, transformers'); no
bar is drawn when stderr is not a terminal; a dependency's warning is printed once; a
resumed harvest says so."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlinterp.core.output import progress_bars

from .conftest import ALPHABET, random_checkpoints, synthetic_store


def test_progress_bars_reach_every_tqdm_and_restore_it(capsys):
    from tqdm import tqdm as plain
    from tqdm.auto import tqdm as auto
    from transformers.utils import logging as hf_logging

    with progress_bars(False) as shown:
        assert not shown
        bars = [
            plain(range(3)),
            auto(range(3)),
            plain(range(3), None, 3, True, None, 80, 0.1, 10, None, None, False),
        ]
        for bar in bars:
            assert bar.disable, bar
            list(bar)
        list(hf_logging.tqdm(range(3)))
    assert capsys.readouterr().err == ""
    drawn = plain(range(3))  # tqdm as it was: a bar without ``disable`` is drawn
    assert not drawn.disable
    list(drawn)
    assert "3/3" in capsys.readouterr().err
    with progress_bars(None) as shown:  # pytest's stderr is not a terminal
        assert not shown and plain(range(3)).disable


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    acts = {"base": torch.randn(512, 16, generator=torch.Generator().manual_seed(0))}
    return synthetic_store(tmp_path_factory.mktemp("store") / "store", acts)


@pytest.mark.parametrize("argv", [[], ["--quiet"]], ids=["no-terminal", "quiet"])
def test_no_bars_from_saelens_without_a_terminal_or_with_quiet(capsys, store, tmp_path, argv):
    """SAELens draws its norm-scaling bar whatever it is told; the command's output holds
    none of it (stderr here is not a terminal)."""
    from rlinterp.cli import main

    train = ["dictionaries", "train", "--store", str(store.root), "--method", "sae"]
    train += ["--hook", "blocks.0.hook_resid_post", "--d-sae", "8", "--k", "2", "--n-tokens", "512"]
    train += ["--batch-size", "64", "--out", str(tmp_path / "sae")]
    capsys.readouterr()
    assert main([*train, *argv]) == 0
    err = capsys.readouterr().err
    assert "Estimating norm scaling factor" not in err and "it/s]" not in err, err


def test_the_bar_switch_sees_saelens_bars(capsys, store, tmp_path):
    """The control of the test above: with bars on, SAELens' bar is there to silence."""
    from rlinterp.dictionaries.config import DictionaryConfig
    from rlinterp.dictionaries.train import train_dictionary

    cfg = DictionaryConfig(d_sae=8, k=2, n_tokens=512, batch_size=64)
    capsys.readouterr()
    with progress_bars(True):
        train_dictionary(store, "sae", "blocks.0.hook_resid_post", tmp_path / "sae", cfg)
    assert "Estimating norm scaling factor" in capsys.readouterr().err


WARNS = """
import warnings
{setup}
def load_a_model(i):
    with warnings.catch_warnings():  # a library's own narrow suppression, as ours are
        warnings.filterwarnings("ignore", message="unrelated")
    warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
for i in range(3):
    load_a_model(i)
"""


@pytest.mark.parametrize(
    ("setup", "printed"), [("", 3), ("from rlinterp.core.output import warnings_once\nwarnings_once()", 1)]
)
def test_a_dependency_warning_is_printed_once(setup, printed):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "PYTHONWARNINGS": ""}
    done = subprocess.run(
        [sys.executable, "-c", WARNS.format(setup=setup)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("is deprecated") == printed, done.stderr


def test_a_resumed_harvest_says_it_resumed(tmp_path, caplog):
    from rlinterp.activations import harvest as harvesting
    from rlinterp.activations.prompts import PromptSet
    from rlinterp.models.series import ModelSeries

    folders = random_checkpoints(tmp_path)
    series = ModelSeries.from_paths([folders["base"], folders["step-1"]])
    prompts = PromptSet.from_list([ALPHABET[i : i + 12] for i in range(16)])
    cfg = harvesting.HarvestConfig(batch_size=8)
    real = harvesting.HarvestTask.__call__

    def dies_on_the_checkpoint(task, series, checkpoint):
        if checkpoint.label != "base":
            raise KeyboardInterrupt
        return real(task, series, checkpoint)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(harvesting.HarvestTask, "__call__", dies_on_the_checkpoint)
        harvesting.harvest(series, prompts, tmp_path / "store", cfg)
    with caplog.at_level(logging.INFO, logger="rlinterp.activations.harvest"):
        harvesting.harvest(series, prompts, tmp_path / "store", cfg)
    assert "resumed; 1 of 2 checkpoints already complete" in caplog.text
