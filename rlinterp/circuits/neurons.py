"""Below the component: which neurons of a carrier MLP hold a change, and whether the base
had them.

A component verdict (``result``) reads ``enhanced`` when the components that carry a change
were already used by the base. An MLP block is one component, so a change that RL wrote
into neurons the base never used, or into neurons it rewired, still reads ``enhanced`` when
other neurons of that block served the behaviour before. This module takes each carrier MLP
apart into its neurons:

- **neuron terms**: neuron ``i`` of block ``l`` writes ``post_i * W_out[i]`` into the
  residual stream (``post`` = ``blocks.l.mlp.hook_post``: after the activation, or the gate
  times the up-projection of a gated MLP); the block's output is their sum plus ``b_out``
  (exact on GPT-2, Llama and Qwen2, tested);
- **attribution** (``neuron_attribution``): integrated gradients along the path that moves
  the whole MLP output from the receiver's to the donor's, each point's gradient dotted with
  every neuron's term difference (the donor's activation times the donor's ``W_out`` row,
  minus the receiver's). By completeness the neurons' attributions sum to the block's own
  integrated-gradient attribution less its bias change;
- **exact joint patch** (``patched_neuron_logits``): the receiver's run with the chosen
  neurons' terms taken from the donor; the carriers of a block are the fewest top-attributed
  neurons whose joint patch recovers ``coverage`` of the whole block's exact patch;
- **base use** (``base_neuron_usage``): a neuron's mean effect on the metric in the base,
  from clean -> corrupted patching within the base when the prompts have corrupted versions,
  else its direct logit attribution (``patching.dla_gradient``);
- **rewiring** (``weight_cosines``): the cosine between the base's and the checkpoint's
  input weights (with the gate's, for gated MLPs) and output weights of each neuron.

How they combine into the sub-component verdict (a carrier neuron is *new* when the base
did not use it for the behaviour or it was rewired) is ``result.CircuitsResult``'s.

Invariants (tested): patching every neuron of a block reproduces the donor's block output
up to its bias; patching none changes nothing; attributions at 1 step are the first-order
term of exact patching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from .metrics import BehaviourMetric, MetricBatch
from .patching import Component, Hook, MetricOnLogits, Terms, _gradients, dla_gradient, run_terms
from .result import CircuitsConfig, mlp_layer


def post_hook(layer: int) -> str:
    """The hook of block ``layer``'s neuron activations."""
    return f"blocks.{layer}.mlp.hook_post"


@dataclass
class NeuronTerms:
    """One model's neuron activations at some MLP blocks on one batch, with its ``W_out``."""

    model: TransformerBridge
    post: dict[int, Float[Tensor, "batch pos neuron"]]
    """Per block: ``hook_post``."""

    def w_out(self, layer: int) -> Float[Tensor, "neuron d_model"]:
        return self.model.blocks[layer].mlp.W_out

    def term_change(
        self, other: NeuronTerms, layer: int, gradient: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch neuron"]:
        """``gradient . (this model's neuron terms - other's)`` per neuron, summed over
        positions: the first-order effect of swapping each neuron of ``other`` for this
        model's."""
        mine = self.post[layer] * (gradient @ self.w_out(layer).T)
        theirs = other.post[layer] * (gradient @ other.w_out(layer).T)
        return (mine - theirs).sum(1)


@torch.no_grad()
def neuron_terms(
    model: TransformerBridge, tokens: Int[Tensor, "batch pos"], layers: Sequence[int]
) -> NeuronTerms:
    """``model``'s neuron activations at ``layers`` on ``tokens``."""
    _, cache = model.run_with_cache(tokens, names_filter=[post_hook(layer) for layer in layers])
    return NeuronTerms(model, {layer: cache[post_hook(layer)] for layer in layers})


def neuron_attribution(
    receiver: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    donor: Terms,
    donor_neurons: NeuronTerms,
    layer: int,
    metric: MetricOnLogits,
    steps: int = 2,
) -> Float[Tensor, "batch neuron"]:
    """Per prompt and neuron of block ``layer``: the integrated-gradient estimate of the effect
    on ``metric`` of swapping the neuron's term of ``receiver``'s run on ``tokens`` for the
    donor's (see the module docstring). ``steps=1``: the plain gradient at the receiver."""
    own = neuron_terms(receiver, tokens, [layer])
    block = Component(f"L{layer}.mlp", "mlp", layer)
    alphas = [0.0] if steps == 1 else [(k + 0.5) / steps for k in range(steps)]
    total = torch.zeros(tokens.shape[0], own.post[layer].shape[-1], device=tokens.device)
    # every interpolation point in one stacked pass (``patching.stacked_patch_hooks``)
    gradients = _gradients(receiver, tokens, metric, donor, [[block]] * len(alphas), alphas)[f"mlp{layer}"]
    for gradient in gradients.unflatten(0, (len(alphas), -1)):
        total += donor_neurons.term_change(own, layer, gradient).detach()
    return total / len(alphas)


def patch_neuron_hooks(
    receiver: TransformerBridge, donor: NeuronTerms, layer: int, neurons: Sequence[int]
) -> list[Hook]:
    """Forward hooks that swap ``neurons`` of block ``layer`` in a run of ``receiver`` for
    the donor's terms (the receiver's own terms read from the live activations, so upstream
    patches are respected)."""
    idx = torch.tensor(list(neurons), dtype=torch.long)
    live: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: HookPoint) -> None:
        del hook
        live["post"] = x

    def swap(out: Tensor, hook: HookPoint) -> Tensor:
        del hook
        if len(idx) == 0:
            return out
        w_receiver = receiver.blocks[layer].mlp.W_out[idx]
        theirs = donor.post[layer][..., idx] @ donor.w_out(layer)[idx]
        return out + (theirs - live["post"][..., idx] @ w_receiver).to(out.dtype)

    return [(post_hook(layer), keep), (f"blocks.{layer}.hook_mlp_out", swap)]


