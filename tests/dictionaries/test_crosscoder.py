"""Crosscoders on synthetic activations whose answer is planted: a direction only the RL
model has, a direction the base model holds at 0.3 of the RL strength, hand-set weights
for latent scaling and for the latent table's kinds (a repurposed latent, a silent one),
a rewired MLP neuron of a real GPT-2 found through harvest and train_dictionary, plus
save/load, determinism, malformed input and the store reader."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn.functional import cosine_similarity

from rlinterp import HarvestConfig, ModelSeries
from rlinterp.activations.harvest import KIND, ActivationStore, harvest
from rlinterp.core.artifacts import write_json, write_safetensors
from rlinterp.dictionaries.crosscoder import (
    MIN_FIRINGS,
    REPURPOSED_MIN_CHANGE,
    RL_ONLY_ABOVE,
    SPURIOUS_NU,
    WEIGHTS_FILE,
    Crosscoder,
    CrosscoderConfig,
    latent_activity,
    latent_scaling,
    latent_table,
    paired_batches,
    train_crosscoder,
)
from rlinterp.dictionaries.train import DictionaryConfig, train_dictionary
from rlinterp.errors import RlinterpError

from ..planted import PlantedModels, build_planted, planted_prompts

D_IN, N_SHARED, N_TOKENS, BATCH = 16, 12, 8192, 256
SHRINK = 0.3  # the base model's strength of the shrunk direction, relative to the RL model
BASE, RL = 0, 1


def planted_activations(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[tokens, 2, D_IN] activations of a base and an RL model built from 14 random unit
    directions, each active on about 12% of tokens with a coefficient in [0.5, 1.5]: 12
    shared with equal coefficients, ``v`` in the RL model only, ``u`` in both but scaled by
    ``SHRINK`` in the base. Returns the activations, ``v`` and ``u``."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(N_SHARED + 2, D_IN, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    shared, v, u = dirs[:N_SHARED], dirs[N_SHARED], dirs[N_SHARED + 1]
    coef = torch.rand(N_TOKENS, N_SHARED + 2, generator=g) + 0.5
    coef = coef * (torch.rand(N_TOKENS, N_SHARED + 2, generator=g) < 0.12)
    common = coef[:, :N_SHARED] @ shared
    base = common + SHRINK * coef[:, -1:] * u
    rl = common + coef[:, -2:-1] * v + coef[:, -1:] * u
    return torch.stack([base, rl], dim=1), v, u


def epochs(acts: torch.Tensor, seed: int):
    """Endless reshuffled passes over ``acts`` in batches of BATCH tokens."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield from acts[torch.randperm(len(acts), generator=g)].split(BATCH)


def small_config(**overrides) -> CrosscoderConfig:
    # k=2: the planted data has 14 * 0.12 = 1.7 active directions per token on average.
    fields = dict(d_in=D_IN, d_sae=32, k=2, lr=3e-3, batch_size=BATCH, n_steps=3000, dead_after=50 * BATCH)
    return CrosscoderConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def trained() -> tuple[Crosscoder, torch.Tensor, torch.Tensor, torch.Tensor]:
    acts, v, u = planted_activations(seed=0)
    return train_crosscoder(epochs(acts, seed=1), small_config()), acts, v, u


def best_match(crosscoder: Crosscoder, direction: torch.Tensor) -> tuple[int, float]:
    """The latent whose RL decoder vector is closest to ``direction``, and that cosine."""
    cos = cosine_similarity(crosscoder.W_dec.detach()[:, RL], direction[None], dim=-1)
    return int(cos.argmax()), float(cos.max())


def test_planted_rl_only_direction_is_found_and_survives_latent_scaling(trained) -> None:
    crosscoder, acts, v, _ = trained
    latent, cos = best_match(crosscoder, v)
    assert cos > 0.95  # measured 0.9999998
    row = latent_table(crosscoder).iloc[latent]
    assert row["kind"] == "rl_only" and row["rel_norm"] > 0.99  # measured 0.9994
    scaled = latent_scaling(crosscoder, acts.split(1024), [latent], own=RL, other=BASE).iloc[0]
    assert scaled["beta_own_error"] == pytest.approx(1.0, abs=0.01)
    assert abs(scaled["nu_error"]) < 0.05  # measured -0.0001: the base error holds no v
    assert abs(scaled["nu_recon"]) < 0.25  # measured 0.012; other latents' overlap with v
    assert not scaled["spurious"]


