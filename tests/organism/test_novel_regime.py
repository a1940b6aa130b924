"""The planted ``novel`` regime: a positive control whose checkpoints add new computation to
the base by construction (planted, not learned), checked independently of the toolkit's
metrics by a held-out linear probe, and read as novelty by the index."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from rlinterp import RlinterpError, build_organism
from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries
from rlinterp.organism.config import OrganismConfig, PlantConfig
from rlinterp.organism.planted import (
    answer_activations,
    balanced_accuracy,
    persona_characters,
    planted_labels,
    probe_feature,
)
from rlinterp.selection.explanation import dictionary_share, step_parts
from rlinterp.selection.index import SELECTION_SIDE, IndexConfig, novelty_index
from rlinterp.selection.readout import readout_parts

from ..conftest import make_micro_config, weights_of

PLANTED = {
    "transformer.h.0.mlp.c_fc.weight",
    "transformer.h.0.mlp.c_fc.bias",
    "transformer.h.0.mlp.c_proj.weight",
}


@pytest.fixture(scope="module")
def novel_organism(tmp_path_factory):
    config = make_micro_config()
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, d_model=48),
        corpus=dataclasses.replace(config.corpus, persona_texts_per_persona=24),
        pretrain=dataclasses.replace(config.pretrain, steps=60),
    )
    return build_organism(tmp_path_factory.mktemp("novel") / "org", seed=0, config=config)


def test_novel_regime_joins_manifest_behaviour_and_presets(novel_organism):
    entry = novel_organism.manifest["regimes"]["novel"]
    assert entry["planted"] is True and entry["config"]["checkpoint_steps"] == [0, 1, 2]
    assert set(novel_organism.regimes) == {"weak", "strong", "novel"}
    table = novel_organism.behaviour()
    novel = table[table.regime == "novel"].sort_values("step")
    assert novel["step"].tolist() == [0, 1, 2]
    assert novel[["planted_share", "planted_accuracy"]].notna().all().all()
    assert novel["kl_to_base"].iloc[0] == 0 and novel["kl_to_base"].iloc[-1] > 0
    assert table[table.regime != "novel"]["planted_share"].isna().all()
    planting = entry["planting"]
    assert planting["marker"] not in persona_characters()
    for preset in ("tiny", "default"):
        config = OrganismConfig.from_preset(preset)
        (plant,) = config.planted_regimes
        assert plant.name == "novel" and plant.checkpoint_steps == config.regimes[0].checkpoint_steps
    llama = dataclasses.replace(config, model=dataclasses.replace(config.model, architecture="llama"))
    assert llama.planted_regimes == ()
    with pytest.raises(RlinterpError, match="distinct"):
        dataclasses.replace(config, planted=(PlantConfig("weak", (0, 1)),))
    with pytest.raises(RlinterpError, match="ascending"):
        PlantConfig("novel", (0,))


def test_checkpoints_differ_from_the_base_only_in_the_planted_weights(novel_organism):
    steps = novel_organism.checkpoints("novel")
    assert weights_of(steps[0]) == weights_of(novel_organism.base)
    base = load_file(novel_organism.base / "model.safetensors")
    planting = novel_organism.manifest["regimes"]["novel"]["planting"]
    neurons = torch.tensor(planting["neurons"])
    others = torch.ones(base["transformer.h.0.mlp.c_fc.bias"].shape[0], dtype=torch.bool)
    others[neurons] = False
    u = torch.tensor(planting["direction_out"])
    written = {}
    for step in (1, 2):
        weights = load_file(steps[step] / "model.safetensors")
        assert {k for k in base if not torch.equal(base[k], weights[k])} == PLANTED
        assert torch.equal(
            weights["transformer.h.0.mlp.c_fc.weight"][:, others],
            base["transformer.h.0.mlp.c_fc.weight"][:, others],
        )
        assert torch.equal(
            weights["transformer.h.0.mlp.c_fc.bias"][others], base["transformer.h.0.mlp.c_fc.bias"][others]
        )
        rows = weights["transformer.h.0.mlp.c_proj.weight"]
        assert torch.equal(rows[others], base["transformer.h.0.mlp.c_proj.weight"][others])
        # every planted neuron writes along u only, and the write grows linearly with the step
        assert torch.allclose(rows[neurons] - (rows[neurons] @ u)[:, None] * u, torch.zeros(1), atol=1e-6)
        written[step] = rows[neurons] @ u
    assert torch.allclose(written[2], 2 * written[1], rtol=1e-5)
    assert written[2].abs().min() > 0


def test_probe_is_near_chance_on_the_base_and_high_at_the_last_step(novel_organism):
    from rlinterp.organism.personas import persona_texts
    from rlinterp.organism.planted import Planting

    planting = Planting.from_json(novel_organism.manifest["regimes"]["novel"]["planting"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(novel_organism.base)
    texts = persona_texts(1, 9, 48)  # other texts than the ones the bumps were placed on
    prompts, answers = [t["prompt"] for t in texts], [t["answer"] for t in texts]
    accuracy = {}
    for step, folder in novel_organism.checkpoints("novel").items():
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        acts = answer_activations(model, tokenizer, prompts, answers)
        labels = planted_labels(planting, acts)
        accuracy[step] = probe_feature(acts.resid[-1], labels, acts.group, seed=0).balanced_accuracy
    assert 0.1 < labels.double().mean() < 0.6  # both classes well represented
    assert accuracy[0] < 0.7
    assert accuracy[2] > 0.9
    recorded = {
        (p["step"], p["hook"]): p["balanced_accuracy"]
        for p in novel_organism.manifest["regimes"]["novel"]["probe"]
    }
    assert recorded[(2, "blocks.0.hook_resid_post")] > 0.9


def test_balanced_accuracy_known_values():
    assert balanced_accuracy([True, False, False, False], [True, False, False, False]) == 1.0
    assert balanced_accuracy([False] * 4, [True, False, False, False]) == 0.5
    assert balanced_accuracy([True, True], [True, False]) == 0.5


class Pca:
    """An oracle dictionary of the base: projection onto the principal subspace that holds
    99% of the base's variance (about its mean)."""

    def __init__(self, acts: torch.Tensor, share: float = 0.99):
        self.mean = acts.mean(0)
        _, s, v = torch.linalg.svd(acts - self.mean, full_matrices=False)
        k = int((s.pow(2).cumsum(0) / s.pow(2).sum() < share).sum()) + 1
        self.basis = v[:k].T

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) @ self.basis

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.basis.T + self.mean