@torch.no_grad()
def patched_neuron_logits(
    receiver: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    donor: NeuronTerms,
    layer: int,
    neurons: Sequence[int],
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of ``receiver`` on ``tokens`` with ``neurons`` of block ``layer`` taken from the
    donor."""
    return receiver.run_with_hooks(tokens, fwd_hooks=patch_neuron_hooks(receiver, donor, layer, neurons))


@torch.no_grad()
def neuron_dla(
    model: TransformerBridge, tokens: Int[Tensor, "batch pos"], layer: int, metric: MetricOnLogits
) -> Float[Tensor, "batch neuron"]:
    """Each neuron's direct effect on ``metric`` through the final norm with its scale frozen
    (``patching.direct_logit_attribution`` at neuron resolution)."""
    gradient = dla_gradient(model, tokens, metric)
    terms = neuron_terms(model, tokens, [layer])
    return (terms.post[layer] * (gradient @ terms.w_out(layer).T)).sum(1)


def weight_cosines(base: TransformerBridge, model: TransformerBridge, layer: int) -> tuple[Tensor, Tensor]:
    """Per neuron of block ``layer``: cosine of the base's and ``model``'s input weights (the
    gate's appended for gated MLPs) and of their output weights."""
    a, b = base.blocks[layer].mlp, model.blocks[layer].mlp

    def inputs(mlp: torch.nn.Module) -> Tensor:
        w_in: Tensor = mlp.W_in  # type: ignore[assignment]
        gate = getattr(mlp, "W_gate", None)
        return torch.cat([w_in, gate], dim=0) if gate is not None else w_in

    with torch.no_grad():
        cos_in = torch.nn.functional.cosine_similarity(inputs(a), inputs(b), dim=0)
        cos_out = torch.nn.functional.cosine_similarity(a.W_out, b.W_out, dim=1)
    return cos_in.float().cpu(), cos_out.float().cpu()


# -- measuring a circuits run's carrier MLPs ---------------------------------------------


Batches = Callable[..., Iterator[MetricBatch]]
"""``batches(exact_only, corrupted=False)``: a circuits run's prompts, batched on its device."""


def carrier_neurons(
    base: TransformerBridge,
    model: TransformerBridge,
    carriers: Sequence[str],
    batches: Batches,
    metric: BehaviourMetric,
    config: CircuitsConfig,
    usage: dict[int, Tensor],
    has_corrupted: bool,
) -> dict[str, pd.DataFrame]:
    """The ``neurons`` and ``neuron_concentration`` rows (``result.CircuitsResult``) of each
    MLP among ``carriers``: every neuron's attribution (``model`` -> ``base``), the base's
    use of it (cached per block in ``usage``; from corrupted prompts if ``has_corrupted``), its
    weight cosines, and the joint patches of
    its top neurons until ``coverage`` of the block."""
    rows, curves = [], []
    for layer in (layer for layer in map(mlp_layer, carriers) if layer is not None):
        parts = []
        for batch in batches(False):
            donor = run_terms(model, batch.tokens, batch.lengths)
            donor_neurons = neuron_terms(model, batch.tokens, [layer])
            on_batch = partial(metric, batch=batch)
            steps = config.attribution_steps
            parts.append(neuron_attribution(base, batch.tokens, donor, donor_neurons, layer, on_batch, steps))
        attribution = torch.cat(parts).float().cpu().mean(0)
        curve, block_effect = _neuron_curve(base, model, layer, attribution, batches, metric, config.coverage)
        order = (attribution * (1.0 if block_effect >= 0 else -1.0)).argsort(descending=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        cos_in, cos_out = weight_cosines(base, model, layer)
        used = _base_usage(base, layer, batches, metric, config, usage, has_corrupted)
        rows.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "neuron": range(len(attribution)),
                    "attribution": attribution.numpy(),
                    "rank": rank.numpy(),
                    "base_usage": used.numpy(),
                    "cos_in": cos_in.numpy(),
                    "cos_out": cos_out.numpy(),
                }
            )
        )
        curves.append(curve.assign(layer=layer, block_effect=block_effect))
    empty = pd.DataFrame()
    return {
        "neurons": pd.concat(rows, ignore_index=True) if rows else empty,
        "neuron_concentration": pd.concat(curves, ignore_index=True) if curves else empty,
    }


