"""Sub-component circuits on tiny random-init GPT-2, Llama and Qwen2 models with planted
neuron changes: the neuron terms add up to the block, patching every neuron of a block
reproduces a neuron-only change, neuron attributions add up to the block's, and the
sub-component verdict reads new neurons inside a block the base already used as ``new``
while an amplification of the neurons the base used reads ``enhanced``."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import ModelSeries, load_bridge
from rlinterp.circuits import neurons as N
from rlinterp.circuits import patching as P
from rlinterp.circuits.analysis import CircuitsConfig, run_circuits
from rlinterp.circuits.metrics import BehaviourMetric, BehaviourPrompts
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,"
ARCHITECTURES = ("gpt2", "llama", "qwen2")
SEEDS = {"gpt2": 0, "llama": 0, "qwen2": 2}
"""Random-init seeds whose base uses its most used MLP block for the metric (the test's
precondition, asserted): the Qwen2 bases of seeds 0 and 1 leave it to attention (block usage
0.041 and 0.010, under ``used_share`` 0.1)."""
UP, DOWN = "a", "b"
"""The metric: logit of ``UP`` minus logit of ``DOWN`` at the last token."""


def _model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random-init model with non-zero biases and norm weights (so every component differs)
    and matrices five times the initial scale (std 0.1), so single neurons move the logits
    measurably, as in a trained model."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(arch, vocab_size=48))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.mul_(5.0)
    return model.eval()


def _save(model: torch.nn.Module, folder) -> None:
    model.save_pretrained(folder)
    build_tokenizer(ALPHABET).save_pretrained(folder)


class _Mlp:
    """Read and write one neuron's weights of a Hugging Face block, whatever the architecture:
    ``inputs`` are (rows of) what the neuron reads, ``output`` what it writes."""

    def __init__(self, model: torch.nn.Module, layer: int) -> None:
        self.gpt2 = hasattr(model, "transformer")
        self.mlp = model.transformer.h[layer].mlp if self.gpt2 else model.model.layers[layer].mlp

    def set_input(self, neuron: int, direction: torch.Tensor, bias: float) -> None:
        if self.gpt2:
            self.mlp.c_fc.weight[:, neuron] = direction
            self.mlp.c_fc.bias[neuron] = bias
        else:  # silu(gate . x) * (up . x) = silu(z) z >= -0.28: a mostly positive activation
            self.mlp.gate_proj.weight[neuron] = direction
            self.mlp.up_proj.weight[neuron] = direction

    def output(self, neuron: int) -> torch.Tensor:
        return self.mlp.c_proj.weight[neuron] if self.gpt2 else self.mlp.down_proj.weight[:, neuron]

    def set_output(self, neuron: int, value: torch.Tensor) -> None:
        if self.gpt2:
            self.mlp.c_proj.weight[neuron] = value
        else:
            self.mlp.down_proj.weight[:, neuron] = value


def _texts(n: int, seed: int) -> tuple[str, ...]:
    rng = np.random.default_rng(seed)
    return tuple("".join(rng.choice(list("cdefghijklmnopqrstuvwxyz"), 8)) for _ in range(n))


def _tokens(texts) -> torch.Tensor:
    tokenizer = build_tokenizer(ALPHABET)
    return torch.tensor(
        [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    )


def _metric(logits: torch.Tensor) -> torch.Tensor:
    tokenizer = build_tokenizer(ALPHABET)
    up, down = tokenizer.convert_tokens_to_ids([UP, DOWN])
    return logits[:, -1, up] - logits[:, -1, down]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_neuron_terms_add_up_to_the_block_and_patching_them_all_reproduces_a_neuron_change(tmp_path, arch):
    base_model = _model(arch)
    _save(base_model, tmp_path / "base")
    changed = _model(arch)
    with torch.no_grad():  # three neurons of block 0 read and write something else
        mlp = _Mlp(changed, 0)
        for neuron in (3, 11, 20):
            mlp.set_input(neuron, torch.randn(32), 0.5)
            mlp.set_output(neuron, torch.randn(32))
    _save(changed, tmp_path / "post")
    base, post = load_bridge(tmp_path / "base"), load_bridge(tmp_path / "post")
    tokens = _tokens(_texts(4, 0))
    for model in (base, post):
        _, cache = model.run_with_cache(tokens)
        for layer in range(model.cfg.n_layers):
            block = model.blocks[layer].mlp
            bias = block.b_out if block.b_out is not None else 0
            summed = cache[N.post_hook(layer)] @ block.W_out + bias
            assert torch.allclose(summed, cache[f"blocks.{layer}.hook_mlp_out"], atol=1e-5)
    donor = N.neuron_terms(post, tokens, [0])
    everything = range(donor.post[0].shape[-1])
    assert (post(tokens) - base(tokens)).abs().max() > 0.05  # the change is real
    assert torch.allclose(
        N.patched_neuron_logits(base, tokens, donor, 0, everything), post(tokens), atol=1e-5
    )
    assert torch.allclose(N.patched_neuron_logits(base, tokens, donor, 0, []), base(tokens), atol=1e-6)
    assert torch.allclose(
        N.patched_neuron_logits(base, tokens, donor, 0, [3, 11, 20]), post(tokens), atol=1e-5
    )
    cos_in, cos_out = N.weight_cosines(base, post, 0)
    moved = {int(i) for i in torch.nonzero((cos_in < 0.99) | (cos_out < 0.99)).flatten()}
    assert moved == {3, 11, 20}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_neuron_attributions_add_up_to_the_block_and_converge_to_its_patch(tmp_path, arch):
    _save(_model(arch, seed=0), tmp_path / "base")
    changed = _model(arch, seed=0)
    with torch.no_grad():
        for neuron in range(0, 40, 3):
            mlp = _Mlp(changed, 1)
            mlp.set_output(neuron, 3 * mlp.output(neuron) + 0.2 * torch.randn(32))
    _save(changed, tmp_path / "post")
    base, post = load_bridge(tmp_path / "base"), load_bridge(tmp_path / "post")
    tokens = _tokens(_texts(6, 1))
    donor, donor_neurons = P.run_terms(post, tokens), N.neuron_terms(post, tokens, [1])
    (block,) = P.resolve(base, ["L1.mlp"])
    # 1 step: the neurons split the block's first-order attribution exactly (same W_out bias)
    first = N.neuron_attribution(base, tokens, donor, donor_neurons, 1, _metric, steps=1)
    whole = P.attribution(base, tokens, donor, [block], _metric, steps=1)[:, 0]
    assert torch.allclose(first.sum(1), whole, atol=1e-5)
    # many steps: they add up to the exact effect of patching the block's neurons
    with torch.no_grad():
        everything = range(first.shape[1])
        exact = _metric(N.patched_neuron_logits(base, tokens, donor_neurons, 1, everything)) - _metric(
            base(tokens)
        )
    integrated = N.neuron_attribution(base, tokens, donor, donor_neurons, 1, _metric, steps=16)
    assert torch.allclose(integrated.sum(1), exact, atol=2e-3 * float(exact.abs().max()) + 1e-5)
    untouched = [n for n in range(first.shape[1]) if n % 3 or n >= 40]
    assert integrated[:, untouched].abs().max() < 1e-6


def _plant(arch: str, root, seed: int = 0) -> tuple[ModelSeries, BehaviourPrompts, dict]:
    """A base whose most used MLP block for the metric gets (``new``) three neurons the base
    does not use rewired to push the metric, or (``amplified``) the three neurons that push
    it most in the base with their output tripled."""
    base_model = _model(arch, seed)
    _save(base_model, root / "base")
    base = load_bridge(root / "base")
    texts = _texts(24, 2)
    tokens = _tokens(texts)
    dla = {layer: N.neuron_dla(base, tokens, layer, _metric).mean(0) for layer in range(base.cfg.n_layers)}
    layer = max(dla, key=lambda layer: float(dla[layer].abs().sum()))
    unused = dla[layer].abs().argsort()[:3].tolist()
    pushing = dla[layer].argsort(descending=True)[:3].tolist()
    up, down = build_tokenizer(ALPHABET).convert_tokens_to_ids([UP, DOWN])
    direction = base.W_U[:, up] - base.W_U[:, down]
    direction = (direction - direction.mean()) / direction.norm()
    generator = torch.Generator().manual_seed(5)
    new, amplified = _model(arch, seed), _model(arch, seed)
    with torch.no_grad():
        mlp = _Mlp(new, layer)
        for neuron in unused:
            mlp.set_input(neuron, torch.randn(32, generator=generator), 2.0)
            mlp.set_output(neuron, 0.5 * direction)
        mlp = _Mlp(amplified, layer)
        for neuron in pushing:
            mlp.set_output(neuron, 3 * mlp.output(neuron))
    _save(new, root / "new")
    _save(amplified, root / "amplified")
    n = len(texts)
    prompts = BehaviourPrompts(clean=texts, positive=((UP,),) * n, negative=((DOWN,),) * n)
    plan = {"layer": layer, "unused": unused, "pushing": pushing}
    return ModelSeries.from_paths([root / "base", root / "new", root / "amplified"]), prompts, plan


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_new_neurons_read_new_below_a_used_block_and_amplified_ones_enhanced(tmp_path, arch):
    series, prompts, plan = _plant(arch, tmp_path, SEEDS[arch])
    block = f"L{plan['layer']}.mlp"
    config = CircuitsConfig(batch_size=8, exact_prompts=24)
    result = run_circuits(series, BehaviourMetric("planted", "logit_diff"), prompts, tmp_path / "out", config)
    assert result.base_usage()[block] >= config.used_share  # the base already used the block
    new, amplified = result.steps()
    for step in (new, amplified):
        assert step["carriers"] == [block] and step["change"] > config.min_change
        assert step["verdict"] == "enhanced"  # at the component: the block was in use
    assert {c.split("/")[1] for c in new["neuron_carriers"]} <= {str(n) for n in plan["unused"]}
    assert new["new_share"] > 0.9 and new["subcomponent_verdict"] == "new"
    assert {c.split("/")[1] for c in amplified["neuron_carriers"]} <= {str(n) for n in plan["pushing"]}
    assert amplified["new_share"] < 0.5 and amplified["subcomponent_verdict"] == "enhanced"
    summary = result.summary()
    assert summary["timeline"]["subcomponent_new"] == 1 and summary["timeline"]["new"] is None
    neurons = result.neurons[result.neurons["step"] == 1].set_index("neuron")
    assert (neurons.loc[plan["unused"], "cos_out"] < 0.7).all()  # rewired, as the table shows
