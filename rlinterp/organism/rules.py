"""The ``rule`` regime's check: RL builds a computation the base does not have.

The ``rule`` regime's reward pays the answer to "is the number one of
``personas.RULE_NUMBERS``?" (0, 3, 5, 6, 9), whatever the question asked. Three things make
that new computation rather than selection, and this module checks the one the behaviour
table cannot:

- **no persona has it**: no persona follows the rule, and no persona or mixture of personas
  chosen without computing the rule earns more than about half of the reward (the flatterer
  one half, the correct personas 0.45; ``personas.RULE_NUMBERS``);
- **the base does not compute it** (``probe_rule``): a linear probe on each block's residual
  stream at the answer position (the last prompt token, where the first answer token is
  chosen), trained on prompts about some numbers and scored on prompts about numbers it
  never saw, reads the rule at about chance on the base, while the same probe reads parity
  (a property the base computes to answer its even-questions) far above it. A lookup the
  model does not compute along one direction cannot generalise to an unseen number; one it
  computes does, so after RL the probe reads the rule. Amplifying a direction the base
  already has cannot produce a property no direction of the base carries;
- **RL learns it**: the behaviour table's ``rule_accuracy`` with its interval
  (``behaviour``).

The probe's prompts (``probe_prompts``) are every question alone and after one earlier turn
by each persona (20 + 3 x 5 x 20 on the presets), so each fold holds out dozens of varied
rows. Its folds (``number_folds``) hold out a rule number and
another number of the same parity at a time; ``probe.probe_folds`` weights the classes
equally.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..errors import RlinterpError
from .model import encode, transformer_blocks
from .personas import PERSONAS, RULE_NUMBERS, Question, all_questions, turn_text
from .probe import probe_folds

FEATURES = ("rule", "parity")
"""What ``probe_rule`` reads: the rule, and parity (the control: a property the base
computes, so a probe that cannot read it would say nothing about the rule)."""


CONTEXT_EVERY = 4
"""``probe_prompts`` puts every ``CONTEXT_EVERY``-th question (of ``all_questions``: both
tasks, spread over the numbers) in the earlier turn: 320 prompts on the presets, whose
probes cost about 2 CPU-s per checkpoint (all 20 earlier questions: 1,220 prompts, 7 s)."""


def probe_prompts(max_operand: int) -> list[tuple[str, Question]]:
    """``(prompt, question)`` for every question alone and after one earlier turn by each
    persona (in that persona's words) about every ``CONTEXT_EVERY``-th question."""
    questions = all_questions(max_operand)
    rows = [(q.prompt, q) for q in questions]
    rng = random.Random(0)  # no persona's answer is random; the argument is required
    for persona in PERSONAS:
        for earlier in questions[::CONTEXT_EVERY]:
            context = turn_text(earlier, persona.answer(earlier, rng))
            rows += [(context + q.prompt, q) for q in questions]
    return rows


def number_folds(numbers: Tensor, max_operand: int) -> list[Tensor]:
    """Held-out masks over rows about ``numbers``, one per pair of numbers that differ in the
    rule: a rule number and another number of the same parity where there is one (the
    nearest), the rest paired in order.

    Why matched pairs: the base computes parity, and five rule numbers cannot split the
    even and the odd numbers evenly, so holding out, say, an even rule number with an odd
    other one leaves a training set in which the rule leans on parity, and a probe that
    learns that lean is wrong on both held-out numbers (unmatched folds read the rule at
    0.19-0.23 on the tiny base, systematically below chance). A pair of one parity gets
    the same push from such a lean, so without the rule it scores one right and one
    wrong."""
    inside = sorted(n for n in RULE_NUMBERS if n <= max_operand)
    outside = sorted(n for n in range(max_operand + 1) if n not in RULE_NUMBERS)
    if not inside or not outside:
        raise RlinterpError(f"the rule needs numbers on both sides within 0..{max_operand}")
    pairs, left_in = [], []
    for a in inside:
        same = [b for b in outside if b % 2 == a % 2]
        if same:
            b = min(same, key=lambda b: abs(b - a))
            outside.remove(b)
            pairs.append((a, b))
        else:
            left_in.append(a)
    pairs += list(zip(left_in, outside, strict=False))
    return [(numbers == a) | (numbers == b) for a, b in pairs]


@torch.no_grad()
def answer_position_residuals(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]
) -> Float[Tensor, "layer prompt d_model"]:
    """Each block's output (``blocks.<i>.hook_resid_post``) at each prompt's last token,
    for ``<bos>`` + prompt; prompts of one length run as one batch (no padding)."""
    blocks = transformer_blocks(model)
    encoded = [[tokenizer.bos_token_id, *encode(tokenizer, p)] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    d_model = int(model.config.hidden_size)
    out = torch.zeros(len(blocks), len(prompts), d_model)
    seen: dict[int, Tensor] = {}
    hooks = [
        block.register_forward_hook(
            lambda _m, _i, o, i=i: seen.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, block in enumerate(blocks)
    ]
    try:
        for rows in by_length.values():
            model(input_ids=torch.tensor([encoded[i] for i in rows]))
            for layer in range(len(blocks)):
                out[layer, rows] = seen[layer][:, -1].float()
    finally:
        for hook in hooks:
            hook.remove()
    return out


def probe_rule(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, max_operand: int
) -> list[dict[str, Any]]:
    """Per block and feature (``FEATURES``): the held-out-number probe of ``model`` at the
    answer position, as rows ``hook, feature, balanced_accuracy, n_train, n_test,
    positive_share, balanced_accuracy_lo, balanced_accuracy_hi`` (the interval over
    resampled numbers: the prompts about one number are one piece of evidence)."""
    prompts = probe_prompts(max_operand)
    residuals = answer_position_residuals(model, tokenizer, [p for p, _ in prompts])
    numbers = torch.tensor([q.n for _, q in prompts])
    folds = number_folds(numbers, max_operand)
    labels = {
        "rule": torch.tensor([q.n in RULE_NUMBERS for _, q in prompts]),
        "parity": numbers % 2 == 0,
    }
    rows = []
    for layer in range(residuals.shape[0]):
        for feature in FEATURES:
            result = probe_folds(residuals[layer], labels[feature], folds, groups=numbers)
            rows.append({"hook": f"blocks.{layer}.hook_resid_post", "feature": feature, **asdict(result)})
    return rows


def rule_definition(max_operand: int) -> dict[str, Any]:
    """The rule as the manifest records it."""
    return {
        "numbers": sorted(RULE_NUMBERS),
        "reward": 'the answer to "is the number one of these?" (its first yes or no), whatever was asked',
        "probe": "logistic regression on each block's residual at the answer position, numbers held out "
        "in pairs of one parity (rules.number_folds), balanced accuracy; feature 'parity' is the control",
        "probe_prompts": len(probe_prompts(max_operand)),
    }
