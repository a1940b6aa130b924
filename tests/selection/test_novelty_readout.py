"""The selection-versus-novelty reading on planted series whose answer is known
(``planted_series``: GPT-2-, Llama- and Qwen2-style tiny random-init models, built with plain
``transformers``, independently of the reading): new computation at each block, context-
dependent re-weighting whose mean shift cancels, amplified neurons and heads that the
base's dictionary has no latent for, null series, and combinations with a known transition
step and layer. Seeds 0-4 on every family."""

from __future__ import annotations

import pytest
import torch

from rlinterp import RlinterpError
from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.models.series import ModelSeries
from rlinterp.selection.index import IndexConfig, novelty_index
from rlinterp.selection.readout import ReadoutConfig, readout_parts, rotation
from rlinterp.selection.ridge import heldout_residuals

from . import planted_series as ps

SEEDS = range(5)
N_LAYER = 2
READOUT = ReadoutConfig(n_folds=4, n_repeats=2, n_controls=2)
INDEX = IndexConfig(n_bootstrap=200)


def read(folders, texts, tmp_path, readout: ReadoutConfig = READOUT):
    """Harvest (one cheap hook: the reading runs its own passes) and read the series."""
    series = ModelSeries.from_paths(folders)
    store = harvest(
        series,
        texts,
        tmp_path / "store",
        HarvestConfig(hooks=("blocks.0.hook_resid_post",), response_only=True),
    )
    return novelty_index(readout_parts(series, store, readout), INDEX)


def sides(index, step: int) -> dict[int, str]:
    rows = index.layers[index.layers["step"] == step]
    return dict(zip(rows["layer"].astype(int), rows["side"], strict=True))


def least_covered_neuron(base, layer: int, decoder: torch.Tensor) -> tuple[int, float]:
    """The neuron of ``layer`` whose write direction has the lowest best cosine with any row
    of ``decoder`` (a dictionary of the base), and that cosine."""
    writes = torch.nn.functional.normalize(ps.neuron_writes(base, layer), dim=-1)
    best = (writes @ torch.nn.functional.normalize(decoder, dim=-1).T).abs().max(dim=1).values
    return int(best.argmin()), float(best.min())


# -- the combination series: selection steps, then new computation at a known block ----------


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("arch", ps.ARCHS)
def test_combination_series_reads_selection_then_novelty_at_the_planted_block(arch, seed, tmp_path):
    """Steps 1-2 re-weight what the base computes (an amplified neuron and head, then a
    context-dependent push of the persona direction whose mean cancels); steps 3-4 add a new
    computation in block ``seed % N_LAYER``. Every layer reads selection at steps 1-2; at
    steps 3-4 the planted block reads novelty and the others selection; the transition is
    step 3, at that block."""
    layer = seed % N_LAYER
    texts, calib = ps.persona_texts(48, seed=seed), ps.persona_texts(24, seed=seed + 100)
    base = ps.base_model(arch, N_LAYER, seed)
    selection = [ps.amplify_neuron(0, 7 + seed, 3.0), ps.amplify_head(N_LAYER - 1, seed % 4, 2.0)]
    context = [*selection, ps.reweight_context(N_LAYER - 1, 0.5)]
    steps = [selection, context, [*context, ps.new_computation(layer, 0.4, seed)]]
    steps.append([*context, ps.new_computation(layer, 0.8, seed)])
    index = read(ps.build_series(tmp_path / "models", base, steps, calib), texts, tmp_path)

    for step in (1, 2):
        assert set(sides(index, step).values()) == {"selection"}, (step, index.layers)
    for step in (3, 4):
        assert sides(index, step) == {
            other: "novelty" if other == layer else "selection" for other in range(N_LAYER)
        }, (step, index.layers)
    table = index.table.set_index("step")
    assert list(table["side"]) == ["selection", "selection", "selection", "novelty", "novelty"]
    assert table.loc[3, "layer"] == table.loc[4, "layer"] == layer
    assert table.loc[2, "index_hi"] < 0.5 and table.loc[3, "index_lo"] > 0.5
    transition = index.transition
    assert transition["found"] and transition["step"] == 3 and transition["layer"] == layer
    assert transition["step_lo"] == transition["step_hi"] == 3


def test_the_context_reweighting_cancels_in_the_mean_and_reads_selection(tmp_path):
    """The construction does what it claims: the mean shift of the re-weighting is a small
    part of its per-token size, its signs are opposite across personas, and it reads
    selection at its block on every family."""
    for arch in ps.ARCHS:
        texts, calib = ps.persona_texts(48, seed=0), ps.persona_texts(24, seed=100)
        base = ps.base_model(arch, N_LAYER, 0)
        folders = ps.build_series(tmp_path / arch, base, [[ps.reweight_context(N_LAYER - 1, 0.5)]], calib)
        before = ps.read(base, texts, N_LAYER - 1)
        after = ps.read(type(base).from_pretrained(folders[1]).eval(), texts, N_LAYER - 1)
        delta = after.resid - before.resid
        assert float(delta.mean(0).norm()) < 0.25 * ps.rms(delta)
        direction = torch.nn.functional.normalize(ps.persona_contrast(before.resid, before.persona), dim=0)
        is_p = torch.tensor([p == "p" for p in before.persona])
        along = delta @ direction
        assert float(along[is_p].mean()) > 0 > float(along[~is_p].mean())
        index = read(folders, texts, tmp_path / f"{arch}-read")
        row = index.layers[(index.layers["step"] == 1) & (index.layers["layer"] == N_LAYER - 1)].iloc[0]
        assert row["side"] == "selection" and row["novelty_hi"] < 0.3, (arch, row)
        assert row["local_share"] > 0.5  # the block made the change


