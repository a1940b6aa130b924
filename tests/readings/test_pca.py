"""Principal components of the differences know their answer: a planted rank-1 change is the
first component (|cos| >= 0.95) with most of the variance, in a harvested GPT-2 whose one
neuron's write was amplified, in a Llama whose one neuron's write was rewritten, and in a
store whose change flips sign with the prompt's label (the mean difference cancels there;
the component does not, and the labels' projections have opposite signs). A model against
itself has no variance."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.models.series import ModelSeries
from rlinterp.organism.model import build_tokenizer
from rlinterp.readings.pca import difference_pca

from ..conftest import synthetic_store, tiny_hf_config
from ..planted import build_planted, planted_prompts


def test_an_amplified_neuron_is_the_first_component(tmp_path):
    planted = build_planted(tmp_path / "planted")
    series = ModelSeries.from_paths([planted.base, planted.amplified, planted.identical])
    store = harvest(series, planted_prompts(64), tmp_path / "store", HarvestConfig(hooks=(planted.hook,)))
    pca = difference_pca(store, n_components=3)
    amplified, identical = (c.label for c in series.checkpoints[1:])
    first = pca.components[(amplified, planted.hook)][0]
    row = pca.table[(pca.table["label"] == amplified) & (pca.table["component"] == 0)].iloc[0]
    assert abs(float(first @ planted.direction)) >= 0.95
    assert row["explained"] >= 0.9
    # the neuron only adds (ReLU-like GELU output >= ~0): the mean difference lies along it
    assert row["cos_mean_diff"] >= 0.95
    same = pca.table[pca.table["label"] == identical]
    assert (same["variance"] == 0).all() and same["explained"].isna().all()


def test_a_rewritten_llama_neuron_is_the_first_component(tmp_path):
    tokenizer = build_tokenizer("abcdefghijklmnopqrstuvwxyz ,.?")
    config = tiny_hf_config("llama", vocab_size=len(tokenizer), n_layer=2)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    write = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(3)), dim=0)
    before = model.model.layers[0].mlp.down_proj.weight[:, 5].detach().clone()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, 5] = 2.0 * write
    model.save_pretrained(tmp_path / "step-1")
    tokenizer.save_pretrained(tmp_path / "step-1")
    series = ModelSeries.from_paths([tmp_path / "base", tmp_path / "step-1"])
    hook = "blocks.0.hook_resid_post"
    store = harvest(series, planted_prompts(32), tmp_path / "store", HarvestConfig(hooks=(hook,)))
    pca = difference_pca(store, n_components=2)
    first = pca.components[("step-1", hook)][0]
    assert pca.table["explained"].iloc[0] >= 0.95
    change = torch.nn.functional.normalize(2.0 * write - before, dim=0)  # the neuron's write moved by this
    assert abs(float(first @ change)) >= 0.95


def test_a_sign_flipping_change_cancels_in_the_mean_but_not_in_the_components(tmp_path):
    g = torch.Generator().manual_seed(0)
    n, d, per_prompt = 512, 16, 16
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    base = torch.randn(n, d, generator=g)
    labels = ["a" if p % 2 == 0 else "b" for p in range(n // per_prompt)]
    sign = torch.tensor([1.0 if labels[i // per_prompt] == "a" else -1.0 for i in range(n)])
    size = 2.0 + torch.rand(n, generator=g)
    post = base + (sign * size).unsqueeze(1) * direction + 0.05 * torch.randn(n, d, generator=g)
    store = synthetic_store(tmp_path / "store", {"base": base, "post": post}, per_prompt=per_prompt)
    pca = difference_pca(store, n_components=2, labels=labels)
    first = pca.components[("post", store.hooks[0])][0]
    assert abs(float(first @ direction)) >= 0.95 and pca.table["explained"].iloc[0] >= 0.9
    mean_diff = (post - base).mean(0)
    assert mean_diff.norm() < 0.1 * size.mean()  # what the mean difference would show: nearly nothing
    projections = pca.projections[pca.projections["component"] == 0].set_index("group")["projection"]
    assert projections["a"] * projections["b"] < 0 and min(abs(projections)) > 1.5
    assert (pca.projections.groupby("component")["n_tokens"].sum() == n).all()


def test_labels_must_match_the_prompts(tmp_path):
    from rlinterp import RlinterpError

    acts = torch.randn(32, 8)
    store = synthetic_store(tmp_path / "store", {"base": acts, "post": acts + 1}, per_prompt=16)
    with pytest.raises(RlinterpError, match="3 labels for the store's 2 prompts"):
        difference_pca(store, labels=["a", "b", "c"])
