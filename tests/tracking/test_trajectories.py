"""Trajectories with a hand-set dictionary on a store of known activations: every statistic
is checked against its definition, the logit readout against the ``transformers`` model's
own final LayerNorm and unembedding, and a model compared with itself gives identical rows."""

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.dictionaries.crosscoder import Crosscoder, CrosscoderConfig
from rlinterp.dictionaries.sae import SAETrainConfig
from rlinterp.tracking.trajectories import (
    CONTEXT_COLUMNS,
    FIT_COLUMNS,
    TOKEN_COLUMNS,
    TRAJECTORY_COLUMNS,
    TokenSource,
    TrackedDictionary,
    compute_trajectories,
    unembedding,
)

from ..conftest import synthetic_store

HOOK = "blocks.0.hook_resid_post"
D = 32  # the synthetic store's checkpoint is a d_model 32 GPT-2


def identity_sae(path, d: int = D, scale: float = 1.0) -> TrackedDictionary:
    """An L1-architecture SAE whose latents are relu(scale * x) and whose decoder is 1/scale
    times the identity: latent j is residual dimension j."""
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(scale * torch.eye(d))
        sae.W_dec.copy_(torch.eye(d) / scale)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(path)
    cfg = asdict(SAETrainConfig(architecture="standard", d_sae=d))
    (path / "rlinterp.json").write_text(
        json.dumps(
            {"method": "sae", "kind": "rlinterp.dictionary", "complete": True, "hook": HOOK, "config": cfg}
        )
    )
    return TrackedDictionary.load(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(512, D, generator=g)
    post = base.clone()
    post[:, 5] *= 3.0  # dimension 5 amplified
    post[:, 7] = -post[:, 7].abs()  # dimension 7 never positive: never fires
    return synthetic_store(
        tmp_path_factory.mktemp("store"), {"base": base, "post": post}, HOOK, per_prompt=16
    )


def test_statistics_follow_their_definitions(store, tmp_path):
    dictionary = identity_sae(tmp_path / "sae", scale=2.0)
    series = store.series()
    result = compute_trajectories(dictionary, [TokenSource.fixed("texts", store)], series)
    table = result.table
    assert list(table.columns) == TRAJECTORY_COLUMNS and len(table) == 2 * D
    for label in ("base", "post"):
        acts = 2.0 * store.read(label, HOOK).double()
        rows = table[table["label"] == label].set_index("latent")
        fires = acts > 0
        np.testing.assert_allclose(rows["frequency"], fires.double().mean(0), atol=1e-9)
        np.testing.assert_allclose(rows["mass"], acts.clamp(min=0).mean(0), rtol=1e-5)
        expected = torch.where(fires.any(0), acts.clamp(min=0).sum(0) / fires.sum(0).clamp(min=1), 0.0)
        np.testing.assert_allclose(rows["mean_activation"], expected, rtol=1e-5)
        np.testing.assert_allclose(rows["logit_contribution"], rows["mass"] * rows["logit_norm"], rtol=1e-6)
    base = table[table["label"] == "base"].set_index("latent")
    post = table[table["label"] == "post"].set_index("latent")
    assert post.loc[5, "mean_activation"] / base.loc[5, "mean_activation"] == pytest.approx(3.0, rel=1e-5)
    assert post.loc[7, "frequency"] == 0 and post.loc[7, "mean_activation"] == 0
    # every latent other than 5 and 7 reads the same in both models
    same = [j for j in range(D) if j not in (5, 7)]
    pd.testing.assert_frame_equal(
        base.loc[same, ["frequency", "mass"]], post.loc[same, ["frequency", "mass"]]
    )

    fit = result.fit.set_index("label")
    assert list(result.fit.columns) == FIT_COLUMNS
    # the decoder is exact wherever x > 0 and the rest is what relu drops
    for label in ("base", "post"):
        x = store.read(label, HOOK).double()
        expected = 1 - (x.clamp(max=0) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert fit.loc[label, "explained_variance"] == pytest.approx(expected.item(), rel=1e-6)
        assert fit.loc[label, "n_tokens"] == 512

    contexts = result.contexts
    assert list(contexts.columns) == CONTEXT_COLUMNS
    top = contexts[(contexts["label"] == "post") & (contexts["latent"] == 5) & (contexts["rank"] == 0)]
    assert top["activation"].item() == pytest.approx((2.0 * store.read("post", HOOK)[:, 5]).max().item())


def test_logit_readout_matches_the_transformers_model(store, tmp_path):
    dictionary = identity_sae(tmp_path / "sae")
    series = store.series()
    result = compute_trajectories(dictionary, [TokenSource.fixed("texts", store)], series)
    hf = AutoModelForCausalLM.from_pretrained(store.manifest["checkpoints"][0]["path"]).eval()
    # A residual direction d reaches the logits as LayerNorm's centering, then its scale, then W_U.
    d = torch.eye(D)
    expected = (
        (d - d.mean(-1, keepdim=True)) * hf.transformer.ln_f.weight.detach()
    ) @ hf.lm_head.weight.detach().T
    assert torch.allclose(unembedding(series.load(series.base)), expected, atol=1e-5)
    rows = result.table[result.table["label"] == "base"]
    np.testing.assert_allclose(rows["logit_norm"], expected.norm(dim=-1), rtol=1e-5)
    tokens = result.tokens
    assert list(tokens.columns) == TOKEN_COLUMNS
    first = tokens[(tokens["label"] == "base") & (tokens["latent"] == 3) & (tokens["rank"] == 0)]
    promoted = first[first["direction"] == "promoted"]
    suppressed = first[first["direction"] == "suppressed"]
    assert promoted["token_id"].item() == int(expected[3].argmax())
    assert suppressed["token_id"].item() == int(expected[3].argmin())


def test_a_model_against_itself_gives_identical_rows(tmp_path):
    acts = torch.randn(256, D, generator=torch.Generator().manual_seed(3))
    store = synthetic_store(tmp_path / "store", {"base": acts, "same": acts.clone()}, HOOK)
    dictionary = identity_sae(tmp_path / "sae")
    table = compute_trajectories(dictionary, [TokenSource.fixed("x", store)], store.series()).table
    columns = TRAJECTORY_COLUMNS[3:]
    base = table[table["label"] == "base"][columns].reset_index(drop=True)
    same = table[table["label"] == "same"][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(base, same)


def test_only_an_sae_or_crosscoder_is_tracked(tmp_path):
    with pytest.raises(RlinterpError, match="not a finished rlinterp dictionary"):
        TrackedDictionary.load(tmp_path)
    identity_sae(tmp_path / "sae")
    manifest = json.loads((tmp_path / "sae" / "rlinterp.json").read_text())
    (tmp_path / "sae" / "rlinterp.json").write_text(json.dumps({**manifest, "method": "diff-sae"}))
    with pytest.raises(RlinterpError, match="is a diff-sae"):
        TrackedDictionary.load(tmp_path / "sae")


def test_a_crosscoder_reads_base_and_checkpoint_and_decodes_into_the_checkpoint(store, tmp_path):
    """A hand-set crosscoder whose latent j reads dimension j of the checkpoint's slot only
    and writes it back there gives relu(x) of the checkpoint, as the identity SAE does."""
    cfg = CrosscoderConfig(d_in=D, d_sae=D, n_models=2, k=1, normalize=False)
    crosscoder = Crosscoder(cfg)
    with torch.no_grad():
        crosscoder.W_enc.zero_()
        crosscoder.W_enc[1] = torch.eye(D)
        crosscoder.W_dec.zero_()
        crosscoder.W_dec[:, 1] = torch.eye(D)
        crosscoder.b_enc.zero_()
        crosscoder.b_dec.zero_()
    crosscoder.save(tmp_path / "cc")
    (tmp_path / "cc" / "rlinterp.json").write_text(
        json.dumps({"method": "crosscoder", "hook": HOOK, "kind": "rlinterp.dictionary", "complete": True})
    )
    series = store.series()
    sources = [TokenSource.fixed("texts", store)]
    by_crosscoder = compute_trajectories(TrackedDictionary.load(tmp_path / "cc"), sources, series).table
    by_sae = compute_trajectories(identity_sae(tmp_path / "sae"), sources, series).table
    pd.testing.assert_frame_equal(by_crosscoder, by_sae, rtol=1e-5)
