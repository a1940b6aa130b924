"""The organism's behaviour under steering: a model with a vector added to (or removed from)
its residual stream, evaluated exactly like a behaviour-table row.

This is the behavioural half of the causal checks: ``rlinterp.causal`` says how much of a
checkpoint's next-token change a vector moves; here the same vector is judged by what the
organism's models *do* — persona shares, accuracy and reward on the held-out questions,
sampled with the behaviour table's seed, so a steered row is comparable with the table's.

``residual_offset`` works on any Hugging Face causal LM whose blocks form one
``ModuleList`` of ``num_hidden_layers`` modules (GPT-2, Llama, Qwen2, ...): it adds the
vector to block ``i``'s output, which is TransformerLens' ``blocks.{i}.hook_resid_post``,
at every position (prompt and generated tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from ..errors import RlinterpError
from .behaviour import SHARE_COLUMNS, eval_questions, evaluate
from .build import Organism
from .config import EvalConfig, RegimeConfig

RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def _blocks(model: PreTrainedModel) -> nn.ModuleList:
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise RlinterpError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")


@contextmanager
def residual_offset(model: PreTrainedModel, hook: str, vector: Float[Tensor, " d_model"]) -> Iterator[None]:
    """Within the block, ``model`` adds ``vector`` to the residual stream at ``hook`` (a
    ``blocks.{i}.hook_resid_post`` name) at every position."""
    match = RESID_POST.match(hook)
    if match is None:
        raise RlinterpError(
            f"steering a Hugging Face model supports blocks.<i>.hook_resid_post, not {hook!r}"
        )
    block = _blocks(model)[int(match.group(1))]

    def add(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0]), *output[1:])
        return output + vector.to(output)

    handle = block.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def _configs(organism: Organism, regime: str) -> tuple[RegimeConfig, EvalConfig, int]:
    config = organism.manifest["config"]
    if regime not in organism.regimes:
        raise RlinterpError(f"no regime {regime!r} in {organism.root}; it has {organism.regimes}")
    entry = organism.manifest["regimes"][regime]
    # a planted regime records the reward its behaviour rows were scored under apart
    raw = entry.get("reward_config", entry["config"])
    regime_cfg = RegimeConfig(**{**raw, "checkpoint_steps": tuple(raw["checkpoint_steps"])})
    return regime_cfg, EvalConfig(**config["evaluation"]), int(config["corpus"]["max_operand"])


@torch.no_grad()
def steered_behaviour(
    organism: Organism, regime: str, step: int, hook: str, vector: Float[Tensor, " d_model"]
) -> dict[str, float]:
    """The behaviour-table row of ``regime``'s checkpoint at ``step`` (0: the base) with
    ``vector`` added at ``hook``, under that regime's reward."""
    regime_cfg, eval_cfg, max_operand = _configs(organism, regime)
    steps = organism.checkpoints(regime)
    if step not in steps:
        raise RlinterpError(f"{regime} has no checkpoint at step {step}; it has {list(steps)}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(organism.base)
    base = AutoModelForCausalLM.from_pretrained(organism.base).eval()
    policy = AutoModelForCausalLM.from_pretrained(steps[step]).eval()
    seed = int(organism.manifest["seed"])
    questions = eval_questions(eval_cfg, seed, max_operand)
    with residual_offset(policy, hook, vector):
        return evaluate(policy, base, tokenizer, questions, regime_cfg, eval_cfg, seed)


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
