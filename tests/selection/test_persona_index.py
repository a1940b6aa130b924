"""Persona features, the selection-versus-novelty index, its transition and the causal
checks, on planted cases whose answers are known."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries
from rlinterp.organism.model import build_tokenizer
from rlinterp.selection.causal import (
    patch_subspace,
    random_basis,
    steer_and_ablate,
    steer_and_ablate_each,
    subspace_projector,
)
from rlinterp.selection.explanation import carriers, dictionary_share, step_parts
from rlinterp.selection.index import IndexConfig, behavioural_transition, change_point
from rlinterp.selection.personas import (
    PersonaSplit,
    auroc,
    decision_directions,
    decision_positions,
    effect_size,
    persona_directions,
    persona_latents,
)

from ..conftest import sparse_data, synthetic_store, tiny_hf_config, tree_hashes

HOOK = "blocks.0.hook_resid_post"
D, N_DIRS, PER_PROMPT = 32, 16, 16


class Oracle:
    """A dictionary that knows the base's features exactly: least-squares coefficients on
    them (clipped at zero) and their sum."""

    def __init__(self, dirs: torch.Tensor):
        self.dirs, self.pinv = dirs, torch.linalg.pinv(dirs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.pinv).clamp_min(0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.dirs


def _planted(n_prompts: int = 64):
    """Base activations built from N_DIRS features, and checkpoints that amplify one of them,
    add a direction outside their span, or leave everything unchanged."""
    x, dirs = sparse_data(n_prompts * PER_PROMPT, D, N_DIRS, seed=0)
    coef = x @ torch.linalg.pinv(dirs)
    basis, _ = torch.linalg.qr(dirs.T)
    outside = torch.randn(D, generator=torch.Generator().manual_seed(1))
    outside -= basis @ (basis.T @ outside)
    outside /= outside.norm()
    fires = (coef[:, 0] > 0).float().unsqueeze(1)
    return (
        dirs,
        outside,
        {
            "base": x,
            "same": x.clone(),
            "amplified": x + 2 * coef[:, :1] * dirs[0],  # feature 0 at three times its strength
            "new": x + 1.5 * fires * outside,  # a new output direction on the same tokens
        },
    )


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    dirs, outside, acts = _planted()
    store = synthetic_store(tmp_path_factory.mktemp("planted"), acts, HOOK, PER_PROMPT)
    return store, dirs, outside


def test_dictionary_share_is_zero_for_identical_and_amplified_and_one_for_a_new_direction(planted_store):
    store, dirs, _ = planted_store
    oracle = Oracle(dirs)
    table = dictionary_share([[step_parts(store, HOOK, oracle, label) for label in store.labels]])
    table = table.set_index("label")
    for label in ("base", "same"):
        assert table.loc[label, "dictionary_share"] == 0 and table.loc[label, "dictionary_share_lo"] == 0
        assert table.loc[label, "dictionary_share_hi"] == 0
    assert table.loc["amplified", "dictionary_share"] < 1e-6  # a re-weighting of a base feature
    assert table.loc["new", "dictionary_share"] > 0.999  # nothing in the base's dictionary expresses it
    assert table.loc["new", "dictionary_share_lo"] > 0.99
    planted_shift = 2 * (store.read("base", HOOK) @ torch.linalg.pinv(dirs))[:, 0].mean()
    assert table.loc["amplified", "mean_shift_norm"] == pytest.approx(float(planted_shift), rel=1e-4)


def test_dictionary_share_with_trained_saes_of_two_seeds(planted_store, tmp_path):
    """Two seeds of a trained SAE: the share separates the amplified feature from the new
    direction, and the interval (texts and dictionary seeds) covers both seeds' estimates."""
    from rlinterp.dictionaries.sae import SAETrainConfig, train_sae

    store, _, _ = planted_store
    parts = []
    for seed in (0, 1):
        cfg = SAETrainConfig(d_sae=32, k=4, n_tokens=60_000, batch_size=256, lr=3e-3, seed=seed)
        sae = train_sae(store, "base", HOOK, tmp_path / f"sae-{seed}", cfg).sae
        parts.append([step_parts(store, HOOK, sae, label) for label in store.labels])
    table = dictionary_share(parts).set_index("label")
    other = dictionary_share(parts[1:]).set_index("label")
    assert table.loc["same", "dictionary_share"] == 0
    assert table.loc["amplified", "dictionary_share_hi"] < 0.25
    assert table.loc["new", "dictionary_share_lo"] > 0.75
    assert table.loc["new", "fvu_drift"] > table.loc["amplified", "fvu_drift"]
    for label in ("amplified", "new"):
        for estimate in (table.loc[label, "dictionary_share"], other.loc[label, "dictionary_share"]):
            assert (
                table.loc[label, "dictionary_share_lo"] <= estimate <= table.loc[label, "dictionary_share_hi"]
            )


