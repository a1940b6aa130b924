"""The planted checkpoints of ``tests/planted.py`` are what they claim: one output row changed,
the neuron firing on the same tokens everywhere, and the harvested residual stream moving by
exactly the planted write."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlinterp import HarvestConfig, ModelSeries, harvest

from .planted import FIRING_FRACTION, KINDS, PlantedModels, build_planted, neuron_activations, planted_prompts

ROW = "transformer.h.{layer}.mlp.c_proj.weight"


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> PlantedModels:
    return build_planted(tmp_path_factory.mktemp("planted"))


def test_variants_differ_from_the_base_in_one_output_row_only(planted: PlantedModels) -> None:
    base = load_file(planted.base / "model.safetensors")
    row = ROW.format(layer=planted.layer)
    expected = {
        "amplified": planted.amplify * planted.output_norm * planted.direction,
        "suppressed": planted.suppress * planted.output_norm * planted.direction,
        "rewired": planted.output_norm * planted.new_direction,
        "identical": planted.output_norm * planted.direction,
    }
    torch.testing.assert_close(base[row][planted.neuron], expected["identical"])
    for kind in KINDS:
        weights = load_file(planted.path(kind) / "model.safetensors")
        assert weights.keys() == base.keys()
        changed = [name for name in base if not torch.equal(base[name], weights[name])]
        assert changed == ([] if kind == "identical" else [row]), kind
        others = torch.ones(len(base[row]), dtype=torch.bool)
        others[planted.neuron] = False
        assert torch.equal(weights[row][others], base[row][others])
        torch.testing.assert_close(weights[row][planted.neuron], expected[kind])
    weights_file = "model.safetensors"
    assert (planted.base / weights_file).read_bytes() == (planted.identical / weights_file).read_bytes()
    assert abs(float(planted.direction @ planted.new_direction)) < 1e-6
    assert float(planted.direction.norm()) == pytest.approx(1.0) == float(planted.new_direction.norm())
    with pytest.raises(ValueError, match="kind must be"):
        planted.path("doubled")


def test_the_neuron_fires_often_and_on_the_same_tokens_everywhere(planted: PlantedModels) -> None:
    assert planted.firing_fraction == pytest.approx(FIRING_FRACTION, abs=0.005)
    held_out = planted_prompts(64, seed=7)
    acts = neuron_activations(planted.base, held_out)
    assert 0.2 < float((acts > 0).float().mean()) < 0.4  # measured 0.30 on prompts it was not set on
    for kind in KINDS:
        assert torch.equal(neuron_activations(planted.path(kind), held_out), acts), kind


def test_the_harvested_residual_moves_by_exactly_the_planted_write(
    planted: PlantedModels, tmp_path: Path
) -> None:
    """At the hook right after the planted MLP, a variant's residual stream is the base's plus
    (its write - the base's write) x the neuron's activation, and the neuron's write is a
    clear feature: where it fires, CONTRIBUTION_RATIO times the rest's RMS norm on average."""
    prompts = planted_prompts(32, seed=3)
    series = ModelSeries.from_paths([planted.base, *(planted.path(kind) for kind in KINDS)])
    store = harvest(series, prompts, tmp_path / "store", HarvestConfig(hooks=(planted.hook,), batch_size=16))
    acts = neuron_activations(planted.base, prompts)
    base = store.read("base", planted.hook)
    write = planted.output_norm * planted.direction
    new_writes = {
        "amplified": planted.amplify * write,
        "suppressed": planted.suppress * write,
        "rewired": planted.output_norm * planted.new_direction,
        "identical": write,
    }
    for label, kind in zip(store.labels[1:], KINDS, strict=True):
        expected = base + acts[:, None] * (new_writes[kind] - write)[None]
        torch.testing.assert_close(store.read(label, planted.hook), expected, atol=1e-5, rtol=1e-4)
    fires = acts > 0
    rest = base - acts[:, None] * write[None]
    ratio = (acts[fires] * planted.output_norm).mean() / rest.pow(2).sum(-1).mean().sqrt()
    assert float(ratio) == pytest.approx(2.0, rel=0.15)
