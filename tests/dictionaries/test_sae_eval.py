"""SAE evaluation with known answers, on a tiny random-init GPT-2 built here: an SAE that
reconstructs exactly recovers all of the loss and moves no distribution, a zero decoder
recovers none of it; and a saved SAE spliced through SAELens' own ``SAETransformerBridge``
gives the loss rlinterp's evaluation reports."""

import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE, SAETransformerBridge, StandardSAE, StandardSAEConfig

from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.dictionaries.evaluation import evaluate_sae
from rlinterp.dictionaries.sae import SAETrainConfig, train_sae
from rlinterp.models.series import ModelSeries

from ..conftest import random_checkpoints

HOOK = "blocks.0.hook_resid_post"
PROMPTS = PromptSet.from_list(
    ["is 12 even? yes", "a", "the quick brown fox", "xyz", "jumps over the lazy dog", "hello there", "k: 5"]
)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae-eval")
    folders = random_checkpoints(root, n_layer=2)
    return ModelSeries.from_paths([folders["base"], folders["step-1"]]), root


def _store(series, include_bos: bool):
    series, root = series
    cfg = HarvestConfig(hooks=(HOOK,), batch_size=3, include_bos=include_bos)
    return harvest(series, PROMPTS, root / f"store-bos{int(include_bos)}", cfg)


def exact_sae(d: int, decoder_scale: float = 1.0) -> StandardSAE:
    """A ReLU SAE with latents ``relu(x)`` and ``relu(-x)`` and decoder ``[I; -I]``: it
    reconstructs every input exactly (each coordinate is one latent minus the other, one of
    them zero). ``decoder_scale`` 0 makes every reconstruction zero."""
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(decoder_scale * torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("include_bos", [False, True])
def test_exact_sae_recovers_all_of_the_loss_and_a_zero_decoder_none(series, include_bos):
    store = _store(series, include_bos)
    models = series[0]
    exact = evaluate_sae(exact_sae(32), store, "step-1", HOOK, models)
    assert exact.fvu == 0 and exact.explained_variance == 1
    assert exact.ce_recovered == pytest.approx(1.0, abs=1e-6)
    assert exact.kl_spliced == pytest.approx(0.0, abs=1e-9)
    assert exact.ce_spliced == pytest.approx(exact.ce_clean, abs=1e-6)
    # as a diff-SAE, the splice is base + sae(post - base): post again, up to rounding
    as_diff = evaluate_sae(exact_sae(32), store, "step-1", HOOK, models, base="base")
    assert as_diff.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert as_diff.kl_spliced == pytest.approx(0.0, abs=1e-8)
    # a zero decoder splices exactly the ablation: nothing recovered, and outputs move
    zero = evaluate_sae(exact_sae(32, decoder_scale=0.0), store, "step-1", HOOK, models)
    assert zero.ce_recovered == 0.0 and zero.ce_spliced == zero.ce_ablated
    assert zero.kl_spliced > 1e-4 and zero.ce_ablated != zero.ce_clean


def test_saved_sae_splices_through_saelens_bridge_as_rlinterp_evaluates_it(series, tmp_path):
    """SAELens splices at every position, so the store keeps BOS (then rlinterp splices at
    every real position too; padding comes after and cannot change them)."""
    store = _store(series, include_bos=True)
    cfg = SAETrainConfig(d_sae=64, k=4, n_tokens=4096, batch_size=32, checkpoint_every=1000)
    train_sae(store, "step-1", HOOK, tmp_path / "sae", cfg)
    sae = SAE.load_from_disk(str(tmp_path / "sae"))
    metadata = sae.cfg.metadata
    assert metadata.hook_name == HOOK and metadata.prepend_bos is True
    assert metadata.model_name == str(store.checkpoints[1].path)
    assert metadata.context_size == store.tokens().tokens.shape[1]
    assert list(metadata.seqpos_slice) == [0, None] and metadata.rlinterp_source == "acts"
    ours = evaluate_sae(sae, store, "step-1", HOOK, series[0])

    bridge = SAETransformerBridge.boot_transformers(str(store.checkpoints[1].path), device="cpu")
    tokenizer = bridge.tokenizer
    ce = {"clean": 0.0, "spliced": 0.0}
    kl, n = 0.0, 0
    for text in PROMPTS.texts:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[tokenizer.bos_token_id, *tokens]])
        with torch.no_grad():
            clean = bridge(ids, return_type="logits")[0, :-1].float()
            with bridge.saes(saes=[sae]):
                assert HOOK in bridge.acts_to_saes  # attached, not "No hook found ... Skipping"
                spliced = bridge(ids, return_type="logits")[0, :-1].float()
        targets = ids[0, 1:]
        ce["clean"] += F.cross_entropy(clean, targets, reduction="sum").item()
        ce["spliced"] += F.cross_entropy(spliced, targets, reduction="sum").item()
        log_p, log_q = F.log_softmax(clean, -1), F.log_softmax(spliced, -1)
        kl += (log_p.exp() * (log_p - log_q)).sum().item()
        n += len(targets)
    assert ce["clean"] / n == pytest.approx(ours.ce_clean, abs=1e-5)
    assert ce["spliced"] / n == pytest.approx(ours.ce_spliced, abs=1e-5)
    assert kl / n == pytest.approx(ours.kl_spliced, rel=1e-3)
    assert ours.kl_spliced > 1e-6  # the SAE is not exact: the splice changed the outputs
