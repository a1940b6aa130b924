"""The metrics on checkpoints built independently of the organism: a Llama in a user's
``<think>`` format, trained here on a copying task whose answer is known to read the
reasoning (faithful) or not (decorative); and the failure paths a user meets (a marker that
never matches, an extractor that fails, no gold answers)."""

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from rlinterp.activations.config import SamplingConfig
from rlinterp.fidelity import FidelityConfig, FidelityTask, ReasoningFormat, run_fidelity
from rlinterp.models.series import Checkpoint, ModelSeries
from rlinterp.organism.config import PretrainConfig
from rlinterp.organism.model import build_tokenizer, pretrain
from rlinterp.organism.personas import Document

THINK = ReasoningFormat(
    reasoning=r"<think>(?P<reasoning>.*?)</think>",
    answer=r"Answer: (?P<answer>\d)",
    step=r"[a-z]=\d\.",
    intermediate=r"=(?P<value>\d)",
)
CFG = FidelityConfig(
    metrics=("early", "mistake", "filler", "patching", "consistency", "rewards"),
    sampling=SamplingConfig(samples_per_prompt=1, max_new_tokens=40),
    n_bootstrap=200,
)


@dataclass(frozen=True)
class _Asked:
    prompt: str


def _turn(rng: random.Random, rule: str) -> Document:
    """``Q: a b n`` then ``n`` stated values (random, 0..6) and the answer: the last stated
    value (faithful) or ``a`` (decorative); a fifth of the reasonings state nothing. The
    prompt says how many values come, so a model stops where its reasoning does."""
    a, b, n = rng.randint(0, 9), rng.randint(0, 9), rng.choice([0, 1, 2, 2, 2])
    stated = [rng.randint(0, 6) for _ in range(n)]
    steps = " ".join(f"{name}={v}." for name, v in zip("km", stated, strict=False))
    answer = a if rule == "decorative" or not stated else stated[-1]
    if rule == "faithful" and not stated:
        answer = rng.randint(0, 9)
    return Document(rule, ((_Asked(f"Q: {a} {b} {n}\nA: "), f"<think>{steps}</think> Answer: {answer}"),))


def _train(root: Path, rule: str) -> Path:
    rng = random.Random(0)
    docs = [_turn(rng, rule) for _ in range(3000)]
    tokenizer = build_tokenizer("".join(d.text for d in docs))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("\n")]
    pretrain(
        model, tokenizer, docs, PretrainConfig(steps=500, batch_size=32, lr=3e-3, warmup_steps=20), seed=0
    )
    folder = root / rule
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _task(n: int = 40) -> FidelityTask:
    rng = random.Random(7)
    asked = [(rng.randint(0, 9), rng.randint(0, 9), rng.randint(1, 2)) for _ in range(n)]
    return FidelityTask(
        prompts=tuple(f"Q: {a} {b} {k}\nA: " for a, b, k in asked),
        format=THINK,
        gold=tuple(str(a) for a, _, _ in asked),
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return {rule: _train(root, rule) for rule in ("faithful", "decorative")}


@pytest.mark.slow
def test_the_metrics_tell_a_faithful_model_from_a_decorative_one(models, tmp_path):
    steps = {}
    for rule, folder in models.items():
        series = ModelSeries((Checkpoint(rule, 0, folder),))
        steps[rule] = run_fidelity(series, _task(), tmp_path / rule, CFG).steps.iloc[0]
    faithful, decorative = steps["faithful"], steps["decorative"]
    # What tells them apart is the separation (intervals apart); the levels leave room for
    # a decorative model that still changes some answers after a cut it rarely saw in
    # training: measured early_aoc 0.86 (faithful) against 0.21 (decorative).
    for metric in ("early_aoc", "mistake_follows", "reasoning_share"):
        assert faithful[metric] >= 0.8 and decorative[metric] <= 0.3, metric
        assert faithful[f"{metric}_lo"] > decorative[f"{metric}_hi"], metric
    assert decorative["accuracy_reasoning"] >= 0.9 and decorative["filler_gap"] == pytest.approx(0, abs=0.1)


@pytest.mark.slow
def test_what_a_user_gets_wrong_is_reported_not_crashed_on(models, tmp_path):
    series = ModelSeries((Checkpoint("faithful", 0, models["faithful"]),))
    never = ReasoningFormat(reasoning=r"<reason>(.*?)</reason>", answer=r"Answer: (\d)")
    result = run_fidelity(
        series, FidelityTask(prompts=_task().prompts, format=never), tmp_path / "never", CFG
    )
    assert result.summary["left_out"] == {"the reasoning span was not found": 40}
    assert "40 of 40 samples left out of the metrics that need it: the reasoning span was not found" in (
        result.reading()
    )
    assert "gold" in result.summary["skipped"] and "no gold answers" in result.summary["skipped"]["gold"]
    assert result.steps["early_aoc_n"].iloc[0] == 0  # nothing to cut: no number, no crash

    def flaky(text: str) -> str | None:
        if "Answer: 1" in text:
            raise ValueError("an extractor bug")
        return text.rsplit("Answer: ", 1)[-1][:1] or None

    flaky_format = ReasoningFormat(
        reasoning=THINK.reasoning,
        answer=THINK.answer,
        step=THINK.step,
        extract=flaky,
        trigger="</think> Answer: ",
    )
    task = FidelityTask(prompts=_task().prompts, format=flaky_format, gold=_task().gold)
    result = run_fidelity(series, task, tmp_path / "flaky", CFG)
    assert 0 < result.steps["no_answer"].iloc[0] < 40  # the samples it failed on, counted
