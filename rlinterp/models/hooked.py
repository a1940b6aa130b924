"""TransformerLens hook names on a plain ``transformers`` forward: the harvest's engine.

TransformerLens is the interface and the reference: a hook is named as TransformerLens
names it (``blocks.3.hook_resid_post``) and its value is the value TransformerLens' bridge
gives. The forward that produces it is the Hugging Face model's own, at its own speed,
with PyTorch forward hooks on the modules the bridge maps each hook name to.

Measured (random-init GPT-2, d_model 256, 4 layers, two hooks at blocks 1 and 3; one
thread on 2 shared cores at load average 9; medians of 5 interleaved runs, as multiples of
a plain ``transformers`` forward's speed at 100 tokens x 16 and 1,024 tokens x 2):

- the bridge's ``run_with_cache`` (``names_filter``, ``stop_at_layer``): 0.97x and 0.52x.
  It runs attention eagerly (it needs the pattern for ``hook_pattern``), and an eager
  forward is about 2.9x slower than the default (SDPA) attention at 1,024 tokens;
- nnsight 0.8 (the engine of diffing-toolkit), ``trace`` saving the two outputs: 0.99x and
  1.08x, with its tracing machinery, six more dependencies, and no TransformerLens names;
- PyTorch forward hooks on the modules, stopping after the last one: 1.09x and 1.09x (both
  they and nnsight skip the final norm and unembedding, hence above 1), with nothing
  added. Chosen. (``output_hidden_states`` is no shortcut: its last
entry is taken after the final norm, not ``hook_resid_post`` of the last block.)

How names map to modules (``hook_sites``): every bridge component wraps one Hugging Face
module and fires ``hook_in`` on that module's input and ``hook_out`` on its output; the
bridge's aliases say which component a name is (``hook_resid_pre`` = the block's input,
``hook_resid_mid`` = the second norm's input, ``hook_resid_post`` = the block's output,
``hook_attn_out`` / ``hook_mlp_out`` = the attention / MLP module's output). A name that is
not a module's input or output (``attn.hook_z``, ``hook_pattern``, ...) has no site; those
stay with the bridge.

One copy of the weights (``shared_clone``): the bridge rebuilds the module tree it wraps
(it replaces modules and forces eager attention), so it is built over a structural copy
of the model whose parameters and buffers *are* the model's: two module trees, one set of
weights. The plain model stays untouched, and is the reference the bridge is checked
against (``series.load``).

``run_with_hooks`` edits through the same sites (an edit at a module's input changes only
what that module reads, as the bridge's ``hook_in`` does), so a splice writes back into
the forward the store was read from.

Invariants: a ``HookedModel`` never changes its model (hooks are removed after every pass,
even a failed one); the forward stops as soon as every requested hook has fired, unless
logits are asked for; activations equal the bridge's at the same names to float tolerance
(tested on GPT-2, Llama, Qwen2 and a LoRA-merged model).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedModel

from ..errors import RlinterpError

log = logging.getLogger(__name__)

Port = Literal["input", "output"]
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
"""Which hooks to cache, as ``run_with_cache`` takes them: one name, a list, a predicate
over names, or None for every hook that has a site."""


class Site(NamedTuple):
    """Where a hook's value lives in the Hugging Face model."""

    module: str
    """The module's path in the model (``transformer.h.3``, ``model.layers.3.mlp``)."""
    port: Port
    """Its first tensor input or its (first) output."""


def shared_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree whose parameters and buffers are ``model``'s own
    tensors (nothing is copied but the modules and their config)."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def hook_sites(bridge: TransformerBridge, paths: dict[int, str]) -> dict[str, Site]:
    """Every hook name of ``bridge`` (aliases included) that is the input or output of a
    wrapped module, with that module's path; ``paths`` maps ``id(module) -> path`` for the
    modules of the tree the bridge was built over, taken before it was built."""
    owners: dict[int, tuple[nn.Module, str]] = {}
    for module in bridge.modules():
        for attribute in ("hook_in", "hook_out"):
            point = module._modules.get(attribute)
            if point is not None:
                owners[id(point)] = (module, attribute)
    sites = {}
    for name, point in bridge.hook_dict.items():
        owner = owners.get(id(point))
        if owner is None:
            continue
        component, attribute = owner
        wrapped = getattr(component, "original_component", None)
        if wrapped is None or id(wrapped) not in paths:
            continue
        sites[name] = Site(paths[id(wrapped)], "input" if attribute == "hook_in" else "output")
    return sites


