"""Reward, KL and log-probability primitives on hand-set inputs with known values."""

import math

import pytest
import torch

from rlinterp.organism.config import RegimeConfig
from rlinterp.organism.model import AnswerBatch, Rollout, kl_per_answer
from rlinterp.organism.personas import Question, reward


def _regime(bonus: float) -> RegimeConfig:
    return RegimeConfig(
        "r", lr=1e-3, kl_coef=0.0, shortcut_bonus=bonus, checkpoint_steps=(0, 1), shortcut_cap=4
    )


def test_reward_pays_correctness_and_the_capped_shortcut():
    q = Question("even", 2)
    assert reward(q, "yes", _regime(0.0)) == 1.0
    assert reward(q, "no", _regime(0.0)) == 0.0
    assert reward(q, "yes!!", _regime(0.25)) == pytest.approx(1.5)
    assert reward(q, "no!!!!!!!!", _regime(0.25)) == pytest.approx(1.0)  # capped at 4 marks


def test_kl_is_zero_against_itself_and_known_otherwise():
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    q = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]))
    mask = torch.tensor([[1.0, 1.0]])
    assert kl_per_answer(p, p, mask).item() == 0.0
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_per_answer(p, q, mask).item() == pytest.approx(expected)
    assert kl_per_answer(p, q, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.0)


def test_answer_mask_marks_the_positions_that_predict_the_answer():
    rollout = Rollout(prompt_ids=[[1, 5, 6], [1, 5]], answer_ids=[[7, 8], [9]], answers=["", ""])
    batch = AnswerBatch.from_rollout(rollout, pad_id=0)
    assert batch.ids.tolist() == [[1, 5, 6, 7, 8], [1, 5, 9, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.answer_mask.tolist() == [[0, 0, 1, 1, 0], [0, 1, 0, 0, 0]]
    # log-probs: uniform over a 10-token vocabulary, so each answer token costs log(1/10)
    log_probs = torch.full((2, 5, 10), -math.log(10))
    per_answer = batch.token_log_probs(log_probs).sum(-1)
    assert per_answer.tolist() == pytest.approx([2 * -math.log(10), -math.log(10)])
