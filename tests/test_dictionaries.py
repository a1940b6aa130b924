"""The single training entry point and the CLI over it, on synthetic stores whose
answers are known; the organism acceptance checks run in the slow tests."""

import json

import pandas as pd
import pytest
import torch

from rlinterp import RlinterpError
from rlinterp.cli import main
from rlinterp.crosscoder import LATENT_KINDS
from rlinterp.dictionaries import DictionaryConfig, evaluate_dictionary, top_activations, train_dictionary

from .conftest import sparse_data, synthetic_store

HOOK = "blocks.0.hook_resid_post"
SMALL = DictionaryConfig(d_sae=32, k=2, n_tokens=40_000, batch_size=128)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base, _ = sparse_data(2048, 16, 24, seed=0)
    post = base.clone()
    post[:, 3] += 2.0 * (torch.rand(2048, generator=torch.Generator().manual_seed(1)) < 0.2)
    return synthetic_store(tmp_path_factory.mktemp("store"), {"base": base, "post": post}, HOOK)


def test_top_activations_streams_a_known_answer():
    batches = [torch.tensor([[0.0, 1.0], [3.0, 0.0]]), torch.tensor([[2.0, 5.0], [0.0, 0.0]])]
    table = top_activations(iter(batches), k=2)
    assert table.values.tolist() == [[0, 0, 3.0, 1], [0, 1, 2.0, 2], [1, 0, 5.0, 2], [1, 1, 1.0, 0]]


@pytest.mark.parametrize("method", ["sae", "diff-sae", "crosscoder"])
def test_each_method_trains_and_writes_its_tables(store, tmp_path, method):
    out = train_dictionary(store, method, HOOK, tmp_path / method, SMALL)
    manifest = json.loads((out / "rlinterp.json").read_text())
    assert manifest["method"] == method and manifest["hook"] == HOOK
    contexts = pd.read_parquet(out / "top_contexts.parquet")
    assert {"latent", "rank", "activation", "prompt", "position", "context", "token"} <= set(contexts.columns)
    assert (contexts["activation"] > 0).all() and (contexts["position"] >= 1).all()  # never BOS
    table = evaluate_dictionary(out, downstream=False)
    if method == "crosscoder":
        assert set(table["kind"]) <= set(LATENT_KINDS) and len(table) == 32
        assert {"frequency", "norm_ratio", "change"} <= set(table.columns)
    else:
        assert (table["explained_variance"] > 0.5).all()
        assert (out / "eval.parquet").is_file()


def test_bad_input(store, tmp_path):
    with pytest.raises(RlinterpError, match="was not harvested"):
        train_dictionary(store, "sae", "blocks.7.hook_resid_post", tmp_path / "a", SMALL)
    with pytest.raises(RlinterpError, match="not a finished rlinterp dictionary"):
        evaluate_dictionary(tmp_path / "nothing")


def test_cli_train_and_eval(store, tmp_path, capsys):
    out = tmp_path / "cli-sae"
    argv = ["dictionaries", "train", "--store", str(store.root), "--method", "sae", "--hook", HOOK]
    assert main([*argv, "--out", str(out), "--d-sae", "32", "--k", "2", "--n-tokens", "20000"]) == 0
    assert main(["dictionaries", "eval", "--dictionary", str(out), "--no-downstream"]) == 0
    printed = capsys.readouterr().out
    assert "explained_variance" in printed and "post" in printed