@pytest.mark.parametrize("arch", ps.ARCHS)
def test_amplified_neuron_the_dictionary_lacks_reads_selection(arch, tmp_path):
    """Class (c): the neuron amplified is the one whose write a small SAE of the base covers
    worst; the dictionary leaves most of the change unexplained, the reading calls it
    selection."""
    from rlinterp.dictionaries.sae import SAETrainConfig, train_sae
    from rlinterp.selection.explanation import dictionary_share, step_parts

    texts, calib = ps.persona_texts(48, seed=1), ps.persona_texts(24, seed=101)
    base = ps.base_model(arch, N_LAYER, 1)
    folders = ps.build_series(tmp_path / "models", base, [], calib)
    series = ModelSeries.from_paths(folders)
    hook = "blocks.0.hook_resid_post"
    store = harvest(series, texts, tmp_path / "base-store", HarvestConfig(hooks=(hook,), response_only=True))
    sae = train_sae(store, "base", hook, tmp_path / "sae", SAETrainConfig(d_sae=16, k=2, n_tokens=20_000)).sae
    neuron, cosine = least_covered_neuron(base, 0, sae.W_dec.detach())
    assert cosine < 0.6
    folders = ps.build_series(tmp_path / "amp", base, [[ps.amplify_neuron(0, neuron, 4.0)]], calib)
    series = ModelSeries.from_paths(folders)
    store = harvest(series, texts, tmp_path / "store", HarvestConfig(hooks=(hook,), response_only=True))
    explained = dictionary_share([[step_parts(store, hook, sae, label) for label in store.labels]]).set_index(
        "step"
    )
    index = novelty_index(readout_parts(series, store, READOUT), INDEX)
    assert explained.loc[1, "token_residual_share"] > 0.3  # the dictionary misses much of it
    row = index.table.set_index("step").loc[1]
    assert row["side"] == "selection" and row["index_hi"] < 0.3, index.layers


@pytest.mark.parametrize("arch", ps.ARCHS)
def test_null_series_reads_no_change(arch, tmp_path):
    """The base against two byte-identical copies: no local change anywhere, novelty 0 with
    a zero-width interval, selection, no transition; the same under another control seed."""
    texts = ps.persona_texts(24, seed=0)
    base = ps.base_model(arch, N_LAYER, 0)
    folders = ps.build_series(tmp_path / "models", base, [[], []], texts)
    for seed in (0, 1):
        index = read(folders, texts, tmp_path / f"read-{seed}", ReadoutConfig(n_folds=3, seed=seed))
        assert (index.layers[["novelty", "novelty_lo", "novelty_hi", "local_share"]] == 0).all().all()
        assert (index.table["side"] == "selection").all()
        assert not index.transition["found"] and index.transition["step"] is None


@pytest.mark.slow
def test_new_computation_at_each_block_of_a_three_block_model(tmp_path):
    """A three-block GPT-2: step ``i + 1`` holds a new computation in block ``i`` only; the
    reading names block ``i`` and calls every other block selection."""
    texts, calib = ps.persona_texts(48, seed=2), ps.persona_texts(24, seed=102)
    base = ps.base_model("gpt2", 3, 2)
    steps = [[ps.new_computation(layer, 0.5, 2)] for layer in range(3)]
    index = read(ps.build_series(tmp_path / "models", base, steps, calib), texts, tmp_path)
    for layer in range(3):
        assert sides(index, layer + 1) == {
            other: "novelty" if other == layer else "selection" for other in range(3)
        }
        assert index.table.set_index("step").loc[layer + 1, "layer"] == layer


# -- the read-out's parts ----------------------------------------------------------------------


def test_heldout_residuals_know_linear_and_unrelated_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 6, generator=g, dtype=torch.float64)
    fold = torch.arange(600) % 3
    linear = x @ torch.randn(6, 2, generator=g, dtype=torch.float64) + 1.5
    assert float(heldout_residuals(x, linear, fold, (1e-6,)).sum()) < 1e-6 * float(linear.pow(2).sum())
    noise = torch.randn(600, 2, generator=g, dtype=torch.float64)
    share = float(heldout_residuals(x, noise, fold, (1e-3, 1.0)).sum()) / float(
        (noise - noise.mean(0)).pow(2).sum()
    )
    assert 0.95 < share < 1.1  # nothing to predict: held-out error is the variance


def test_rotation_is_orthogonal_and_seeded():
    q = rotation(8, seed=3)
    assert torch.allclose(q @ q.T, torch.eye(8), atol=1e-5)
    assert torch.equal(q, rotation(8, seed=3)) and not torch.equal(q, rotation(8, seed=4))


def test_readout_config_is_checked():
    with pytest.raises(RlinterpError, match="n_folds"):
        ReadoutConfig(n_folds=1)
    with pytest.raises(RlinterpError, match="ridge"):
        ReadoutConfig(ridge=(0.0,))
    with pytest.raises(RlinterpError, match="min_control"):
        IndexConfig(min_control=1.0)
    with pytest.raises(RlinterpError, match="n_controls"):
        ReadoutConfig(n_controls=0)