def test_shrunk_direction_is_amplified_not_exclusive(trained) -> None:
    """Held at 0.3 strength in the base, ``u`` gets one latent whose base decoder is the RL one
    scaled down: amplified (the RL model writes it 1/0.3 times as strongly, in model units),
    not exclusive, so latent scaling has nothing to veto. In normalised units the ratio is
    0.3 times the ratio of the normalisation scales (the base, lacking ``v``, is scaled up a
    little more)."""
    crosscoder, acts, _, u = trained
    latent, cos = best_match(crosscoder, u)
    assert cos > 0.99  # measured 0.9999997
    ratio = SHRINK * float(crosscoder.scales[BASE] / crosscoder.scales[RL])  # 0.320
    row = latent_table(crosscoder).iloc[latent]
    assert row["kind"] == "amplified" and row["rel_norm"] < RL_ONLY_ABOVE
    assert row["norm_ratio"] == pytest.approx(1 / SHRINK, rel=0.01)  # measured 3.334
    assert row["rel_norm"] == pytest.approx(1 / (1 + ratio), abs=0.01)  # measured 0.7573
    assert row["cosine"] > 0.99
    scaled = latent_scaling(crosscoder, acts.split(1024), [latent], own=RL, other=BASE).iloc[0]
    assert scaled["nu_error"] == pytest.approx(ratio, abs=0.05)  # measured 0.320
    assert not scaled["spurious"]


def hand_set_crosscoder(decoupled: bool) -> Crosscoder:
    """d_in=4, no normalisation: latent 0 is e0 in both models, latent 1 is e1 in the RL
    model only (read from the RL model only); with ``decoupled``, latent 2 carries e1 in the
    base model only, reading it from the base."""
    crosscoder = Crosscoder(CrosscoderConfig(d_in=4, d_sae=3, k=1, normalize=False)).eval()
    eye = torch.eye(4)
    with torch.no_grad():
        for p in (crosscoder.W_enc, crosscoder.W_dec, crosscoder.b_enc, crosscoder.b_dec):
            p.zero_()
        crosscoder.W_enc[:, :, 0] = eye[0] / 2
        crosscoder.W_dec[0, :] = eye[0]
        crosscoder.W_enc[RL, :, 1] = eye[1]
        crosscoder.W_dec[1, RL] = eye[1]
        if decoupled:
            crosscoder.W_enc[BASE, :, 2] = eye[1]
            crosscoder.W_dec[2, BASE] = eye[1]
    return crosscoder


def hand_set_acts(base_strength: float) -> torch.Tensor:
    """e0 in both models; e1 on half the tokens in the RL model and, at ``base_strength``
    times its RL coefficient, in the base."""
    g = torch.Generator().manual_seed(0)
    c0, c1 = (torch.rand(400, generator=g) + 0.5 for _ in range(2))
    c1 = c1 * (torch.arange(400) % 2)
    eye = torch.eye(4)
    base = c0[:, None] * eye[0] + base_strength * c1[:, None] * eye[1]
    rl = c0[:, None] * eye[0] + c1[:, None] * eye[1]
    return torch.stack([base, rl], dim=1)


@pytest.mark.parametrize("base_strength", [0.0, 0.4, 0.6, 1.0])
def test_latent_scaling_measures_complete_shrinkage(base_strength: float) -> None:
    """Latent 1's base decoder is zero, but the base activations hold ``base_strength`` of it,
    all of it left in the base error: nu_error is exactly that fraction."""
    crosscoder = hand_set_crosscoder(decoupled=False)
    assert latent_table(crosscoder)["kind"].tolist() == ["shared", "rl_only", "shared"]  # 2: no decoders
    row = latent_scaling(crosscoder, hand_set_acts(base_strength).split(64), [1], own=RL, other=BASE).iloc[0]
    assert row["n_active"] == 200
    assert row["beta_own_error"] == pytest.approx(1.0, abs=1e-6)
    assert row["nu_error"] == pytest.approx(base_strength, abs=1e-6)
    assert row["nu_recon"] == pytest.approx(0.0, abs=1e-6)
    assert row["spurious"] == (base_strength > SPURIOUS_NU)


