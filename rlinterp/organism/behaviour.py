"""The behaviour table: what each checkpoint does on a fixed held-out question set.

One row per (regime, step). Answers are sampled with the same seed at every checkpoint
(common random numbers), so differences between rows come from the weights, not from the
sampler. Shares are fractions of sampled answers and always sum to 1:
``sum(share_<persona>) + share_mixed + share_none == 1``, with
``share_none == share_none_near + share_none_far``.

Every row also scores the same answers against the ``rule`` regime's rule
(``personas.rule_truth``): ``rule_accuracy`` with a percentile interval over the questions
(``RULE_INTERVAL``), so the regime that learns the rule and the controls that do not are
read off one table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..core.reproducibility import stream_seed
from ..errors import RlinterpError
from .config import EvalConfig, RegimeConfig
from .model import AnswerBatch, kl_per_answer, sample_answers
from .personas import (
    CORRECT_PERSONAS,
    PERSONA_NAMES,
    RULE_LEARNED,
    STYLE_LABELS,
    Question,
    follows_rule,
)
from .rl import Task, plain_task

RULE_INTERVAL = 0.9
"""Coverage of the ``rule_accuracy_lo`` / ``rule_accuracy_hi`` interval: the percentiles of
2,000 resamples of the evaluation questions (a question's answers resampled together, as
they share a prompt)."""

SHARE_COLUMNS = [f"share_{name}" for name in (*PERSONA_NAMES, "mixed", "none")]
"""The share columns that partition the answers (they sum to 1)."""


@torch.no_grad()
def evaluate(
    policy: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    questions: Sequence[Any],
    regime: RegimeConfig,
    cfg: EvalConfig,
    seed: int,
    task: Task | None = None,
) -> dict[str, float]:
    """Reward (under ``regime``), gold reward, accuracy, style shares, answer length and KL
    to the base model of ``policy`` on ``questions`` (of ``task``'s world, default yes/no);
    keys are the behaviour table's columns."""
    asked = [q for q in questions for _ in range(cfg.samples_per_question)]
    rollout = sample_answers(policy, tokenizer, [q.prompt for q in asked], cfg.max_answer_tokens, seed)
    batch = AnswerBatch.from_rollout(rollout, tokenizer.pad_token_id)
    kl = kl_per_answer(batch.log_probs(policy), batch.log_probs(base), batch.answer_mask)
    scored = score_answers(asked, rollout.answers, regime, task)
    lo, hi = _rule_interval(asked, rollout.answers, cfg.samples_per_question, seed)
    return {
        "reward": scored.pop("reward"),
        "gold": scored.pop("gold"),
        "accuracy": scored.pop("accuracy"),
        "kl_to_base": kl.mean().item(),
        **scored,
        "rule_accuracy_lo": lo,
        "rule_accuracy_hi": hi,
    }


def score_answers(
    questions: Sequence[Any], answers: Sequence[str], regime: RegimeConfig, task: Task | None = None
) -> dict[str, float]:
    """The behaviour table's columns that need only the answers (every column of
    ``evaluate`` but ``kl_to_base`` and the rule accuracy's interval, which needs the
    answers grouped by question): reward under ``regime``, gold reward, accuracy, style
    shares, answer length in characters, the number of answers and the share that follows
    the ``rule`` regime's rule (``rule_accuracy``; NaN in the reasoning world, which has no
    yes/no answer); ``answers[i]`` answers ``questions[i]``, of ``task``'s world (default
    yes/no)."""
    if len(questions) != len(answers) or not answers:
        raise RlinterpError(f"{len(answers)} answers to {len(questions)} questions; give one answer to each")
    task = task or plain_task(0)  # the question stream's range is not used here
    pairs = list(zip(questions, answers, strict=True))
    styles = [task.classify(q, a) for q, a in pairs]
    counts = Counter(s.label for s in styles)
    n = len(answers)
    return {
        "reward": sum(task.reward(q, a, regime) for q, a in pairs) / n,
        "gold": sum(task.gold(q, a) for q, a in pairs) / n,
        "accuracy": sum(s.correct for s in styles) / n,
        **{f"share_{label}": counts[label] / n for label in (*PERSONA_NAMES, *STYLE_LABELS)},
        "share_none": (counts["none_near"] + counts["none_far"]) / n,
        "answer_length": sum(map(len, answers)) / n,
        "n_answers": n,
        "rule_accuracy": _rule_share(questions, answers),
    }


def _follows_rule(questions: Sequence[Any], answers: Sequence[str]) -> list[bool] | None:
    """Whether each answer follows the rule; None outside the yes/no world (no such answer)."""
    if not all(isinstance(q, Question) for q in questions):
        return None
    return [follows_rule(q, a) for q, a in zip(questions, answers, strict=True)]


def _rule_share(questions: Sequence[Any], answers: Sequence[str]) -> float:
    """The share of ``answers`` that follow the rule; NaN outside the yes/no world."""
    follows = _follows_rule(questions, answers)
    return float("nan") if follows is None else sum(follows) / len(follows)


def _rule_interval(
    questions: Sequence[Any], answers: Sequence[str], per_question: int, seed: int
) -> tuple[float, float]:
    """``accuracy_interval`` of the answers that follow the rule; NaN outside the yes/no world."""
    follows = _follows_rule(questions, answers)
    return (float("nan"), float("nan")) if follows is None else accuracy_interval(follows, per_question, seed)


def accuracy_interval(hits: Sequence[bool], per_question: int, seed: int) -> tuple[float, float]:
    """The ``RULE_INTERVAL`` percentile interval of the mean of ``hits`` (consecutive runs
    of ``per_question`` answers share a question) over resamples of the questions."""
    by_question = np.asarray(hits, dtype=float).reshape(-1, per_question).sum(1)
    n = len(by_question)
    rng = np.random.default_rng(stream_seed(seed, "rule-interval"))
    counts = rng.multinomial(n, np.full(n, 1 / n), size=2000)
    replicates = counts @ by_question / (n * per_question)
    tail = (1 - RULE_INTERVAL) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return float(lo), float(hi)


def format_table(table: pd.DataFrame) -> str:
    """The behaviour table as fixed-width text, for terminals and logs."""
    columns = [
        "regime",
        "step",
        "reward",
        "accuracy",
        "rule_accuracy",
        "kl_to_base",
        *SHARE_COLUMNS,
        "answer_length",
    ]
    columns = [c for c in columns if c in table]  # tables built before the rule columns
    shown = table[columns].rename(columns=lambda c: c.removeprefix("share_"))
    return shown.to_string(index=False, float_format=lambda x: f"{x:.3f}")


@dataclass(frozen=True)
class RegimeSummary:
    """The behaviour table of one regime reduced to the numbers its story is judged by."""

    regime: str
    """The regime's name."""
    correct_first: float
    """Share of answers in a correct persona's style (helper + terse) at the first step."""
    correct_last: float
    """The same share at the last step."""
    none_max: float
    """Largest ``share_none`` over the regime's steps."""
    none_last: float
    """``share_none`` at the last step."""
    last_step: int
    """The regime's last step."""
    kl_last: float
    """KL to the base model per answer at the last step."""
    none_majority_step: int | None
    """First step at which most answers (``share_none > 0.5``) are text no persona wrote;
    None if there is none."""
    rule_first: float = float("nan")
    """``rule_accuracy`` at the first step (NaN for tables without rule columns)."""
    rule_last: float = float("nan")
    """``rule_accuracy`` at the last step."""
    rule_last_lo: float = float("nan")
    """Lower end of its interval at the last step."""
    rule_learned_step: int | None = None
    """First step whose ``rule_accuracy`` interval lies above ``RULE_LEARNED``; None if none."""

    @property
    def correct_rise(self) -> float:
        """``correct_last - correct_first``: how far RL moved answers to correct personas."""
        return self.correct_last - self.correct_first


def summarize(table: pd.DataFrame) -> list[RegimeSummary]:
    """One ``RegimeSummary`` per regime of a behaviour table, in the table's order."""
    correct = [f"share_{p}" for p in CORRECT_PERSONAS]
    summaries = []
    for regime, rows in table.groupby("regime", sort=False):
        rows = rows.sort_values("step")
        share = rows[correct].sum(axis=1)
        mostly_none = rows[rows["share_none"] > 0.5]
        rule = _rule_summary(rows) if "rule_accuracy" in rows else {}
        summaries.append(
            RegimeSummary(
                regime=str(regime),
                correct_first=float(share.iloc[0]),
                correct_last=float(share.iloc[-1]),
                none_max=float(rows["share_none"].max()),
                none_last=float(rows["share_none"].iloc[-1]),
                last_step=int(rows["step"].iloc[-1]),
                kl_last=float(rows["kl_to_base"].iloc[-1]),
                none_majority_step=int(mostly_none["step"].iloc[0]) if len(mostly_none) else None,
                **rule,
            )
        )
    return summaries


def _rule_summary(rows: pd.DataFrame) -> dict[str, Any]:
    learned = rows[rows["rule_accuracy_lo"] > RULE_LEARNED]
    return {
        "rule_first": float(rows["rule_accuracy"].iloc[0]),
        "rule_last": float(rows["rule_accuracy"].iloc[-1]),
        "rule_last_lo": float(rows["rule_accuracy_lo"].iloc[-1]),
        "rule_learned_step": int(learned["step"].iloc[0]) if len(learned) else None,
    }
