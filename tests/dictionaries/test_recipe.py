"""The dictionary recipe (dead latents, initialisation, schedule): what each option sets,
the recipe before them still reachable, and latents put to use on planted sparse data."""

import math

import pytest
import torch

from rlinterp.dictionaries.crosscoder import CrosscoderConfig
from rlinterp.dictionaries.sae import SAETrainConfig, _start, geometric_median, train_sae

from ..conftest import sparse_data, synthetic_store

HOOK = "blocks.0.hook_resid_post"
OLD = {"decoder_init_norm": 0.1, "lr_schedule": "cosine", "lr_decay": 0.0, "b_dec_init": "zeros"}
"""The recipe before these options (with ``dead_after = 1000 * batch_size``)."""


def test_geometric_median_resists_an_outlier_and_finds_a_known_centre():
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) + torch.tensor([3.0, -2.0])
    assert torch.allclose(geometric_median(square), torch.tensor([3.0, -2.0]), atol=1e-4)
    # three points on a line: the median is the middle one, whatever the far one's distance
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [100.0, 0.0]])
    assert torch.allclose(geometric_median(line), torch.tensor([1.0, 0.0]), atol=1e-2)
    assert line.mean(0)[0] > 30  # where the mean goes


def _schedule(trainer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def test_the_recipe_reaches_saelens_and_the_old_one_stays_reachable(tmp_path):
    cfg = SAETrainConfig(d_sae=32, k=2, n_tokens=100 * 128, batch_size=128, lr=1e-3)
    run = _start(tmp_path / "new", cfg, d_in=8)
    assert run.trainer.cfg.dead_feature_window == math.ceil(100 * 128 / 20 / 128) == 5
    assert torch.allclose(run.trainer.sae.W_dec.norm(dim=-1), torch.ones(32))
    rates = _schedule(run.trainer, 100)
    assert rates[0] == rates[79] == pytest.approx(1e-3)  # constant, then down over the last fifth
    assert rates[99] < 1e-4 and all(a >= b for a, b in zip(rates[80:], rates[81:], strict=False))

    old = SAETrainConfig(**{**cfg.__dict__, **OLD, "dead_after": 1000 * 128})
    run = _start(tmp_path / "old", old, d_in=8)
    assert run.trainer.cfg.dead_feature_window == 1000
    assert torch.allclose(run.trainer.sae.W_dec.norm(dim=-1), torch.full((32,), 0.1))
    rates = _schedule(run.trainer, 100)
    assert rates[0] == pytest.approx(1e-3) and rates[50] < 1e-3 and rates[99] >= 1e-4 * 0.99


def test_crosscoder_schedule_and_dead_window():
    cfg = CrosscoderConfig(d_in=4, d_sae=8, k=1, lr=1e-3, batch_size=16, n_steps=100)
    rates = [cfg.lr_at(step) for step in range(100)]
    assert rates[0] == pytest.approx(1e-3 / 5) and rates[4] == pytest.approx(1e-3)  # 5 warm-up steps
    assert rates[79] == pytest.approx(1e-3) and rates[99] == pytest.approx(1e-3 / 20) and min(rates) > 0
    assert cfg.dead_tokens == 100 * 16 // 20
    assert CrosscoderConfig(d_in=4, d_sae=8, dead_after=7).dead_tokens == 7
    flat = CrosscoderConfig(d_in=4, d_sae=8, lr_warmup=0.0, lr_decay=0.0, n_steps=10)
    assert {flat.lr_at(step) for step in range(10)} == {flat.lr}


def test_new_recipe_uses_its_latents_where_the_old_one_lets_them_die(tmp_path):
    """Planted sparse data (48 directions in 16 dimensions): the recipe leaves no latent
    dead and reconstructs held-out tokens better than the recipe before it, same budget."""
    x, _ = sparse_data(8192, 16, 48, seed=3)
    store = synthetic_store(tmp_path / "store", {"base": x[:6144]}, HOOK)
    held = x[6144:]
    common = {
        "d_sae": 64,
        "k": 3,
        "n_tokens": 128 * 400,
        "batch_size": 128,
        "lr": 3e-3,
        "checkpoint_every": 1000,
    }
    results = {}
    for name, recipe in (("new", {}), ("old", {**OLD, "dead_after": 1000 * 128})):
        sae = train_sae(store, "base", HOOK, tmp_path / name, SAETrainConfig(**common, **recipe)).sae
        with torch.no_grad():
            fired = (sae.encode(x[:6144]) > 0).any(0)
            error = (sae.decode(sae.encode(held)) - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()
        results[name] = (int((~fired).sum()), float(error))
    assert results["new"][0] <= results["old"][0] and results["new"][0] <= 2, results
    assert results["new"][1] < results["old"][1], results