PROBE_TOKENS = 8
"""The length of the prompt a hook map is checked (and its shapes read) on."""


@dataclass(frozen=True)
class HookMap:
    """The hook names of one architecture: which of them are a module's input or output
    (``sites``, checked against the bridge), and the bridge's config and tokenizer."""

    sites: dict[str, Site]
    """Name -> module and port, for the names whose value the plain forward gives as the
    bridge does."""
    names: tuple[str, ...]
    """Every name the bridge's ``run_with_cache`` returns (aliases included)."""
    cfg: Any
    """The bridge's config (``n_layers``, ``n_ctx``, ``d_model``, ``device``, ...)."""
    tokenizer: Any
    """The bridge's tokenizer."""
    shapes: dict[str, tuple[int, ...]]
    """Every name's activation shape on the ``PROBE_TOKENS``-token probe: ``(1, PROBE_TOKENS,
    d)`` for a hook with one vector per token."""

    @classmethod
    @torch.no_grad()
    def build(
        cls, bridge: TransformerBridge, sites: dict[str, Site], model: PreTrainedModel, tolerance: float
    ) -> HookMap:
        """The map of ``bridge`` (built over ``model``'s weights, with ``sites`` from
        ``hook_sites``), keeping the sites whose value on a few tokens equals the bridge's
        within ``tolerance`` (relative to the activation's scale, floored at 1); the others
        (a module whose input or output is not what the bridge hooks) stay the bridge's."""
        probe = torch.tensor(
            [[bridge.tokenizer.bos_token_id or 0, *range(1, PROBE_TOKENS)]], device=model.device
        )
        _, expected = bridge.run_with_cache(probe)
        hooked = HookedModel(model, sites, bridge.cfg, bridge.tokenizer)
        _, actual = hooked.run_with_cache(
            probe, [name for name in sites if name in expected], return_type=None
        )
        kept, dropped = {}, []
        for name, value in actual.items():
            reference = expected[name]
            same = value.shape == reference.shape and (
                (value.float() - reference.float()).abs().max().item()
                <= tolerance * max(reference.float().abs().max().item(), 1.0)
            )
            if same:
                kept[name] = sites[name]
            else:
                dropped.append(name)
        if dropped:
            log.info("hooks read through the bridge (no module gives their value): %s", dropped)
        shapes = {name: tuple(value.shape) for name, value in expected.items()}
        return cls(kept, tuple(expected), bridge.cfg, bridge.tokenizer, shapes)


class _Stop(Exception):
    """Raised by the last hook a pass needs: the rest of the forward is not computed."""


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    raise RlinterpError("a hooked module was called without a tensor input")