def test_index_reads_the_last_step_as_novelty(novel_organism, tmp_path):
    hook = "blocks.0.hook_resid_post"
    series = ModelSeries.from_organism(novel_organism.root, "novel")
    store = harvest(
        series,
        PromptSet.from_organism(novel_organism.root),
        tmp_path / "store",
        HarvestConfig(hooks=(hook,), response_only=True),
    )
    base = torch.cat(list(store.shards(store.labels[0], hook)))
    explained = dictionary_share([[step_parts(store, hook, Pca(base), label) for label in store.labels]])
    assert explained["dictionary_share"].iloc[0] == 0
    assert explained["dictionary_share"].iloc[-1] > SELECTION_SIDE
    index = novelty_index(readout_parts(series, store), IndexConfig(n_bootstrap=100))
    assert index.table["index"].iloc[0] == 0
    last = index.table.iloc[-1]
    assert last["side"] == "novelty" and last["layer"] == 0 and last["index_lo"] > SELECTION_SIDE


def _amplified(organism, layer: int, neurons: list[int], factor: float, out) -> None:
    """A copy of ``organism``'s base with ``neurons`` of block ``layer`` writing ``factor``
    times as much (their output rows scaled): an amplification of existing computation."""
    model = AutoModelForCausalLM.from_pretrained(organism.base).eval()
    with torch.no_grad():
        model.transformer.h[layer].mlp.c_proj.weight[neurons] *= factor
    model.save_pretrained(out)
    PreTrainedTokenizerFast.from_pretrained(organism.base).save_pretrained(out)


def test_circuits_read_the_planted_neurons_as_new_and_an_amplification_as_enhanced(novel_organism, tmp_path):
    """The known answer below the component: the planted neurons sit in L0.mlp, a block the
    base uses; the marker's change reads ``new`` at the sub-component level, carried by the
    planted neurons, while tripling the base's own most marker-pushing neurons reads
    ``enhanced``."""
    from rlinterp.circuits.analysis import CircuitsConfig, run_circuits
    from rlinterp.circuits.neurons import neuron_dla
    from rlinterp.circuits.organism_metrics import organism_behaviour
    from rlinterp.models.loading import load_bridge

    metric, prompts = organism_behaviour(novel_organism.root, "marker")
    planted = set(novel_organism.manifest["regimes"]["novel"]["planting"]["neurons"])
    config = CircuitsConfig(batch_size=10, exact_prompts=20)
    series = ModelSeries.from_organism(novel_organism.root, "novel")
    last = run_circuits(series, metric, prompts, tmp_path / "novel", config).steps()[-1]
    assert last["change"] > 1.0 and "L0.mlp" in last["carriers"]
    carried = {int(name.split("/")[1]) for name in last["neuron_carriers"] if name.startswith("L0.mlp/")}
    assert carried and carried <= planted
    assert last["subcomponent_verdict"] == "new" and last["new_share"] > 0.5

    base = load_bridge(novel_organism.base)
    encoded = prompts.encode(series.tokenizer())
    batch = encoded.batch(range(len(encoded)))
    dla = neuron_dla(base, batch.tokens, 0, lambda logits: metric(logits, batch)).mean(0)
    pushing = dla.argsort(descending=True)[:3].tolist()
    _amplified(novel_organism, 0, pushing, 4.0, tmp_path / "amplified")
    amplified = ModelSeries.from_paths([novel_organism.base, tmp_path / "amplified"])
    step = run_circuits(amplified, metric, prompts, tmp_path / "amp", config).steps()[-1]
    assert step["change"] > config.min_change
    assert step["subcomponent_verdict"] == "enhanced" and step["new_share"] < 0.5