def test_latent_scaling_detects_latent_decoupling() -> None:
    """The base carries e1 through another latent (2), so its reconstruction holds it:
    nu_recon is 1, nu_error 0, and latent 1 is flagged although its norms say RL-only."""
    crosscoder = hand_set_crosscoder(decoupled=True)
    assert latent_table(crosscoder)["kind"].tolist() == ["shared", "rl_only", "base_only"]
    row = latent_scaling(crosscoder, hand_set_acts(1.0).split(64), [1], own=RL, other=BASE).iloc[0]
    assert row["nu_recon"] == pytest.approx(1.0, abs=1e-6)
    assert row["nu_error"] == pytest.approx(0.0, abs=1e-6)
    assert row["spurious"]
    silent = latent_scaling(crosscoder, hand_set_acts(0.0).split(64), [2], own=BASE, other=RL).iloc[0]
    assert silent["n_active"] == 0 and not silent["spurious"]  # never fires: NaN betas, no flag


def repurposing_crosscoder() -> Crosscoder:
    """d_in=4, no normalisation: latent 0 is e0 in both models; latent 1 reads and writes e1
    in the base and e2 in the RL model (fires on the same tokens, writes elsewhere); latent 2
    never fires (zero encoder) but keeps unrelated decoders, as an untrained latent does."""
    crosscoder = Crosscoder(CrosscoderConfig(d_in=4, d_sae=3, k=1, normalize=False)).eval()
    eye = torch.eye(4)
    with torch.no_grad():
        for p in (crosscoder.W_enc, crosscoder.b_enc, crosscoder.b_dec):
            p.zero_()
        crosscoder.W_enc[:, :, 0] = eye[0] / 2
        crosscoder.W_dec[0, :] = eye[0]
        crosscoder.W_enc[BASE, :, 1], crosscoder.W_enc[RL, :, 1] = eye[1] / 2, eye[2] / 2
        crosscoder.W_dec[1, BASE], crosscoder.W_dec[1, RL] = eye[1], eye[2]
        crosscoder.W_dec[2, BASE], crosscoder.W_dec[2, RL] = eye[3], -eye[3]
    return crosscoder


def test_repurposed_and_inactive_latents_with_their_evidence() -> None:
    """Latent 1 fires on every other token with the same coefficient in both models: its
    change is mean activation x ||e2 - e1|| / token RMS norm, computed here from the data."""
    g = torch.Generator().manual_seed(0)
    c0, c1 = (torch.rand(400, generator=g) + 0.5 for _ in range(2))
    c1 = c1 * (torch.arange(400) % 2)
    eye = torch.eye(4)
    acts = torch.stack([c0[:, None] * eye[0] + c1[:, None] * eye[i] for i in (1, 2)], dim=1)
    crosscoder = repurposing_crosscoder()
    assert latent_table(crosscoder)["kind"].tolist() == ["shared", "repurposed", "repurposed"]
    activity = latent_activity(crosscoder, acts.split(64))
    assert activity.n_tokens == 400 and activity.n_active.tolist() == [400, 200, 0]
    torch.testing.assert_close(
        activity.mean_activation, torch.stack([c0.mean(), c1[1::2].mean(), torch.tensor(0.0)])
    )
    token_norm = float(acts.pow(2).sum(-1).mean().sqrt())
    assert activity.token_norm == pytest.approx(token_norm, rel=1e-6)
    table = latent_table(crosscoder, activity=activity)
    assert table["kind"].tolist() == ["shared", "repurposed", "inactive"]
    assert table["frequency"].tolist() == [1.0, 0.5, 0.0]
    assert table["cosine"].tolist() == pytest.approx([1.0, 0.0, -1.0])
    assert table["norm_ratio"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    expected_change = float(c1[1::2].mean()) * 2**0.5 / token_norm
    assert table.loc[1, "change"] == pytest.approx(expected_change, rel=1e-5)
    assert table.loc[0, "change"] == 0.0
    # Too few firings to judge: inactive below MIN_FIRINGS (latent 1 fires on every other token).
    for n_fired, kind in ((MIN_FIRINGS - 1, "inactive"), (MIN_FIRINGS, "repurposed")):
        few = latent_activity(crosscoder, [acts[: 2 * n_fired]])
        assert latent_table(crosscoder, activity=few).loc[1, "kind"] == kind
    # A repurposed write too small to matter where it fires stays shared.
    faint = latent_activity(crosscoder, (acts * torch.tensor([1.0, 0.1, 0.1, 1.0])).split(64))
    assert latent_table(crosscoder, activity=faint).loc[1, "change"] < REPURPOSED_MIN_CHANGE
    assert latent_table(crosscoder, activity=faint).loc[1, "kind"] == "shared"


def test_save_load_round_trip(trained, tmp_path: Path) -> None:
    crosscoder, acts, _, _ = trained
    crosscoder.save(tmp_path / "cc")
    loaded = Crosscoder.load(tmp_path / "cc", d_in=D_IN)
    assert loaded.cfg == crosscoder.cfg and not loaded.training
    for name, tensor in crosscoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode(acts[:512]), crosscoder.encode(acts[:512]), atol=1e-6, rtol=0
        )
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == ["cfg.json", WEIGHTS_FILE]
    with pytest.raises(RlinterpError, match="d_in=16 but d_in=32"):
        Crosscoder.load(tmp_path / "cc", d_in=32)
    (tmp_path / "cc" / WEIGHTS_FILE).unlink()
    with pytest.raises(RlinterpError, match=WEIGHTS_FILE):
        Crosscoder.load(tmp_path / "cc")