@torch.no_grad()
def _neuron_curve(
    base: TransformerBridge,
    model: TransformerBridge,
    layer: int,
    attribution: Tensor,
    batches: Batches,
    metric: BehaviourMetric,
    coverage: float,
) -> tuple[pd.DataFrame, float]:
    """Recovery of the whole block's exact patch (checkpoint -> base, every neuron) by its
    top-k neurons on the exact prompts, for k doubling until ``coverage`` and then bisected
    to the fewest."""

    def score(logits: Tensor, batch: MetricBatch) -> Tensor:
        return metric(logits, batch).float().cpu()

    runs = [(b, score(base(b.tokens), b), neuron_terms(model, b.tokens, [layer])) for b in batches(True)]
    n = len(attribution)

    def effect(neurons: list[int]) -> float:
        values = [
            score(patched_neuron_logits(base, batch.tokens, donor, layer, neurons), batch) - own
            for batch, own, donor in runs
        ]
        return torch.cat(values).mean().item()

    block_effect = effect(list(range(n)))
    order = (attribution * (1.0 if block_effect >= 0 else -1.0)).argsort(descending=True).tolist()
    measured: dict[int, float] = {}

    def recovery(k: int) -> float:
        if k not in measured:
            measured[k] = effect(order[:k]) / block_effect if abs(block_effect) > 1e-12 else float("nan")
        return measured[k]

    low, high = 0, 1
    while high < n and not recovery(high) >= coverage:
        low, high = high, min(2 * high, n)
    recovery(high)
    while high - low > 1:  # the fewest k that reaches coverage, if recovery grows with k
        middle = (low + high) // 2
        low, high = (middle, high) if not recovery(middle) >= coverage else (low, middle)
    curve = pd.DataFrame(sorted(measured.items()), columns=["k", "recovery"])
    return curve, block_effect


def _base_usage(
    base: TransformerBridge,
    layer: int,
    batches: Batches,
    metric: BehaviourMetric,
    config: CircuitsConfig,
    usage: dict[int, Tensor],
    has_corrupted: bool,
) -> Tensor:
    """Each neuron's mean effect on the metric in the base (base use, module docstring):
    clean -> corrupted patching within the base where the prompts have corrupted versions,
    else direct logit attribution."""
    if layer not in usage:
        parts = []
        corrupted_runs = batches(False, corrupted=True) if has_corrupted else iter(())
        for batch in batches(False):
            on_batch = partial(metric, batch=batch)
            corrupted = next(corrupted_runs, None)
            if corrupted is None:
                parts.append(neuron_dla(base, batch.tokens, layer, on_batch))
                continue
            clean = run_terms(base, batch.tokens, batch.lengths)
            clean_neurons = neuron_terms(base, batch.tokens, [layer])
            steps = config.attribution_steps
            parts.append(
                neuron_attribution(base, corrupted.tokens, clean, clean_neurons, layer, on_batch, steps)
            )
        usage[layer] = torch.cat(parts).float().cpu().mean(0)
    return usage[layer]
