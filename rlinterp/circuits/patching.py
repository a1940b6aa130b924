"""Components of a hooked transformer, and patching one run's components into another.

A *component* is anything that writes an additive term into the residual stream:

- ``embed``: token plus position embedding (``blocks.0.hook_resid_pre``);
- ``L{l}.H{h}``: attention head ``h`` of block ``l``, its output ``z_h @ W_O[h]`` (the
  head's value-weighted mix, ``attn.hook_z``, through that model's own output projection);
- ``L{l}.attn_bias``: the attention output bias ``b_O`` of block ``l``;
- ``L{l}.mlp``: the MLP of block ``l`` (``hook_mlp_out``);
- ``unembed``: the readout (final norm and unembedding) applied to the residual stream.

``residual_components`` adds the residual stream itself as a patch site: ``resid.L{l}``
is the stream entering block ``l`` (``l = n_layers``: entering the final norm), at every
position or, with ``@last``, only at each prompt's last real token. These overlap the
additive components (the stream is their sum), so summaries keep them apart.

A *patch* runs the receiver model on its tokens and replaces chosen components' terms by a
donor run's terms. The donor can be another model of the series on the same tokens
(cross-model patching) or the same model on other tokens (clean/corrupted patching).

Invariants (tested):
- a head's term is taken from the donor *with the donor's* ``W_O``, so patching every
  component of a checkpoint into its base reproduces the checkpoint's logits exactly;
- patching nothing, or patching a model into itself on the same tokens, changes nothing;
- attribution patching with one step is the first-order Taylor term of exact patching:
  ``d metric / d term . (term_donor - term_receiver)``, one backward pass for all
  components; with ``n`` steps it integrates that gradient along the line from the
  receiver's terms to the donor's, one site at a time, and for a component alone at its
  site converges to the exact effect (exactly at 2 steps when the metric is quadratic
  along the line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from ..errors import RlinterpError
from ..models.stacking import stack

Kind = Literal["embed", "head", "attn_bias", "mlp", "unembed", "resid"]
EMBED = "blocks.0.hook_resid_pre"
FINAL = "ln_final.hook_in"
LOGITS = "unembed.hook_out"
Hook = tuple[str | Callable[..., Any], Callable[..., Any]]


@dataclass(frozen=True)
class Component:
    """One additive writer into the residual stream (see the module docstring)."""

    name: str
    """``embed``, ``L{l}.H{h}``, ``L{l}.attn_bias``, ``L{l}.mlp``, ``unembed``, or a residual
    site ``resid.L{l}`` / ``resid.L{l}@last``."""
    kind: Kind
    layer: int | None = None
    head: int | None = None
    last_only: bool = False
    """For ``resid``: patch only each prompt's last real token."""


def components(model: TransformerBridge, cross_model: bool = True) -> tuple[Component, ...]:
    """Every component of ``model`` in forward order. Without ``cross_model`` the weight-only
    components (``attn_bias``, ``unembed``) are left out: between two runs of one model they
    are identical, so patching them does nothing."""
    found = [Component("embed", "embed")]
    for layer in range(model.cfg.n_layers):
        found += [Component(f"L{layer}.H{h}", "head", layer, h) for h in range(model.cfg.n_heads)]
        if cross_model and model.blocks[layer].attn.b_O is not None:
            found.append(Component(f"L{layer}.attn_bias", "attn_bias", layer))
        found.append(Component(f"L{layer}.mlp", "mlp", layer))
    if cross_model:
        found.append(Component("unembed", "unembed"))
    return tuple(found)


def residual_components(model: TransformerBridge) -> tuple[Component, ...]:
    """The residual stream entering blocks 1.. and the final norm, at all positions and at
    the last token."""
    layers = range(1, model.cfg.n_layers + 1)
    return tuple(
        Component(f"resid.L{layer}{'@last' if last else ''}", "resid", layer, last_only=last)
        for last in (False, True)
        for layer in layers
    )


def resolve(
    model: TransformerBridge, names: Sequence[str], cross_model: bool = True
) -> tuple[Component, ...]:
    """The named components, or an error naming the first unknown one."""
    known = {c.name: c for c in (*components(model, cross_model), *residual_components(model))}
    for name in names:
        if name not in known:
            shown = ", ".join(list(known)[:6])
            raise RlinterpError(f"unknown component {name!r}; components are named like {shown}, ...")
    return tuple(known[n] for n in names)


