"""The organism's behaviour under steering: a model with a vector added to (or removed from)
its residual stream, evaluated exactly like a behaviour-table row.

This is the behavioural half of the causal checks: ``rlinterp.causal`` says how much of a
checkpoint's next-token change an edit moves; here the same edits are judged by what the
organism's models *do* — persona shares, accuracy and reward on the held-out questions,
sampled with the behaviour table's seed, so a steered row is comparable with the table's.

Two edits, both on any Hugging Face causal LM whose blocks form one ``ModuleList`` of
``num_hidden_layers`` modules (GPT-2, Llama, Qwen2, ...), at block ``i``'s output, which is
TransformerLens' ``blocks.{i}.hook_resid_post``:

- ``residual_offset`` adds one vector at every position (prompt and generated tokens);
- ``decision_patch`` replaces, at the *decision position* (the prompt's last token, whose
  next-token distribution picks the answer's opening and with it the persona), the
  component of the residual stream in a subspace by another model's on the same prompt.
  It carries a per-prompt choice, which one vector cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from ..errors import RlinterpError
from ..organism.behaviour import SHARE_COLUMNS, evaluate
from ..organism.layout import Organism
from ..organism.model import transformer_blocks as _blocks
from ..organism.rl import world_task
from .causal import subspace_projector

RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


@contextmanager
def residual_offset(model: PreTrainedModel, hook: str, vector: Float[Tensor, " d_model"]) -> Iterator[None]:
    """Within the block, ``model`` adds ``vector`` to the residual stream at ``hook`` (a
    ``blocks.{i}.hook_resid_post`` name) at every position."""
    block = _blocks(model)[_layer(hook)]

    def add(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0]), *output[1:])
        return output + vector.to(output)

    with _hooked(block, add):
        yield


def _layer(hook: str) -> int:
    match = RESID_POST.match(hook)
    if match is None:
        raise RlinterpError(f"editing a Hugging Face model supports blocks.<i>.hook_resid_post, not {hook!r}")
    return int(match.group(1))


@contextmanager
def decision_patch(
    target: PreTrainedModel, source: PreTrainedModel, hook: str, basis: Float[Tensor, "d_model rank"]
) -> Iterator[None]:
    """Within the block, every forward pass of ``target`` over a whole prompt (more than one
    new position) has its residual stream at ``hook``, at the last position, moved by
    ``P(h_source - h_target)`` (``P`` the projector onto the span of ``basis``' columns),
    where ``h_source`` is ``source``'s activation on the same tokens. Cached generation
    steps (one new position) are left alone. Prompts must be unpadded (the last position is
    the decision position), as ``sample_answers`` makes them."""
    index = _layer(hook)
    projector = subspace_projector(basis)
    seen: dict[str, Tensor] = {}

    def remember_ids(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Any) -> None:
        seen["ids"] = inputs[0]

    def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
        seen["source"] = (output[0] if isinstance(output, tuple) else output)[:, -1]

    def patch(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] < 2:
            return output
        with _hooked(_blocks(source)[index], capture):
            source(input_ids=seen["ids"])
        last = hidden[:, -1]
        moved = (seen["source"].float() - last.float()) @ projector
        hidden = torch.cat([hidden[:, :-1], (last.float() + moved).to(hidden.dtype).unsqueeze(1)], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with _hooked(target.get_input_embeddings(), remember_ids), _hooked(_blocks(target)[index], patch):
        yield


@contextmanager
def _hooked(module: nn.Module, fn: Callable[..., Any]) -> Iterator[None]:
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def steered_behaviour(
    organism: Organism, regime: str, step: int, hook: str, vector: Float[Tensor, " d_model"]
) -> dict[str, float]:
    """The behaviour-table row of ``regime``'s checkpoint at ``step`` (0: the base) with
    ``vector`` added at ``hook``, under that regime's reward."""
    return _behaviour_under(organism, regime, step, lambda policy: residual_offset(policy, hook, vector))


@torch.no_grad()
def patched_behaviour(
    organism: Organism,
    regime: str,
    step: int,
    source_step: int,
    hook: str,
    basis: Float[Tensor, "d_model rank"],
) -> dict[str, float]:
    """The behaviour-table row of ``regime``'s checkpoint at ``step`` (0: the base) with
    the component in span(``basis``) of its decision-position residual at ``hook`` taken
    from the checkpoint at ``source_step`` (see ``decision_patch``), under that regime's
    reward."""
    source = AutoModelForCausalLM.from_pretrained(_checkpoint(organism, regime, source_step)).eval()
    return _behaviour_under(
        organism, regime, step, lambda policy: decision_patch(policy, source, hook, basis)
    )


def _checkpoint(organism: Organism, regime: str, step: int) -> Path:
    steps = organism.checkpoints(regime)
    if step not in steps:
        raise RlinterpError(f"{regime} has no checkpoint at step {step}; it has {list(steps)}")
    return steps[step]


def _behaviour_under(
    organism: Organism,
    regime: str,
    step: int,
    edit: Callable[[PreTrainedModel], AbstractContextManager[None]],
) -> dict[str, float]:
    regime_cfg, eval_cfg = organism.regime_config(regime), organism.eval_config()
    path = _checkpoint(organism, regime, step)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(organism.base)
    base = AutoModelForCausalLM.from_pretrained(organism.base).eval()
    policy = AutoModelForCausalLM.from_pretrained(path).eval()
    seed = int(organism.manifest["seed"])
    task = world_task(organism.reasoning, organism.max_operand)
    with edit(policy):
        return evaluate(policy, base, tokenizer, organism.eval_questions(), regime_cfg, eval_cfg, seed, task)


def behaviour_recovery(base: dict[str, Any], post: dict[str, Any], moved: dict[str, Any]) -> dict[str, float]:
    """How far ``moved`` (a steered or ablated row) went from ``base`` towards ``post``:
    ``shares`` = 1 - L1(moved, post) / L1(base, post) over the persona/style shares, and
    ``reward`` = (moved - base) / (post - base); NaN where base and post agree."""
    gap = sum(abs(float(post[c]) - float(base[c])) for c in SHARE_COLUMNS)
    left = sum(abs(float(post[c]) - float(moved[c])) for c in SHARE_COLUMNS)
    reward_gap = float(post["reward"]) - float(base["reward"])
    return {
        "shares": 1 - left / gap if gap > 0 else float("nan"),
        "reward": (float(moved["reward"]) - float(base["reward"])) / reward_gap
        if reward_gap
        else float("nan"),
    }