def test_load_rejects_weights_that_do_not_fit_the_config(trained, tmp_path: Path) -> None:
    crosscoder = trained[0]
    crosscoder.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    write_json(tmp_path / "cfg.json", cfg | {"d_sae": 64})
    with pytest.raises(RlinterpError, match=r"W_(dec|enc) has shape \(32, 2, 16\)|has shape \(2, 16, 32\)"):
        Crosscoder.load(tmp_path)


def test_same_seed_gives_identical_weights() -> None:
    acts, _, _ = planted_activations(seed=0)
    runs = [train_crosscoder(epochs(acts, seed=1), small_config(n_steps=40, seed=s)) for s in (7, 7, 8)]
    same, other = runs[0].state_dict(), runs[1].state_dict()
    assert all(torch.equal(same[name], other[name]) for name in same)
    assert not torch.equal(same["W_dec"], runs[2].state_dict()["W_dec"])


def test_interrupted_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    acts, _, _ = planted_activations(seed=0)
    cfg = small_config(n_steps=120)
    whole = train_crosscoder(epochs(acts, seed=1), cfg)

    def dies_after(n: int):
        for i, batch in enumerate(epochs(acts, seed=1)):
            if i == n:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        train_crosscoder(dies_after(70), cfg, checkpoint=tmp_path, checkpoint_every=25)
    assert json.loads((tmp_path / "state.json").read_text()) == {"steps": 50}
    resumed = train_crosscoder(epochs(acts, seed=1), cfg, checkpoint=tmp_path, checkpoint_every=25)
    expected, actual = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_non_finite_or_missing_batches_are_rejected() -> None:
    acts, _, _ = planted_activations(seed=0)
    batches = list(acts[:1024].split(BATCH))
    batches[1] = batches[1].clone()
    batches[1][3, RL, 5] = torch.nan
    with pytest.raises(RlinterpError, match=r"batch 1 holds NaN or Inf activations \(models \[1\]\)"):
        train_crosscoder(batches, small_config())
    with pytest.raises(RlinterpError, match="batch 1 holds NaN"):
        latent_scaling(Crosscoder(small_config()), batches, [0], own=RL, other=BASE)
    with pytest.raises(RlinterpError, match="ran out after 4 of n_steps=3000"):
        train_crosscoder(list(acts[:1024].split(BATCH)), small_config())
    with pytest.raises(RlinterpError, match=r"expected \[tokens, 2, 16\]"):
        train_crosscoder((b[:, 0] for b in batches), small_config())  # a generator: beartype cannot look in


@pytest.mark.parametrize(
    "overrides",
    [{"n_models": 1}, {"k": 33}, {"lr": 0.0}, {"aux_k": 0}, {"aux_coef": -1.0}, {"dead_after": 0}],
)
def test_config_validation(overrides: dict) -> None:
    with pytest.raises(ValueError):
        small_config(**overrides)


