"""SAEs through SAELens on our activation store: known encodings, planted directions,
resumable training, evaluation, and bad input."""

import dataclasses

import pandas as pd
import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from rlinterp import RlinterpError
from rlinterp.dictionaries.evaluation import evaluate_sae
from rlinterp.dictionaries.sae import SAETrainConfig, SAETrainer, TrainedSAE, train_sae

from ..conftest import sparse_data, synthetic_store

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base, _ = sparse_data(4096, 16, 24, seed=0)
    g = torch.Generator().manual_seed(1)
    planted = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    fires = (torch.rand(4096, generator=g) < 0.3).float() * (1 + torch.rand(4096, generator=g))
    post = base + fires.unsqueeze(1) * planted
    root = tmp_path_factory.mktemp("store")
    return synthetic_store(root, {"base": base, "post": post}, HOOK), planted


FAST = SAETrainConfig(d_sae=64, k=2, n_tokens=150_000, batch_size=128, lr=3e-3, checkpoint_every=100)


def test_topk_sae_encodes_as_its_saved_weights_say(store, tmp_path):
    store, _ = store
    trained = train_sae(store, "base", HOOK, tmp_path / "sae", FAST)
    x = store.read("base", HOOK)[:200]
    weights = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    top = pre.relu().topk(FAST.k, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    assert torch.allclose(trained.sae.encode(x), expected, atol=1e-5)
    reloaded = SAE.load_from_disk(str(tmp_path / "sae"))
    assert torch.allclose(reloaded.encode(x), trained.sae.encode(x), atol=1e-6)
    result = evaluate_sae(trained.sae, store, "base", HOOK)
    assert result.explained_variance > 0.9 and result.l0 == pytest.approx(2.0)
    assert trained.manifest["model"] == "base" and trained.manifest["method"] == "sae"


def test_diff_sae_recovers_the_planted_direction(store, tmp_path):
    store, planted = store
    trained = train_sae(store, "post", HOOK, tmp_path / "dsae", FAST, source="diff", base="base")
    decoder = torch.nn.functional.normalize(trained.sae.W_dec.detach(), dim=-1)
    assert (decoder @ planted).max().item() >= 0.9
    assert trained.manifest["method"] == "diff-sae" and trained.manifest["base"] == "base"
    assert evaluate_sae(trained.sae, store, "post", HOOK, base="base").explained_variance > 0.9


def test_interrupted_training_resumes_to_the_same_weights(store, tmp_path, monkeypatch):
    store, _ = store
    cfg = SAETrainConfig(d_sae=32, k=2, n_tokens=128 * 250, batch_size=128, checkpoint_every=100)
    uninterrupted = train_sae(store, "base", HOOK, tmp_path / "a", cfg)
    original_step, calls = SAETrainer.step, {"n": 0}

    def dying_step(self, batch):
        calls["n"] += 1
        if calls["n"] > 150:
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(SAETrainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_sae(store, "base", HOOK, tmp_path / "b", cfg)
    assert (tmp_path / "b" / "checkpoint" / "trainer_state.json").is_file()
    assert not (tmp_path / "b" / "rlinterp.json").exists()  # not finished
    monkeypatch.setattr(SAETrainer, "step", original_step)
    resumed = train_sae(store, "base", HOOK, tmp_path / "b", cfg)
    for name, value in uninterrupted.sae.state_dict().items():
        assert torch.equal(value, resumed.sae.state_dict()[name]), name
    log = pd.read_parquet(tmp_path / "a" / "training_log.parquet")
    assert log.equals(pd.read_parquet(tmp_path / "b" / "training_log.parquet"))
    assert log["step"].tolist() == [50, 100, 150, 200, 250]
    assert log["mse_loss"].iloc[-1] < log["mse_loss"].iloc[0]


def test_bad_input(store, tmp_path):
    store, _ = store
    with pytest.raises(RlinterpError, match="was not harvested"):
        train_sae(store, "base", "blocks.9.hook_resid_post", tmp_path / "x", FAST)
    with pytest.raises(RlinterpError, match="needs two different models"):
        train_sae(store, "base", HOOK, tmp_path / "y", FAST, source="diff", base="base")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before writing
    trained = train_sae(store, "base", HOOK, tmp_path / "sae", FAST)
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    before = weights.stat().st_mtime_ns
    assert train_sae(store, "base", HOOK, tmp_path / "sae", FAST).manifest == trained.manifest  # reused
    assert weights.stat().st_mtime_ns == before
    with pytest.raises(RlinterpError, match=r"dictionary of other inputs \(d_sae changed \(64 -> 32\)"):
        train_sae(store, "base", HOOK, tmp_path / "sae", SAETrainConfig(**{**FAST.__dict__, "d_sae": 32}))
    wide = synthetic_store(tmp_path / "wide", {"base": torch.randn(256, 8)}, HOOK)
    with pytest.raises(RlinterpError, match="d_in 16 .* activations of width 8"):
        evaluate_sae(trained.sae, wide, "base", HOOK)
    broken = torch.randn(256, 16)
    broken[100, 3] = float("nan")
    nan_store = synthetic_store(tmp_path / "nan", {"base": broken}, HOOK)
    with pytest.raises(RlinterpError, match="NaN or Inf"):
        train_sae(nan_store, "base", HOOK, tmp_path / "z", FAST)
    with pytest.raises(RlinterpError, match="is not a finished dictionary"):
        TrainedSAE.load(tmp_path / "z")


@pytest.mark.slow
def test_organism_sae_and_fvu_drift(tiny_organism, tmp_path):
    """At the layer the strong regime changed most, a TopK SAE (256 latents, L0 8) explains
    the base model, and explains the last weak checkpoint better than the last strong one."""
    from rlinterp.activations.harvest import harvest
    from rlinterp.activations.prompts import PromptSet
    from rlinterp.diff.activations import diff_activations
    from rlinterp.models.series import ModelSeries

    prompts = PromptSet.from_organism(tiny_organism.root)
    stores = {
        regime: harvest(ModelSeries.from_organism(tiny_organism.root, regime), prompts, tmp_path / regime)
        for regime in ("weak", "strong")
    }
    table = diff_activations(stores["strong"]).table
    hook = table[table["step"] == table["step"].max()].sort_values("rel_diff_norm").iloc[-1]["hook"]
    cfg = SAETrainConfig(d_sae=256, k=8, n_tokens=300_000)
    sae = train_sae(stores["strong"], "base", hook, tmp_path / "sae", cfg).sae
    on_base = evaluate_sae(sae, stores["strong"], "base", hook)
    assert on_base.explained_variance >= 0.9 and on_base.l0 == pytest.approx(8.0)
    weak = evaluate_sae(sae, stores["weak"], "weak-step-40", hook)
    strong = evaluate_sae(sae, stores["strong"], "strong-step-40", hook)
    assert weak.explained_variance > strong.explained_variance + 0.05


def test_weight_scaled_topk_sae_computes_what_saelens_computes():
    """Same weights, same batch: the loss, latents, reconstruction and every gradient of
    our TopK training SAE equal SAELens' (to float rounding), the AuxK loss included."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    from rlinterp.dictionaries.sae import WeightScaledTopKTrainingSAE

    cfg = TopKTrainingSAEConfig(k=4, d_in=16, d_sae=64)
    torch.manual_seed(0)
    theirs, ours = TopKTrainingSAE(cfg), WeightScaledTopKTrainingSAE(cfg)
    with torch.no_grad():  # decoder rows of unequal norms, so that the rescaling matters
        theirs.W_dec.mul_(torch.rand(64, 1, generator=torch.Generator().manual_seed(1)) * 3 + 0.1)
        theirs.b_enc.normal_(0, 0.1)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    dead = torch.arange(64) % 3 == 0
    outputs = []
    for sae in (theirs, ours):
        step = sae.training_forward_pass(TrainStepInput(x, {}, dead, 0, is_logging_step=False))
        step.loss.backward()
        outputs.append(step)
    assert outputs[0].losses["auxiliary_reconstruction_loss"] > 0
    for name in ("loss", "sae_out", "feature_acts", "hidden_pre"):
        assert torch.allclose(getattr(outputs[0], name), getattr(outputs[1], name), atol=1e-5), name
    assert torch.equal(outputs[0].feature_acts > 0, outputs[1].feature_acts > 0)
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_saes_trained_on_one_stream_equal_saes_trained_apart(store, tmp_path):
    """A sweep trained together is, weight for weight, the SAEs trained one by one; an SAE
    of the sweep that is already finished is kept, not trained again."""
    from rlinterp.dictionaries.sae import train_saes

    store, _ = store
    cfgs = [
        SAETrainConfig(d_sae=32, k=2, n_tokens=128 * 60, batch_size=128, checkpoint_every=25),
        SAETrainConfig(d_sae=64, k=4, n_tokens=128 * 60, batch_size=128, lr=1e-3, seed=0),
        SAETrainConfig(d_sae=32, k=2, n_tokens=128 * 60, batch_size=128, architecture="standard"),
    ]
    apart = [train_sae(store, "base", HOOK, tmp_path / f"apart-{i}", cfg) for i, cfg in enumerate(cfgs)]
    train_sae(store, "base", HOOK, tmp_path / "together-0", cfgs[0])
    before = (tmp_path / "together-0" / "sae_weights.safetensors").stat().st_mtime_ns
    outs = [tmp_path / f"together-{i}" for i in range(3)]
    together = train_saes(store, "base", HOOK, outs, cfgs)
    assert (tmp_path / "together-0" / "sae_weights.safetensors").stat().st_mtime_ns == before
    for i, (a, b) in enumerate(zip(apart, together, strict=True)):
        for name, value in a.sae.state_dict().items():
            assert torch.equal(value, b.sae.state_dict()[name]), (i, name)
        logs = [pd.read_parquet(d / "training_log.parquet") for d in (a.path, b.path)]
        assert logs[0].equals(logs[1])
    assert not torch.equal(apart[0].sae.W_dec, apart[2].sae.W_dec)  # the sweep's SAEs differ

    with pytest.raises(RlinterpError, match="must share batch_size, n_tokens, seed, device; got seed"):
        other_seed = dataclasses.replace(cfgs[0], seed=1)
        train_saes(store, "base", HOOK, [tmp_path / "x", tmp_path / "y"], [cfgs[0], other_seed])
    assert not (tmp_path / "x").exists()


def test_lean_trainer_trains_what_saelens_trainer_trains():
    """Same SAE, same batches, dead latents (so the AuxK loss acts): our trainer's weights
    and firing statistics equal SAELens' bit for bit."""
    from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    from rlinterp.dictionaries.sae import LeanSAETrainer

    cfg = SAETrainerConfig(
        total_training_samples=64 * 6, train_batch_size_samples=64, lr=3e-3, lr_end=3e-4,
        lr_scheduler_name="cosineannealing", dead_feature_window=1, logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    x = torch.randn(64 * 6, 16, generator=torch.Generator().manual_seed(0))
    trainers = []
    for kind in (SAETrainer, LeanSAETrainer):
        torch.manual_seed(0)
        trainer = kind(cfg, TopKTrainingSAE(TopKTrainingSAEConfig(k=2, d_in=16, d_sae=64)), iter(()))
        for batch in x.split(64):
            step = trainer.step(batch)
            trainer.n_training_steps += 1
        trainers.append(trainer)
    assert step.losses["auxiliary_reconstruction_loss"] > 0 and trainers[0].dead_neurons.any()
    theirs, ours = trainers
    for name, value in theirs.sae.state_dict().items():
        assert torch.equal(value, ours.sae.state_dict()[name]), name
    assert torch.equal(theirs.act_freq_scores, ours.act_freq_scores)
    assert torch.equal(theirs.n_forward_passes_since_fired, ours.n_forward_passes_since_fired)
    assert theirs.n_frac_active_samples == ours.n_frac_active_samples
