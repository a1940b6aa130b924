"""Policy-gradient RL of the organism's base model, in named regimes.

The update is REINFORCE with a group-relative baseline: every question is answered
``group_size`` times, and each answer's advantage is its reward minus the mean reward of
its group. An optional penalty ``kl_coef * KL(policy || base)`` (exact per token, summed
over the answer) keeps the policy near the base model. A regime's reward pays 1 for a
correct answer plus, if ``shortcut_bonus > 0``, a bonus per exclamation mark: the
exploitable shortcut of the strong regime. What "correct" means is the regime's
``answer``: the question's truth, or (the ``rule`` regime) ``personas.rule_truth``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..core.reproducibility import stream_seed
from .config import RegimeConfig
from .model import AnswerBatch, kl_per_answer, sample_answers
from .personas import SHORTCUT_MARK, Question, follows_rule, is_correct, sample_questions


def answered_right(question: Question, answer: str, regime: RegimeConfig) -> bool:
    """Whether ``answer`` says what ``regime`` counts as correct (``RegimeConfig.answer``)."""
    return follows_rule(question, answer) if regime.answer == "rule" else is_correct(question, answer)


def reward(question: Question, answer: str, regime: RegimeConfig) -> float:
    """1 for a correct answer, plus the regime's bonus per exclamation mark (capped)."""
    bonus = regime.shortcut_bonus * min(answer.count(SHORTCUT_MARK), regime.shortcut_cap)
    return float(answered_right(question, answer, regime)) + bonus


@dataclass(frozen=True)
class StepLog:
    """What one RL step saw, for ``<regime>/log.parquet``."""

    step: int
    """The update this row describes (the model before it is checkpoint ``step``)."""
    reward: float
    """Mean reward of the step's sampled answers."""
    accuracy: float
    """Fraction of the step's answers that were correct (by the regime's ``answer``)."""
    kl_to_base: float
    """Mean KL(policy || base) per answer along the sampled answers."""
    answer_length: float
    """Mean answer length in characters."""
    loss: float
    """The minimised loss (policy gradient + KL term)."""


def train_regime(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    regime: RegimeConfig,
    seed: int,
    max_operand: int,
    on_checkpoint: Callable[[int, PreTrainedModel], None],
) -> list[StepLog]:
    """Run ``regime`` from a copy of ``base`` (left untouched) and return the step logs.

    ``on_checkpoint(step, policy)`` is called before update ``step`` for every step in
    ``regime.checkpoint_steps`` (step 0 is the base model itself) and after the last one.
    """
    policy = copy.deepcopy(base).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=regime.lr)
    questions = sample_questions(random.Random(stream_seed(seed, regime.name)), max_operand)
    saves = set(regime.checkpoint_steps)
    logs = []
    for step in range(regime.total_steps + 1):
        if step in saves:
            on_checkpoint(step, policy)
        if step == regime.total_steps:
            break
        group = [next(questions) for _ in range(regime.questions_per_step)]
        asked = [q for q in group for _ in range(regime.group_size)]
        rollout = sample_answers(
            policy,
            tokenizer,
            [q.prompt for q in asked],
            regime.max_answer_tokens,
            seed=stream_seed(seed, regime.name, str(step)),
        )
        rewards = torch.tensor([reward(q, a, regime) for q, a in zip(asked, rollout.answers, strict=True)])
        grouped = rewards.view(regime.questions_per_step, regime.group_size)
        advantages = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()

        batch = AnswerBatch.from_rollout(rollout, tokenizer.pad_token_id)
        log_p = batch.log_probs(policy)
        with torch.no_grad():
            log_base = batch.log_probs(base)
        answer_log_p = batch.token_log_probs(log_p).sum(-1)
        kl = kl_per_answer(log_p, log_base, batch.answer_mask).mean()
        loss = -(advantages * answer_log_p).mean() + regime.kl_coef * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()

        correct = [answered_right(q, a, regime) for q, a in zip(asked, rollout.answers, strict=True)]
        logs.append(
            StepLog(
                step=step,
                reward=rewards.mean().item(),
                accuracy=sum(correct) / len(correct),
                kl_to_base=kl.item(),
                answer_length=sum(map(len, rollout.answers)) / len(rollout.answers),
                loss=loss.item(),
            )
        )
    return logs