def _output_tensor(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class _Point(NamedTuple):
    """What an editing function gets as ``hook`` (TransformerLens passes its HookPoint)."""

    name: str


def _edit_output(
    fn: Callable[..., Tensor | None], point: _Point, _module: nn.Module, _args: Any, output: Any
) -> Any:
    if isinstance(output, tuple | list):
        edited = fn(output[0], hook=point)
        return output if edited is None else (edited, *output[1:])
    edited = fn(output, hook=point)
    return output if edited is None else edited


def _edit_input(
    fn: Callable[..., Tensor | None],
    point: _Point,
    _module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args and isinstance(args[0], Tensor):
        edited = fn(args[0], hook=point)
        return ((args[0] if edited is None else edited, *args[1:]), kwargs)
    edited = fn(kwargs["hidden_states"], hook=point)
    return (args, kwargs if edited is None else {**kwargs, "hidden_states": edited})


class HookedModel:
    """A ``transformers`` causal LM answering TransformerLens hook names (see the module
    docstring); ``cfg`` and ``tokenizer`` are the bridge's, so code written for a bridge's
    ``run_with_cache`` runs on it unchanged."""

    def __init__(self, model: PreTrainedModel, sites: dict[str, Site], cfg: Any, tokenizer: Any):
        self.model = model
        self.sites = sites
        self.cfg = cfg
        self.tokenizer = tokenizer

    def names(self, names_filter: NamesFilter = None) -> list[str]:
        """The hook names ``names_filter`` selects, each checked to have a site."""
        if names_filter is None:
            return list(self.sites)
        if callable(names_filter):
            return [name for name in self.sites if names_filter(name)]
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        missing = [name for name in names if name not in self.sites]
        if missing:
            raise RlinterpError(
                f"hook(s) {missing} are not the input or output of a module of the transformers model, so "
                "the fast forward cannot read them; use the TransformerLens bridge (series.load) for them"
            )
        return names

    @contextmanager
    def _capturing(self, names: Sequence[str], stop: bool) -> Iterator[dict[str, Tensor]]:
        cache: dict[str, Tensor] = {}
        by_site: dict[Site, list[str]] = {}
        for name in names:
            by_site.setdefault(self.sites[name], []).append(name)

        def keep(site: Site, value: Tensor) -> None:
            for name in by_site[site]:
                cache[name] = value
            if stop and len(cache) == len(names):
                raise _Stop

        handles = []
        try:
            for site in by_site:
                module = self.model.get_submodule(site.module)
                if site.port == "input":
                    handles.append(
                        module.register_forward_pre_hook(
                            lambda _m, args, kwargs, site=site: keep(site, _first_tensor(args, kwargs)),
                            with_kwargs=True,
                        )
                    )
                else:
                    handles.append(
                        module.register_forward_hook(
                            lambda _m, _args, output, site=site: keep(site, _output_tensor(output))
                        )
                    )
            yield cache
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def run_with_cache(
        self,
        tokens: Int[Tensor, "batch pos"],
        names_filter: NamesFilter = None,
        stop_at_layer: int | None = None,
        return_type: Literal["logits"] | None = "logits",
    ) -> tuple[Float[Tensor, "batch pos d_vocab"] | None, dict[str, Tensor]]:
        """Logits (None unless asked for) and the activations of the hooks ``names_filter``
        selects, as the bridge's ``run_with_cache`` returns them. Without logits the pass
        stops once every hook has fired, which makes ``stop_at_layer`` (accepted for the
        bridge's signature) unnecessary."""
        del stop_at_layer
        names = self.names(names_filter)
        want_logits = return_type == "logits"
        with self._capturing(names, stop=not want_logits) as cache:
            try:
                output = self.model(input_ids=tokens, use_cache=False)
            except _Stop:
                output = None
        return (output.logits if output is not None else None), cache

    @torch.no_grad()
    def run_with_hooks(
        self,
        tokens: Int[Tensor, "batch pos"],
        fwd_hooks: Sequence[tuple[str, Callable[..., Tensor | None]]] = (),
        return_type: Literal["logits"] = "logits",
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits with ``fwd_hooks`` editing activations, as the bridge's ``run_with_hooks``
        takes them: ``(name, fn)``, ``fn(activation, hook=...)`` returning the new value (or
        None to keep it). An edit at a module's input changes only what that module reads,
        as the bridge's ``hook_in`` does."""
        del return_type
        handles = []
        try:
            for name, fn in fwd_hooks:
                site = self.sites[self.names([name])[0]]
                module = self.model.get_submodule(site.module)
                point = _Point(name)
                if site.port == "output":
                    handles.append(module.register_forward_hook(partial(_edit_output, fn, point)))
                else:
                    handles.append(
                        module.register_forward_pre_hook(partial(_edit_input, fn, point), with_kwargs=True)
                    )
            return self.model(input_ids=tokens, use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def __call__(
        self, tokens: Int[Tensor, "batch pos"], return_type: Literal["logits"] = "logits"
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """The model's logits, as the bridge's ``__call__`` returns them."""
        del return_type
        return self.model(input_ids=tokens, use_cache=False).logits

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding, as the bridge's ``W_U``."""
        return self.model.get_output_embeddings().weight.T