def fake_store(root: Path, shard_sizes: list[int]) -> ActivationStore:
    """A two-model store at one hook where token t is [t, ...] in "base" and [-t, ...] in "rl"."""
    start = 0
    for k, size in enumerate(shard_sizes):
        ids = torch.arange(start, start + size, dtype=torch.float32)[:, None].expand(size, 3)
        for label, sign in (("base", 1), ("rl", -1)):
            write_safetensors(root / label / "hook" / f"shard-{k:05d}.safetensors", {"acts": sign * ids})
        start += size
    checkpoints = [{"label": "base"}, {"label": "rl"}]
    manifest = {"kind": KIND, "complete": True, "hooks": ["hook"], "checkpoints": checkpoints}
    write_json(root / "manifest.json", manifest | {"n_shards": len(shard_sizes)})
    return ActivationStore.load(root)


def test_paired_batches_shuffle_every_token_once_and_keep_pairs(tmp_path: Path) -> None:
    store = fake_store(tmp_path, [5, 7, 3, 9])

    def token_ids(seed: int) -> list[int]:
        batches = list(
            paired_batches(store, ["base", "rl"], "hook", batch_size=4, seed=seed, buffer_batches=2)
        )
        assert [len(b) for b in batches] == [4] * 6
        joined = torch.cat(batches)
        assert torch.equal(joined[:, 1], -joined[:, 0])  # both models' rows hold the same token
        return joined[:, 0, 0].long().tolist()

    order = token_ids(seed=0)
    assert sorted(order) == list(range(24)) and order != list(range(24))
    assert token_ids(seed=0) == order and token_ids(seed=1) != order
    with pytest.raises(RlinterpError, match="no model 'sft'"):
        next(paired_batches(store, ["base", "sft"], "hook", batch_size=4, seed=0))


@pytest.fixture(scope="module")
def planted_models(tmp_path_factory: pytest.TempPathFactory) -> PlantedModels:
    return build_planted(tmp_path_factory.mktemp("planted"))


def planted_crosscoder(planted: PlantedModels, other: str, root: Path) -> tuple[pd.DataFrame, torch.Tensor]:
    """Harvest (base, ``other``) on 256 held-out prompts, train a 32-latent crosscoder through
    ``train_dictionary`` (200k tokens: 16 passes), and return its latent table and its
    decoders in model units ``[latent, model, d_model]``."""
    series = ModelSeries.from_paths([planted.base, planted.path(other)])
    config = HarvestConfig(hooks=(planted.hook,), batch_size=64)
    store = harvest(series, planted_prompts(256, seed=1), root / f"store-{other}", config)
    cfg = DictionaryConfig(d_sae=32, k=4, n_tokens=200_000, batch_size=256, lr=1e-2)
    out = train_dictionary(store, "crosscoder", planted.hook, root / f"crosscoder-{other}", cfg)
    crosscoder = Crosscoder.load(out)
    decoders = crosscoder.W_dec.detach() / crosscoder.scales[None, :, None]
    return pd.read_parquet(out / "latents.parquet"), decoders


def test_a_rewired_neuron_is_a_repurposed_latent_and_the_identical_copy_has_none(
    planted_models: PlantedModels, tmp_path: Path
) -> None:
    """A GPT-2 whose one MLP neuron writes a new direction (same inputs, so it fires on the
    same tokens) against its base: one latent is classified repurposed, its base decoder on
    the neuron's old direction and its RL decoder on the new one. The base against an
    identical copy: every latent shared or inactive."""
    table, decoders = planted_crosscoder(planted_models, "rewired", tmp_path)
    new = cosine_similarity(decoders[:, RL], planted_models.new_direction[None], dim=-1)
    old = cosine_similarity(decoders[:, BASE], planted_models.direction[None], dim=-1)
    changed = table.index[table["kind"].isin(["repurposed", "rl_only"])].tolist()
    assert changed, table["kind"].value_counts().to_dict()
    best = max(changed, key=lambda j: float(new[j]))
    assert float(new[best]) >= 0.8  # measured 0.992 (seeds 0-2 of the planted build: >= 0.992)
    assert float(old[best]) >= 0.8  # measured 0.993
    row = table.loc[best]
    assert row["kind"] == "repurposed" and row["cosine"] < 0.3  # measured 0.02
    assert row["frequency"] == pytest.approx(planted_models.firing_fraction, abs=0.05)  # measured 0.29
    assert row["change"] > 1.0  # measured 1.76
    control, _ = planted_crosscoder(planted_models, "identical", tmp_path)
    assert set(control["kind"]) <= {"shared", "inactive"}, control["kind"].value_counts().to_dict()
    assert (control.loc[control["kind"] == "shared", "cosine"] > 0.99).all()