@dataclass
class Terms:
    """What each component of one model wrote into the residual stream on one batch."""

    model: TransformerBridge
    embed: Float[Tensor, "batch pos d_model"]
    heads: list[Float[Tensor, "batch pos head d_model"]]
    attn_bias: list[Float[Tensor, " d_model"] | None]
    mlp: list[Float[Tensor, "batch pos d_model"]]
    final: Float[Tensor, "batch pos d_model"]
    """The residual stream entering the final norm."""
    logits: Float[Tensor, "batch pos vocab"]
    resid: list[Float[Tensor, "batch pos d_model"]]
    """The residual stream entering each block, then the final norm (``n_layers + 1``)."""
    last: Int[Tensor, " batch"]
    """Each row's last real position."""

    def term(self, c: Component) -> Tensor:
        """The component's term (for ``unembed``: the logits)."""
        if c.kind == "embed":
            return self.embed
        if c.kind == "head":
            assert c.layer is not None and c.head is not None
            return self.heads[c.layer][:, :, c.head]
        if c.kind == "attn_bias":
            bias = self.attn_bias[c.layer] if c.layer is not None else None
            assert bias is not None
            return bias
        if c.kind == "mlp":
            assert c.layer is not None
            return self.mlp[c.layer]
        if c.kind == "resid":
            assert c.layer is not None
            value = self.resid[c.layer]
            return value * _last_mask(value, self.last) if c.last_only else value
        return self.logits

    def readout(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos vocab"]:
        """This model's final norm and unembedding applied to ``resid``."""
        return self.model.unembed(self.model.ln_final(resid))


def head_terms(
    model: TransformerBridge, layer: int, z: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch pos head d_model"]:
    """Each head's output through ``model``'s output projection of block ``layer``."""
    return torch.einsum("bphd,hdm->bphm", z, model.blocks[layer].attn.W_O)


def _last_mask(value: Tensor, last: Tensor) -> Tensor:
    """1 at each row's last real position, 0 elsewhere, broadcastable to ``value``."""
    positions = torch.arange(value.shape[1], device=value.device)
    return (positions.unsqueeze(0) == last.to(value.device).unsqueeze(1)).to(value.dtype).unsqueeze(-1)


def _resid_site(model: TransformerBridge, layer: int) -> str:
    return FINAL if layer == model.cfg.n_layers else f"blocks.{layer}.hook_resid_pre"


def _names(model: TransformerBridge) -> list[str]:
    names = [EMBED, FINAL, LOGITS]
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out", _resid_site(model, layer)]
    return names


@torch.no_grad()
def run_terms(
    model: TransformerBridge, tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"] | None = None
) -> Terms:
    """Run ``model`` on ``tokens`` (rows of real length ``lengths``, default: all of it) and
    record every component's term."""
    logits, cache = model.run_with_cache(tokens, names_filter=_names(model))
    n = model.cfg.n_layers
    lengths = torch.full((tokens.shape[0],), tokens.shape[1]) if lengths is None else lengths
    return Terms(
        model=model,
        embed=cache[EMBED],
        heads=[head_terms(model, layer, cache[f"blocks.{layer}.attn.hook_z"]) for layer in range(n)],
        attn_bias=[_bias(model, layer) for layer in range(n)],
        mlp=[cache[f"blocks.{layer}.hook_mlp_out"] for layer in range(n)],
        final=cache[FINAL],
        logits=logits,
        resid=[cache[_resid_site(model, layer)] for layer in range(n + 1)],
        last=lengths - 1,
    )


def _bias(model: TransformerBridge, layer: int) -> Tensor | None:
    bias = model.blocks[layer].attn.b_O
    return None if bias is None else bias.detach()


def patch_hooks(
    receiver: TransformerBridge, donor: Terms, patch: Sequence[Component], alpha: float = 1.0
) -> list[Hook]:
    """Forward hooks that put ``donor``'s terms of ``patch`` into a run of ``receiver``;
    with ``alpha < 1`` they move each term only that fraction of the way (the path that
    integrated-gradient attribution follows)."""
    return stacked_patch_hooks(receiver, donor, [patch], [alpha])


def stacked_patch_hooks(
    receiver: TransformerBridge, donor: Terms, patches: Sequence[Sequence[Component]], alphas: Sequence[float]
) -> list[Hook]:
    """Forward hooks for one run of ``receiver`` on the donor's batch stacked once per patch
    (``stack``: block ``i`` is rows ``i * batch`` to ``(i + 1) * batch``), where block ``i``
    moves ``patches[i]``'s terms ``alphas[i]`` of the way to ``donor``'s. Rows of a
    transformer run do not interact, so each block reads what a run patched with
    ``patches[i]`` alone reads, up to float rounding: several patches cost one pass, which
    on small models (where a pass is mostly fixed overhead) is several times cheaper."""

    def weights(kind: Kind, layer: int | None = None, head: int | None = None, last: bool = False) -> Tensor:
        """Per block, how far it moves the component of ``kind`` (at ``layer``, ``head``)."""
        return torch.tensor(
            [alpha if any(_is(c, kind, layer, head, last) for c in p) else 0.0 for p, alpha in blocks]
        )

    blocks = list(zip(patches, alphas, strict=True))
    hooks: list[Hook] = []
    if (w := weights("embed")).any():
        hooks.append((EMBED, _replace(donor.embed, w)))
    for layer in range(receiver.cfg.n_layers + 1):
        for last in (False, True):
            if (w := weights("resid", layer, last=last)).any():
                mask = donor.last if last else None
                hooks.append((_resid_site(receiver, layer), _replace(donor.resid[layer], w, mask)))
    for layer in range(receiver.cfg.n_layers):
        heads = sorted({c.head for p in patches for c in p if _is(c, "head", layer) and c.head is not None})
        per_head = torch.stack([weights("head", layer, h) for h in heads], 1) if heads else None
        bias = weights("attn_bias", layer)
        if heads or bias.any():
            hooks += _attention_hooks(receiver, donor, layer, heads, per_head, bias if bias.any() else None)
        if (w := weights("mlp", layer)).any():
            hooks.append((f"blocks.{layer}.hook_mlp_out", _replace(donor.mlp[layer], w)))
    if (w := weights("unembed")).any() and donor.model is not receiver:  # same weights: nothing to swap
        hooks += _readout_hooks(donor, w)
    return hooks


def _is(
    c: Component, kind: Kind, layer: int | None = None, head: int | None = None, last: bool = False
) -> bool:
    return c.kind == kind and c.last_only == last and layer in (None, c.layer) and head in (None, c.head)


def _readout_hooks(donor: Terms, w: Tensor) -> list[Hook]:
    """Replace the logits by the donor's readout of the receiver's final residual stream
    (computed for the moving blocks only)."""
    final: dict[str, Tensor] = {}
    moving = w.nonzero().squeeze(1)

    def readout(x: Tensor, hook: HookPoint) -> Tensor:
        del hook
        resid = final["resid"].unflatten(0, (len(w), -1))[moving]
        value = donor.readout(resid.flatten(0, 1)).unflatten(0, resid.shape[:2])
        return _toward(x, value.to(x.dtype), w)

    return [(FINAL, _stash(final, "resid")), (LOGITS, readout)]


def _toward(x: Tensor, value: Tensor, w: Tensor, last: Tensor | None = None) -> Tensor:
    """``x`` (``len(w)`` stacked blocks) with block ``i`` moved ``w[i]`` of the way to
    ``value`` (one block's worth for all, or one per moving block), at each row's ``last``
    position only if given. Only the moving blocks are computed; ``w[i] = 1`` gives
    ``value`` itself and ``w[i] = 0`` leaves ``x``, bit for bit."""
    blocks = x.unflatten(0, (len(w), -1))
    moving = w.nonzero().squeeze(1)
    part = blocks[moving]
    fraction = w[moving].to(x.device, x.dtype).view(-1, *([1] * (blocks.ndim - 1)))
    if last is not None:
        moved = part + fraction * (value - part) * _last_mask(part[0], last)
    else:
        moved = torch.where(fraction == 1, value, part + fraction * (value - part))
    return _put(blocks, moving, moved)


def _put(blocks: Tensor, moving: Tensor, moved: Tensor) -> Tensor:
    """``blocks`` with the blocks ``moving`` replaced by ``moved``, as rows again."""
    if len(moving) == len(blocks):
        return moved.flatten(0, 1)
    return blocks.index_copy(0, moving, moved).flatten(0, 1)


def _replace(value: Tensor, w: Tensor, last: Tensor | None = None) -> Callable[[Tensor, HookPoint], Tensor]:
    def hook(x: Tensor, hook: HookPoint) -> Tensor:
        del hook
        return _toward(x, value.to(x.dtype), w, last)

    return hook


def _stash(store: dict[str, Tensor], key: str) -> Callable[[Tensor, HookPoint], None]:
    def hook(x: Tensor, hook: HookPoint) -> None:
        del hook
        store[key] = x

    return hook


def _attention_hooks(
    receiver: TransformerBridge,
    donor: Terms,
    layer: int,
    heads: list[int],
    per_head: Tensor | None,
    bias: Tensor | None,
) -> list[Hook]:
    """Swap heads' terms in the attention output: subtract the receiver's own term (from
    the live ``z``, which upstream patches may have changed) and add the donor's, weighted
    per block (``per_head``: block x head, ``bias``: per block)."""
    live: dict[str, Tensor] = {}
    flags = [per_head.ne(0).any(1)] if per_head is not None else []
    flags += [bias.ne(0)] if bias is not None else []
    moving = torch.stack(flags).any(0).nonzero().squeeze(1)  # only these blocks are computed

    def swap(out: Tensor, hook: HookPoint) -> Tensor:
        del hook
        blocks = out.unflatten(0, (len(flags[0]), -1))
        change = torch.zeros_like(blocks[moving])
        if heads:
            z = live["z"].unflatten(0, blocks.shape[:2])[moving][:, :, :, heads]
            own = torch.einsum("nbphd,hdm->nbphm", z, receiver.blocks[layer].attn.W_O[heads])
            assert per_head is not None
            fraction = per_head[moving].to(out.device, out.dtype)[:, None, None, :, None]
            change = change + ((donor.heads[layer][:, :, heads] - own) * fraction).sum(3).to(out.dtype)
        if bias is not None:
            theirs, ours = donor.attn_bias[layer], _bias(receiver, layer)
            assert theirs is not None and ours is not None
            fraction = bias[moving].to(out.device, out.dtype)[:, None, None, None]
            change = change + fraction * (theirs - ours).to(out.dtype)
        return _put(blocks, moving, blocks[moving] + change)

    return [(f"blocks.{layer}.attn.hook_z", _stash(live, "z")), (f"blocks.{layer}.hook_attn_out", swap)]


@torch.no_grad()
def patched_logits(
    receiver: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    donor: Terms,
    patch: Sequence[Component],
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of ``receiver`` on ``tokens`` with ``patch``'s terms taken from ``donor``."""
    return patched_logits_each(receiver, tokens, donor, [patch])[0]


@torch.no_grad()
def patched_logits_each(
    receiver: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    donor: Terms,
    patches: Sequence[Sequence[Component]],
) -> Float[Tensor, "patch batch pos vocab"]:
    """``patched_logits`` of each of ``patches`` on its own, in one stacked pass of
    ``len(patches) * batch`` rows (``stacked_patch_hooks``)."""
    if donor.embed.shape[:2] != tokens.shape:
        raise RlinterpError(
            f"donor run has shape {tuple(donor.embed.shape[:2])} but the receiver's tokens have "
            f"{tuple(tokens.shape)}; patching needs token-aligned runs"
        )
    hooks = stacked_patch_hooks(receiver, donor, patches, [1.0] * len(patches))
    logits = receiver.run_with_hooks(stack(tokens, len(patches)), fwd_hooks=hooks)
    return logits.unflatten(0, (len(patches), -1))


MetricOnLogits = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, " batch"]]


Interpolation = Literal["site", "component"]


def attribution(
    receiver: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    donor: Terms,
    comps: Sequence[Component],
    metric: MetricOnLogits,
    steps: int = 1,
    interpolate: Interpolation = "site",
    blocks: int = 1,
) -> Float[Tensor, "batch component"]:
    """Attribution patching: per prompt and component, a gradient estimate of the effect
    on ``metric`` of patching the component's term from ``donor`` into ``receiver``'s run
    on ``tokens``: ``delta . mean_k grad(alpha_k)``, ``delta`` the donor's term minus the
    receiver's.

    ``steps=1``: the gradient at the receiver's own run, ``alpha = 0`` (plain attribution
    patching: one forward and backward pass for all components). ``steps=n > 1``:
    integrated gradients. The terms are moved ``alpha`` of the way to the donor's, with
    everything downstream recomputed, at the midpoints ``alpha = (k + 1/2) / n``, and the
    gradient is averaged; ``interpolate`` says which terms move together:

    - ``site``: the listed components writing at one site (``site_of``: the embedding, one
      block's attention, one MLP, the readout, one residual site); ``n`` passes per site.
      A component alone at its site converges to its exact patching effect as ``n``
      grows; heads of one layer converge to their shares of the layer's joint effect
      (their interactions are split between them);
    - ``component``: each component alone; ``n`` passes per component, and every
      component converges to its exact patching effect.

    ``blocks``: interpolation points run together as one stacked pass of ``blocks * batch``
    rows (``stacked_patch_hooks``): the same numbers up to rounding, fewer passes, more
    memory per pass."""
    if steps < 1:
        raise RlinterpError(f"attribution steps must be at least 1, got {steps}")
    if interpolate not in ("site", "component"):
        raise RlinterpError(f"interpolate must be 'site' or 'component', got {interpolate!r}")
    own = run_terms(receiver, tokens, donor.last + 1)
    deltas = [_delta(c, donor, own) for c in comps]
    total = torch.zeros(tokens.shape[0], len(comps), device=own.logits.device)
    movers: list[list[int]] = [list(range(len(comps)))]  # steps == 1: one run, nothing moved
    if steps > 1 and interpolate == "component":
        movers = [[i] for i in range(len(comps))]
    elif steps > 1:
        by_site: dict[str, list[int]] = {}
        for i, c in enumerate(comps):
            by_site.setdefault(site_of(c), []).append(i)
        movers = list(by_site.values())
    alphas = [0.0] if steps == 1 else [(k + 0.5) / steps for k in range(steps)]
    points = [(moved, alpha) for moved in movers for alpha in alphas]
    for start in range(0, len(points), max(1, blocks)):  # ``blocks`` points per stacked pass
        chunk = points[start : start + max(1, blocks)]
        patches = [[comps[i] for i in moved] for moved, _ in chunk]
        grads = _gradients(receiver, tokens, metric, donor, patches, [alpha for _, alpha in chunk])
        for block, (moved, _) in enumerate(chunk):
            for i in moved:
                grad = grads[_grad_key(comps[i])].unflatten(0, (len(chunk), -1))[block]
                total[:, i] += (grad * deltas[i]).flatten(1).sum(1).detach()
    return total / steps


def site_of(c: Component) -> str:
    """Where ``c`` writes: ``embed``, ``attn{l}`` (heads and bias of block ``l``),
    ``mlp{l}``, ``logits`` (the readout), ``resid{l}`` or ``resid{l}@last``."""
    if c.kind == "resid":
        return f"resid{c.layer}{'@last' if c.last_only else ''}"
    return _grad_key(c)


def _grad_key(c: Component) -> str:
    """The site whose gradient ``c``'s term difference is dotted with."""
    if c.kind in ("head", "attn_bias"):
        return f"attn{c.layer}"
    if c.kind == "mlp":
        return f"mlp{c.layer}"
    if c.kind == "resid":
        return "embed" if c.layer == 0 else f"resid{c.layer}"
    return "embed" if c.kind == "embed" else "logits"


def _delta(c: Component, donor: Terms, own: Terms) -> Tensor:
    """``c``'s donor term minus the receiver's, shaped like the gradient at its site."""
    if c.kind == "attn_bias":
        return (donor.term(c) - own.term(c)).expand_as(own.embed)
    if c.kind == "unembed":
        return donor.readout(own.final) - own.logits
    return donor.term(c) - own.term(c)


def _gradients(
    model: TransformerBridge,
    tokens: Tensor,
    metric: MetricOnLogits,
    donor: Terms,
    patches: Sequence[Sequence[Component]] = ((),),
    alphas: Sequence[float] = (0.0,),
) -> dict[str, Tensor]:
    """Gradients of ``metric.sum()`` with respect to every site's value (keys as in
    ``_grad_key``), on ``model``'s run over ``tokens`` stacked once per patch (``stack``),
    block ``i`` with ``patches[i]``'s terms moved ``alphas[i]`` of the way to ``donor``'s
    (``stacked_patch_hooks``; they run before the hooks that keep the sites' values). Rows
    do not interact, so each block's gradients are those of its own run. Only activations
    are differentiated."""
    values: dict[str, Tensor] = {}

    def keep(key: str) -> Callable[[Tensor, HookPoint], Tensor]:
        def hook(x: Tensor, hook: HookPoint) -> Tensor:
            del hook
            if key == "embed":  # upstream of everything we attribute: the graph's root
                x = x.detach().requires_grad_(True)
            values[key] = x
            return x

        return hook

    n = model.cfg.n_layers
    hooks = stacked_patch_hooks(model, donor, patches, alphas) if any(alphas) else []
    hooks += [(EMBED, keep("embed")), (FINAL, keep(f"resid{n}")), (LOGITS, keep("logits"))]
    for layer in range(n):
        hooks += [
            (f"blocks.{layer}.hook_attn_out", keep(f"attn{layer}")),
            (f"blocks.{layer}.hook_mlp_out", keep(f"mlp{layer}")),
        ]
        if layer > 0:
            hooks.append((f"blocks.{layer}.hook_resid_pre", keep(f"resid{layer}")))
    with torch.enable_grad():
        logits = model.run_with_hooks(stack(tokens, len(patches)), fwd_hooks=hooks)
        total = torch.stack([metric(block).sum() for block in logits.unflatten(0, (len(patches), -1))]).sum()
        keys = list(values)
        grads = torch.autograd.grad(total, [values[k] for k in keys], allow_unused=True)
    return {k: torch.zeros_like(values[k]) if g is None else g for k, g in zip(keys, grads, strict=True)}


def direct_logit_attribution(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    comps: Sequence[Component],
    metric: MetricOnLogits,
) -> Float[Tensor, "batch component"]:
    """Direct effect of each component's term on ``metric`` through the final norm with its
    scale frozen and the unembedding: ``d metric / d logits . W_U^T norm_frozen(term)``.
    Exact for metrics linear in the logits (``logit_diff``); ``unembed`` gets zero."""
    terms = run_terms(model, tokens)
    g = dla_gradient(model, tokens, metric, terms)
    columns = []
    for c in comps:
        if c.kind == "unembed":
            columns.append(g.new_zeros(tokens.shape[0]))
            continue
        term = terms.term(c)
        columns.append((g * term.expand_as(g)).flatten(1).sum(1))
    return torch.stack(columns, dim=1).detach()


def dla_gradient(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    metric: MetricOnLogits,
    terms: Terms | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The direction whose dot product with a term written into the residual stream is that
    term's direct effect on ``metric`` (final norm with its scale frozen, centring moved onto
    the gradient): the shared part of every direct logit attribution."""
    terms = terms if terms is not None else run_terms(model, tokens)
    logits = terms.logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (g_logits,) = torch.autograd.grad(metric(logits).sum(), [logits])
    scale = _final_scale(model, terms.final)
    g = (g_logits @ model.W_U.detach().T) * model.ln_final.w.detach() / scale
    if model.cfg.normalization_type in ("LN", "LNPre"):
        g = g - g.mean(-1, keepdim=True)  # centring is linear: move it onto the gradient
    return g


def _final_scale(model: TransformerBridge, resid: Tensor) -> Tensor:
    eps = model.cfg.eps
    if model.cfg.normalization_type in ("LN", "LNPre"):
        resid = resid - resid.mean(-1, keepdim=True)
    return (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def check_same_architecture(a: TransformerBridge, b: TransformerBridge) -> None:
    for key in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab"):
        if getattr(a.cfg, key) != getattr(b.cfg, key):
            raise RlinterpError(f"models differ in {key}: {getattr(a.cfg, key)} vs {getattr(b.cfg, key)}")