def test_carriers_name_the_amplified_latent(planted_store):
    store, dirs, _ = planted_store
    found = carriers(store, HOOK, Oracle(dirs), "amplified", top=3)
    assert found["latent"].iloc[0] == 0 and found["share"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    assert found["mean_change"].iloc[0] > 0
    assert carriers(store, HOOK, Oracle(dirs), "same").empty


def test_change_point_known_trajectories():
    """A jump from 0.1 to 0.9 at the fourth step (replicates jittered around it) is the
    transition, with a zero-width interval; a flat trajectory and a rise that stays below
    the boundary are none."""
    cfg = IndexConfig(n_bootstrap=50)
    rng = np.random.default_rng(0)
    point = np.array([0.0, 0.1, 0.1, 0.9, 0.95])
    replicates = point + rng.uniform(-0.03, 0.03, size=(50, 5))
    found = change_point(point, replicates, [0, 1, 2, 3, 4], cfg)
    assert found["found"] and found["step"] == 3 and found["step_lo"] == found["step_hi"] == 3
    assert found["jump"] > 0.8 and found["support"] == 1.0
    flat = change_point(np.zeros(3), np.zeros((50, 3)), [0, 1, 2], cfg)
    assert not flat["found"] and flat["step"] is None
    below = change_point(
        np.array([0.0, 0.1, 0.4, 0.45]), np.tile([0.0, 0.1, 0.4, 0.45], (50, 1)), range(4), cfg
    )
    assert not below["found"] and below["jump"] > 0.3


def test_index_config_and_dictionary_width_are_checked(planted_store):
    store, _, _ = planted_store
    with pytest.raises(RlinterpError, match="confidence"):
        IndexConfig(confidence=1.5)
    with pytest.raises(RlinterpError, match="n_bootstrap"):
        IndexConfig(n_bootstrap=2)
    with pytest.raises(RlinterpError, match="min_jump"):
        IndexConfig(min_jump=float("nan"))

    class Wide(Oracle):
        class cfg:  # noqa: N801 - mimics SAELens' `sae.cfg.d_in`
            d_in = 64

    with pytest.raises(RlinterpError, match="d_in 64"):
        step_parts(store, HOOK, Wide(torch.eye(D)), "new")


def test_behavioural_transition():
    import pandas as pd

    table = pd.DataFrame(
        {"regime": ["s"] * 4 + ["w"] * 2, "step": [0, 5, 10, 20, 0, 5], "share_none": [0, 0.2, 0.7, 1, 0, 0]}
    )
    assert behavioural_transition(table, "s") == 10
    assert behavioural_transition(table, "w") is None


# -- persona features ------------------------------------------------------------------------


def _persona_store(root, n_per_persona: int = 12, signal: float = 2.0):
    """Texts of three personas; persona p adds ``signal`` along coordinate p to every token."""
    personas = ["a", "b", "c"]
    labels = [p for p in personas for _ in range(n_per_persona)]
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(len(labels) * PER_PROMPT, D, generator=g)
    for i, p in enumerate(labels):
        acts[i * PER_PROMPT : (i + 1) * PER_PROMPT, personas.index(p)] += signal
    return synthetic_store(root, {"base": acts, "post": acts.clone()}, HOOK, PER_PROMPT), labels


def test_persona_directions_separate_held_out_texts(tmp_path):
    store, labels = _persona_store(tmp_path)
    found = persona_directions(store, labels, held_out_fraction=0.3, seed=0)
    assert found.best_hook == HOOK
    assert (found.table["auroc"] == 1.0).all()
    assert (found.table["n_held_out"] == 4).all() and (found.table["n_fit"] == 8).all()
    # each direction points at its persona's coordinate
    assert found.directions[HOOK][:, :3].abs().argmax(dim=1).tolist() == [0, 1, 2]
    basis = found.basis(HOOK)
    assert basis.shape == (D, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    # a dataset with no persona signal scores near chance
    noise, labels = _persona_store(tmp_path / "noise", signal=0.0)
    assert persona_directions(noise, labels).table["auroc"].mean() < 0.8


def test_persona_latents_rank_the_planted_latent_first(tmp_path):
    store, labels = _persona_store(tmp_path)
    table = persona_latents(store, labels, HOOK, encode=lambda x: x.clamp_min(0), top=3)
    best = table[table["rank"] == 0].set_index("persona")
    assert best["latent"].to_dict() == {"a": 0, "b": 1, "c": 2}
    assert (best["auroc"] == 1.0).all() and (best["mean_in"] > best["mean_out"]).all()


def test_persona_inputs_are_checked(tmp_path):
    store, labels = _persona_store(tmp_path)
    with pytest.raises(RlinterpError, match="at least two personas"):
        persona_directions(store, ["a"] * len(labels))
    with pytest.raises(RlinterpError, match="too few texts"):
        persona_directions(store, ["a"] * (len(labels) - 3) + ["b"] * 3)
    with pytest.raises(RlinterpError, match="36 texts"):
        persona_directions(store, labels[:-1])
    with pytest.raises(RlinterpError, match="held_out_fraction"):
        PersonaSplit.make(labels, held_out_fraction=1.0)


def test_auroc_and_effect_size_known_values():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    truth = torch.tensor([False, False, True, True])
    assert auroc(scores, truth) == 0.75  # the classic example
    assert auroc(torch.ones(4), truth) == 0.5  # ties count a half
    assert effect_size(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([True, True, False, False])) == float(
        "inf"
    )
    assert effect_size(torch.tensor([1.0, 3.0, 0.0, 2.0]), torch.tensor([True, True, False, False])) == (
        pytest.approx(1 / 2**0.5)
    )


def test_persona_share_of_the_shift(planted_store):
    store, dirs, outside = planted_store
    along = torch.nn.functional.normalize(dirs[:1], dim=-1).T  # the amplified feature's direction
    parts = [step_parts(store, HOOK, Oracle(dirs), label) for label in ("base", "amplified", "new")]
    table = dictionary_share([parts], persona_basis=along).set_index("label")
    assert table.loc["amplified", "persona_share"] == pytest.approx(1.0, abs=1e-4)
    assert table.loc["amplified", "persona_baseline"] == pytest.approx(1 / D)
    assert table.loc["new", "persona_share"] < 0.5
    assert table.loc["base", "persona_share"] == 0


# -- causal checks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shifted_pair(tmp_path_factory):
    """A base GPT-2 and a checkpoint whose first block writes a constant extra vector ``v``
    into the residual stream (its MLP output bias moved by ``v``): the series and ``v``."""
    root = tmp_path_factory.mktemp("causal")
    torch.manual_seed(0)
    tokenizer = build_tokenizer("abcdefghijklmnopqrstuvwxyz ")
    config = tiny_hf_config("gpt2", vocab_size=len(tokenizer))
    config.bos_token_id = config.eos_token_id = tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    vector = 3 * torch.nn.functional.normalize(torch.randn(config.n_embd), dim=0)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.bias += vector
    model.save_pretrained(root / "step-1")
    tokenizer.save_pretrained(root / "step-1")
    return ModelSeries.from_paths([root / "base", root / "step-1"]), vector


@pytest.fixture(scope="module")
def shifted_series(shifted_pair, tmp_path_factory):
    """``shifted_pair`` harvested on random texts: the series, the store and ``v``."""
    series, vector = shifted_pair
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    texts = ["".join(letters[int(i)] for i in torch.randint(0, 27, (20,), generator=g)) for _ in range(12)]
    root = tmp_path_factory.mktemp("shifted-store")
    store = harvest(
        series, PromptSet.from_list(texts), root / "store", HarvestConfig(hooks=(HOOK,), batch_size=4)
    )
    return series, store, vector


def test_steering_along_the_planted_shift_recovers_the_checkpoint(shifted_series):
    series, store, vector = shifted_series
    result = steer_and_ablate(series, store, "step-1", HOOK, vector)
    assert result.kl_gap > 1e-3
    assert result.steering_recovery > 0.999 and result.ablation_loss > 0.999
    assert result.random_steering_recovery < 0.5 and result.random_ablation_loss < 0.5
    nothing = steer_and_ablate(series, store, "step-1", HOOK, torch.zeros_like(vector))
    assert nothing.steering_recovery == pytest.approx(0, abs=1e-6)
    with pytest.raises(RlinterpError, match="shape"):
        steer_and_ablate(series, store, "step-1", HOOK, torch.zeros(3))
    with pytest.raises(RlinterpError, match="no checkpoint"):
        steer_and_ablate(series, store, "step-9", HOOK, vector)


def test_steering_several_vectors_on_shared_runs_equals_one_call_each(shifted_series):
    series, store, vector = shifted_series
    vectors = [vector, 0.5 * vector, torch.zeros_like(vector)]
    together = steer_and_ablate_each(series, store, "step-1", HOOK, vectors, seed=3)
    for got, v in zip(together, vectors, strict=True):
        alone = steer_and_ablate(series, store, "step-1", HOOK, v, seed=3)
        for name, value in alone.__dict__.items():
            if isinstance(value, float):
                assert getattr(got, name) == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), name
            else:
                assert getattr(got, name) == value, name
    assert together[0].steering_recovery > 0.999
    assert together[2].steering_recovery == pytest.approx(0, abs=1e-6)
    with pytest.raises(RlinterpError, match="shape"):
        steer_and_ablate_each(series, store, "step-1", HOOK, [vector, torch.zeros(3)])


def test_subspace_patch_along_the_planted_shift_recovers_it_and_its_complement_nothing(shifted_series):
    series, store, vector = shifted_series
    along = vector.unsqueeze(1)
    complement = torch.linalg.svd(torch.eye(len(vector)) - subspace_projector(along)).U[:, :-1]
    # the checkpoint's activation differs from the base's by exactly ``vector`` at every
    # token, so patching its span makes the base the checkpoint, and the rest moves nothing
    result = patch_subspace(series, store, "step-1", HOOK, 5 * along, n_random=2)
    assert result.intervention == "subspace" and result.at == "kept"
    assert result.steering_recovery > 0.999 and result.ablation_loss > 0.999
    assert result.vector_norm == pytest.approx(float(vector.norm()), rel=1e-4)
    assert result.random_steering_recovery < 0.5
    nothing = patch_subspace(series, store, "step-1", HOOK, complement)
    assert nothing.steering_recovery == pytest.approx(0, abs=1e-4)
    assert nothing.ablation_loss == pytest.approx(0, abs=1e-4)
    with pytest.raises(RlinterpError, match="subspace basis has shape"):
        patch_subspace(series, store, "step-1", HOOK, torch.zeros(3, 1))
    with pytest.raises(RlinterpError, match="n_random"):
        patch_subspace(series, store, "step-1", HOOK, along, n_random=0)
    with pytest.raises(RlinterpError, match="at must be one of"):
        patch_subspace(series, store, "step-1", HOOK, along, at="everywhere")
    # texts without a prompt/response split have no decision position
    with pytest.raises(RlinterpError, match="prompt/response split"):
        patch_subspace(series, store, "step-1", HOOK, along, at="decision")


def test_stacked_edits_read_as_separate_runs(shifted_series, monkeypatch):
    """Edits of one batch run stacked in one pass; each block is what that edit alone gives,
    also when the size cap splits the stack (one edit per pass)."""
    from rlinterp.models import stacking
    from rlinterp.selection import causal

    series, store, vector = shifted_series
    model = series.load(series.base)
    batch = next(causal._batches(store, "cpu", "kept"))
    edits = [causal._offset(batch[1], scale * vector) for scale in (0.0, 1.0, -2.0)]

    def alone(edit):
        logits = model.run_with_hooks(batch[0], fwd_hooks=[(HOOK, edit)], return_type="logits")
        return torch.log_softmax(logits.float()[batch[2]], dim=-1)

    expected = [alone(edit) for edit in edits]
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the edits do differ
    for cap in (stacking.STACKED_VALUES, 1):
        monkeypatch.setattr(stacking, "STACKED_VALUES", cap)
        for got, want in zip(causal._log_probs_each(model, batch, HOOK, edits), expected, strict=True):
            assert torch.allclose(got, want, atol=1e-5)


def test_random_basis_and_projector():
    basis = random_basis(8, 3, seed=1)
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    assert torch.equal(basis, random_basis(8, 3, seed=1)) and not torch.equal(basis, random_basis(8, 3, 2))
    projector = subspace_projector(torch.cat([basis, 2 * basis[:, :1]], dim=1))  # rank 3, redundant
    assert torch.allclose(projector @ projector, projector, atol=1e-5)
    assert int(torch.linalg.matrix_rank(projector)) == 3


def test_selection_config_checks_its_causal_settings():
    from rlinterp.selection.analysis import SelectionConfig

    with pytest.raises(RlinterpError, match="behaviour_edits must name causal edits"):
        SelectionConfig(behaviour_edits=("persona", "sideways"))
    with pytest.raises(RlinterpError, match="n_random must be at least 1"):
        SelectionConfig(n_random=0)


def test_decision_positions():
    keep = torch.tensor([[False, False, True, True], [False, True, True, False]])
    assert decision_positions(keep).tolist() == [1, 0]
    with pytest.raises(RlinterpError, match=r"texts \[4, 5\] have no prompt before their response"):
        decision_positions(torch.tensor([[True, True], [False, False]]), first_prompt=4)


def test_decision_directions_read_the_persona_from_the_prompt(shifted_pair, tmp_path):
    """Texts whose last prompt token (``x`` or ``y``) names the persona: directions read at the
    decision position separate the personas perfectly. A checkpoint whose residual differs
    from the base's by a planted vector: patching its span at the decision position recovers
    more of the decision's change than random directions, and its complement recovers none."""
    series, vector = shifted_pair
    g = torch.Generator().manual_seed(1)
    letters = "abcdefghijklmnopqrstuvw "
    rows = []
    for persona, marker in (("p", "x"), ("q", "y")):
        for _ in range(10):
            context = "".join(letters[int(i)] for i in torch.randint(0, len(letters), (6,), generator=g))
            rows.append({"prompt": context + marker, "response": "abc", "persona": persona})
    texts = PromptSet.from_records(rows, source="test")
    store = harvest(series, texts, tmp_path / "store", HarvestConfig(hooks=(HOOK,), response_only=True))
    found = decision_directions(store, texts.labels["persona"], series.load(series.base), [HOOK])
    assert (found.table["auroc"] == 1.0).all() and found.directions[HOOK].shape == (2, len(vector))
    along = patch_subspace(series, store, "step-1", HOOK, vector.unsqueeze(1), at="decision", n_random=4)
    assert along.at == "decision" and along.kl_gap > 0
    assert along.steering_recovery > 0.5 and along.steering_recovery > along.random_steering_recovery
    complement = torch.linalg.svd(torch.eye(len(vector)) - subspace_projector(vector.unsqueeze(1))).U[:, :-1]
    nothing = patch_subspace(series, store, "step-1", HOOK, complement, at="decision", n_random=1)
    assert nothing.steering_recovery == pytest.approx(0, abs=1e-4)


# -- the whole analysis ----------------------------------------------------------------------


def summary_choice_fields(out) -> bool:
    import json
    import re

    summary = json.loads((out / "summary.json").read_text())
    step = summary["steps"][-1]
    return re.fullmatch(r"blocks\.\d+\.hook_resid_post", summary["decision_hook"]) is not None and all(
        isinstance(step[k], float) for k in ("choice_recovery", "choice_loss", "choice_behaviour_recovery")
    )


def test_run_selection_on_identical_checkpoints_reads_as_no_change(tmp_path, micro_config):
    import dataclasses
    import json
    import shutil

    from rlinterp import build_organism
    from rlinterp.selection.analysis import SelectionConfig, run_selection

    config = dataclasses.replace(
        micro_config, corpus=dataclasses.replace(micro_config.corpus, persona_texts_per_persona=10)
    )
    organism = build_organism(tmp_path / "org", seed=0, config=config)
    for step in (1, 2):
        shutil.copytree(organism.base, tmp_path / f"step-{step}")
    series = ModelSeries.from_paths([organism.base, tmp_path / "step-1", tmp_path / "step-2"])
    cfg = SelectionConfig(
        hook="blocks.0.hook_resid_post",
        dictionary_config=dataclasses.replace(SelectionConfig().dictionary_config, n_tokens=5_000, d_sae=32),
        index=IndexConfig(n_bootstrap=50),
    )
    result = run_selection(series, PromptSet.from_organism(organism.root), tmp_path / "out", cfg)
    table = result.index.table
    assert (table["index"] == 0).all() and (table["index_lo"] <= 0).all() and (table["index_hi"] >= 0).all()
    assert not result.index.transition["found"]
    assert (result.causal["kl_gap"] == 0).all()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["transition"]["found"] is False and summary["hook"] == "blocks.0.hook_resid_post"
    assert set(summary["persona_auroc"]) == {"flatterer", "helper", "terse"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "rlinterp.selection"
    weak = run_selection(
        ModelSeries.from_organism(organism.root, "weak"),
        PromptSet.from_organism(organism.root),
        tmp_path / "weak",
        cfg,
        organism=organism,
        regime="weak",
    )
    assert set(weak.causal["edit"]) == {"persona", "full", "persona_choice"} and len(weak.causal) == 6
    assert {
        "behaviour_steering_shares",
        "behaviour_ablation_reward",
        "behaviour_random_steering_shares",
    } <= set(weak.causal.columns)
    assert summary_choice_fields(tmp_path / "weak")
    assert (weak.causal["kl_gap"] > 0).all()
    summary = json.loads((tmp_path / "weak" / "summary.json").read_text())
    assert "behavioural_transition" in summary and set(summary["readout_spearman"]) == set(
        weak.readout["persona"]
    )
    assert len(weak.readout) == 3 * 3 and weak.readout["share"].between(0, 1).all()
    # the same command again reads the finished analysis back
    again = run_selection(
        ModelSeries.from_organism(organism.root, "weak"),
        PromptSet.from_organism(organism.root),
        tmp_path / "weak",
        cfg,
        organism=organism,
        regime="weak",
    )
    assert again.index.table.equals(weak.index.table) and again.causal.equals(weak.causal)
    assert again.readout_spearman() == pytest.approx(weak.readout_spearman(), nan_ok=True)
    # a given dictionary counts by content: replacing it at the same path is a change
    shutil.copytree(tmp_path / "weak" / "dictionary", tmp_path / "sae")
    given = dataclasses.replace(cfg, dictionary=str(tmp_path / "sae"))
    with_given = run_selection(series, PromptSet.from_organism(organism.root), tmp_path / "given", given)
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RlinterpError, match="dictionary changed"):
        run_selection(series, PromptSet.from_organism(organism.root), tmp_path / "given", given)
    assert with_given.hook == cfg.hook
    # an organism directory is never written into
    before = tree_hashes(organism.root)
    with pytest.raises(RlinterpError, match="holds a finished organism, not a selection analysis"):
        run_selection(series, PromptSet.from_organism(organism.root), organism.root, cfg)
    assert tree_hashes(organism.root) == before
    with pytest.raises(RlinterpError, match="no 'mood' label"):
        run_selection(
            series, PromptSet.from_organism(organism.root), tmp_path / "x", SelectionConfig(label="mood")
        )


def test_residual_offset_equals_the_planted_bias_and_zero_steering_reproduces_the_table(
    tmp_path, micro_config
):
    from rlinterp import build_organism
    from rlinterp.organism.behaviour import SHARE_COLUMNS
    from rlinterp.selection.steering import residual_offset, steered_behaviour

    organism = build_organism(tmp_path / "org", seed=0, config=micro_config)
    base = AutoModelForCausalLM.from_pretrained(organism.base).eval()
    shifted = AutoModelForCausalLM.from_pretrained(organism.base).eval()
    vector = torch.randn(base.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shifted.transformer.h[0].mlp.c_proj.bias += vector
        ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
        with residual_offset(base, "blocks.0.hook_resid_post", vector):
            steered = base(ids).logits
        assert torch.allclose(steered, shifted(ids).logits, atol=1e-5)
        assert not torch.allclose(base(ids).logits, steered, atol=1e-3)  # the hook was removed
    with (
        pytest.raises(RlinterpError, match="hook_resid_post"),
        residual_offset(base, "blocks.0.attn.hook_z", vector),
    ):
        pass

    table = organism.behaviour().set_index(["regime", "step"])
    row = steered_behaviour(organism, "weak", 2, "blocks.0.hook_resid_post", torch.zeros_like(vector))
    expected = table.loc[("weak", 2)]
    assert [row[c] for c in SHARE_COLUMNS] == pytest.approx([expected[c] for c in SHARE_COLUMNS])
    assert row["reward"] == pytest.approx(expected["reward"])


def test_decision_patch_moves_only_the_last_prompt_position(tmp_path, micro_config):
    from rlinterp import build_organism
    from rlinterp.selection.steering import decision_patch

    organism = build_organism(tmp_path / "org", seed=0, config=micro_config)
    base = AutoModelForCausalLM.from_pretrained(organism.base).eval()
    strong = organism.checkpoints("strong")
    source = AutoModelForCausalLM.from_pretrained(strong[max(strong)]).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    basis = random_basis(base.config.n_embd, 2, seed=0)
    projector = subspace_projector(basis)

    def block_output(model, tokens):
        seen = []
        handle = model.transformer.h[0].register_forward_hook(
            lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            model(tokens)
        finally:
            handle.remove()
        return seen[-1]

    with torch.no_grad():
        h_base, h_source = block_output(base, ids), block_output(source, ids)
        with decision_patch(base, source, HOOK, basis):
            patched = block_output(base, ids)
            one_step = block_output(base, ids[:, :1])
        with decision_patch(base, source, HOOK, torch.eye(base.config.n_embd)):
            full = block_output(base, ids)
        after = block_output(base, ids)
        assert torch.equal(one_step, block_output(base, ids[:, :1]))  # one new position: untouched
    assert torch.equal(patched[:, :-1], h_base[:, :-1])
    expected = h_base[:, -1] + (h_source[:, -1] - h_base[:, -1]) @ projector
    assert torch.allclose(patched[:, -1], expected, atol=1e-5)
    assert not torch.allclose(patched[:, -1], h_base[:, -1], atol=1e-3)
    assert torch.allclose(full[:, -1], h_source[:, -1], atol=1e-5)
    assert torch.equal(after, h_base)  # the hooks were removed


def test_behaviour_recovery_known_values():
    from rlinterp.organism.behaviour import SHARE_COLUMNS
    from rlinterp.selection.steering import behaviour_recovery

    def row(helper: float, terse: float, reward: float) -> dict:
        return {
            **dict.fromkeys(SHARE_COLUMNS, 0.0),
            "share_helper": helper,
            "share_terse": terse,
            "reward": reward,
        }

    base, post = row(0.5, 0.5, 0.6), row(1.0, 0.0, 1.0)
    assert behaviour_recovery(base, post, row(0.75, 0.25, 0.8)) == pytest.approx(
        {"shares": 0.5, "reward": 0.5}
    )
    assert behaviour_recovery(base, post, post) == {"shares": 1.0, "reward": 1.0}
    same = behaviour_recovery(base, base, post)
    assert same["shares"] != same["shares"] and same["reward"] != same["reward"]  # NaN: nothing to recover
