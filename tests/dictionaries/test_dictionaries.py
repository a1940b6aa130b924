"""The single training entry point and the CLI over it, on synthetic stores whose
answers are known; the organism acceptance checks run in the slow tests."""

import json

import pandas as pd
import pytest
import torch
from torch.nn.functional import cosine_similarity

from rlinterp import RlinterpError
from rlinterp.cli import main
from rlinterp.dictionaries.crosscoder import LATENT_KINDS, Crosscoder
from rlinterp.dictionaries.train import (
    DictionaryConfig,
    evaluate_dictionary,
    top_activations,
    train_dictionary,
)

from ..conftest import sparse_data, synthetic_store
from .test_crosscoder import planted_activations

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
    with pytest.raises(RlinterpError, match="is not a finished dictionary"):
        evaluate_dictionary(tmp_path / "nothing")


def test_cli_train_and_eval(store, tmp_path, capsys):
    out = tmp_path / "cli-sae"
    argv = ["dictionaries", "train", "--store", str(store.root), "--method", "sae", "--hook", HOOK]
    assert main([*argv, "--out", str(out), "--d-sae", "32", "--k", "2", "--n-tokens", "20000"]) == 0
    assert main(["dictionaries", "eval", "--dictionary", str(out), "--no-downstream"]) == 0
    printed = capsys.readouterr().out
    assert "explained_variance" in printed and "post" in printed


def test_crosscoder_through_train_dictionary_finds_the_planted_rl_only_latent(tmp_path):
    """The crosscoder test's planted data (``v`` only in the RL model, ``u`` in both, at 0.3
    strength in the base) written as a store and trained through the one entry point: its
    tables name ``v``'s latent RL-only, keep it after latent scaling, and call ``u``'s
    amplified (by the planted 1 / 0.3)."""
    acts, v, u = planted_activations(seed=0)
    store = synthetic_store(tmp_path / "store", {"base": acts[:, 0], "post": acts[:, 1]}, HOOK)
    cfg = DictionaryConfig(d_sae=32, k=2, n_tokens=1500 * 256, batch_size=256, lr=3e-3)
    out = train_dictionary(store, "crosscoder", HOOK, tmp_path / "cc", cfg)
    decoder = Crosscoder.load(out).W_dec.detach()  # [d_sae, n_models, d_in]
    table = evaluate_dictionary(out)
    found = {}
    for name, direction in (("v", v), ("u", u)):
        cos = cosine_similarity(decoder[:, 1], direction[None], dim=-1)
        found[name] = int(cos.argmax())
        assert cos.max() > 0.95, name
    assert table.loc[found["v"], "kind"] == "rl_only" and table.loc[found["v"], "rel_norm"] > 0.95  # 0.999
    assert not table.loc[found["v"], "spurious"]  # latent scaling: the base does not carry it
    assert table.loc[found["u"], "kind"] == "amplified"
    assert table.loc[found["u"], "norm_ratio"] == pytest.approx(1 / 0.3, rel=0.15)
    assert (table["kind"] == "rl_only").sum() == 1  # nothing else is new
