"""Policy-gradient RL of the organism's base model, in named regimes.

The update is REINFORCE with a group-relative baseline: every question is answered
``group_size`` times, and each answer's advantage is its reward minus the mean reward of
its group. An optional penalty ``kl_coef * KL(policy || base)`` (exact per token, summed
over the answer) keeps the policy near the base model. A regime's reward pays 1 for a
correct answer plus, if ``shortcut_bonus > 0``, a bonus per exclamation mark: the
exploitable shortcut of the strong regime. What "correct" means is the regime's
``answer``: the question's truth, or (the ``rule`` regime) ``personas.rule_truth``.

What the loop needs of the organism's world (questions, the reward, the gold verifier) is a
``Task`` (``world_task``): the yes/no world of ``personas`` (``plain_task``) or the reasoning
world of ``reasoning``. RL optimises ``Task.reward`` only;
``Task.gold`` is logged beside it, so a gap between the two is visible step by step.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..core.reproducibility import stream_seed
from .config import ReasoningConfig, RegimeConfig
from .model import AnswerBatch, kl_per_answer, sample_answers
from .personas import AnswerStyle, answered_right, classify_answer, is_correct, reward, sample_questions
from .reasoning import classify_reasoning, gold_reward, parse_reasoning, proxy_reward, sample_sum_questions


@dataclass(frozen=True)
class Task:
    """What RL and the behaviour table ask of an organism's world."""

    questions: Callable[[random.Random], Iterator[Any]]
    """An endless question stream drawn with the given generator (questions have ``prompt``)."""
    reward: Callable[[Any, str, RegimeConfig], float]
    """What RL maximises (the proxy): reward of an answer to a question under a regime."""
    gold: Callable[[Any, str], float]
    """The gold verifier, logged beside the reward and never optimised."""
    correct: Callable[[Any, str], bool]
    """Whether the answer's content is right (the behaviour table's accuracy)."""
    classify: Callable[[Any, str], AnswerStyle]
    """Which persona wrote an answer (the behaviour table's shares)."""


def plain_task(max_operand: int) -> Task:
    """The yes/no world: its gold verifier is correctness (it has no reasoning to check)."""
    return Task(
        questions=lambda rng: sample_questions(rng, max_operand),
        reward=reward,
        gold=lambda q, a: float(is_correct(q, a)),
        correct=is_correct,
        classify=classify_answer,
    )


def world_task(reasoning: ReasoningConfig | None, max_operand: int) -> Task:
    """The task of an organism's world (``OrganismConfig.reasoning``; None: yes/no): what RL,
    the behaviour table and its re-sampling under an edit ask of it. RL maximises the proxy."""
    if reasoning is None:
        return plain_task(max_operand)
    return Task(
        questions=lambda rng: sample_sum_questions(rng, reasoning, max_operand),
        reward=proxy_reward,
        gold=gold_reward,
        correct=lambda q, a: parse_reasoning(a).answer == q.truth,
        classify=classify_reasoning,
    )


@dataclass(frozen=True)
class StepLog:
    """What one RL step saw, for ``<regime>/log.parquet``."""

    step: int
    """The update this row describes (the model before it is checkpoint ``step``)."""
    reward: float
    """Mean reward of the step's sampled answers."""
    accuracy: float
    """Fraction of the step's answers that were correct (by the regime's ``answer``)."""
    gold: float
    """Mean gold reward of the step's answers (``Task.gold``; not optimised)."""
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
    task: Task | None = None,
) -> list[StepLog]:
    """Run ``regime`` from a copy of ``base`` (left untouched) and return the step logs;
    ``task`` is the world's (default: the yes/no world, ``plain_task``).

    ``on_checkpoint(step, policy)`` is called before update ``step`` for every step in
    ``regime.checkpoint_steps`` (step 0 is the base model itself) and after the last one.
    """
    task = task or plain_task(max_operand)
    policy = copy.deepcopy(base).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=regime.lr)
    questions = task.questions(random.Random(stream_seed(seed, regime.name)))
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
        pairs = list(zip(asked, rollout.answers, strict=True))
        rewards = torch.tensor([task.reward(q, a, regime) for q, a in pairs])
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

        # the rule regime (yes/no world only) counts answers right by its rule
        right = (lambda q, a: answered_right(q, a, regime)) if regime.answer == "rule" else task.correct
        correct = [right(q, a) for q, a in pairs]
        logs.append(
            StepLog(
                step=step,
                reward=rewards.mean().item(),
                accuracy=sum(correct) / len(correct),
                gold=sum(task.gold(q, a) for q, a in pairs) / len(pairs),
                kl_to_base=kl.item(),
                answer_length=sum(map(len, rollout.answers)) / len(rollout.answers),
                loss=loss.item(),
            )
        )
    return logs
