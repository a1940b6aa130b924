"""Amplified sampling knows its answer: alpha 0 samples exactly what the base samples, alpha 1
exactly what the checkpoint samples (common random numbers, parameters interpolated exactly
at both ends); a LoRA adapter amplified by 2 is the adapter with its update doubled; an alpha
that overflows a weight is refused before anything is sampled, naming alpha and parameter."""

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlinterp import RlinterpError
from rlinterp.activations.onpolicy import SamplingConfig, sample
from rlinterp.models.series import Checkpoint, ModelSeries
from rlinterp.organism.model import build_tokenizer
from rlinterp.readings.amplify import AmplifiedSamples, amplified_models, amplify
from rlinterp.readings.config import AmplifyConfig

from ..conftest import tiny_hf_config
from ..planted import build_planted

PROMPTS = ["the quick brown", "fox jumps", "over the lazy dog", "a"]
SAMPLING = SamplingConfig(samples_per_prompt=3, max_new_tokens=12, seed=5)


def _own_samples(path, prompts=PROMPTS) -> pd.DataFrame:
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return sample(model, AutoTokenizer.from_pretrained(path), prompts, SAMPLING)


def test_alpha_zero_is_the_base_and_alpha_one_the_checkpoint(tmp_path):
    planted = build_planted(tmp_path / "planted")
    series = ModelSeries.from_paths([planted.base, planted.rewired])
    cfg = AmplifyConfig(alphas=(0.0, 1.0, 3.0), sampling=SAMPLING)
    result = amplify(series, PROMPTS, tmp_path / "amp", cfg)
    at = {a: rows.reset_index(drop=True) for a, rows in result.samples.groupby("alpha")}
    base, post = _own_samples(planted.base), _own_samples(planted.rewired)
    assert at[0.0]["response_ids"].map(list).tolist() == base["response_ids"].map(list).tolist()
    assert at[1.0]["response_ids"].map(list).tolist() == post["response_ids"].map(list).tolist()
    assert at[0.0]["response_ids"].map(list).tolist() != at[1.0]["response_ids"].map(list).tolist()
    # the base's log-prob of its own answers, recomputed independently token by token
    model = AutoModelForCausalLM.from_pretrained(planted.base).eval()
    tokenizer = AutoTokenizer.from_pretrained(planted.base)
    row = at[1.0].iloc[0]
    ids = [tokenizer.bos_token_id, *tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]]
    full = torch.tensor([ids + list(row["response_ids"])])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0].float(), -1)
    expected = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(row["response_ids"])]
    assert row["base_token_logprobs"].tolist() == pytest.approx(expected, abs=1e-5)
    assert row["base_logprob"] == pytest.approx(sum(expected), abs=1e-4)
    assert set(result.table["alpha"]) == {0.0, 1.0, 3.0} and (result.table["n_answers"] == 12).all()
    # finished: reloaded as it is
    assert AmplifiedSamples.load(tmp_path / "amp").table.equals(result.table)
    again = amplify(series, PROMPTS, tmp_path / "amp", cfg)
    assert again.samples["response"].tolist() == result.samples["response"].tolist()


def _lora_checkpoint(base, folder, factor: float):
    config = LoraConfig(r=2, lora_alpha=4.0, target_modules=["q_proj", "down_proj"], lora_dropout=0.0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):  # the same A and B in every call, B times factor
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g))
                b.copy_(factor * torch.randn(b.shape, generator=g))
    model.save_pretrained(folder)
    return folder


def test_an_amplified_adapter_is_the_scaled_adapter(tmp_path):
    tokenizer = build_tokenizer("abcdefghijklmnopqrstuvwxyz ")
    torch.manual_seed(0)
    config = tiny_hf_config("llama", vocab_size=len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    once = _lora_checkpoint(base, tmp_path / "once" / "checkpoint-1", 0.5)
    twice = _lora_checkpoint(base, tmp_path / "twice" / "checkpoint-1", 1.0)
    ((alpha, model),) = list(
        amplified_models(ModelSeries.from_paths([base, once]), Checkpoint("once", 1, once), [2.0])
    )
    twice_series = ModelSeries.from_paths([base, twice])
    doubled = next(m for _, m in amplified_models(twice_series, Checkpoint("twice", 1, twice), [1.0]))
    plain = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    ours, theirs = dict(model.named_parameters()), dict(doubled.named_parameters())
    assert alpha == 2.0 and ours.keys() == theirs.keys() == plain.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=1e-5, msg=name)
    moved = [n for n in ours if not torch.equal(ours[n], plain[n])]
    assert moved and all("q_proj" in n or "down_proj" in n for n in moved)


def test_an_overflowing_alpha_is_refused_before_sampling(tmp_path):
    planted = build_planted(tmp_path / "planted")
    series = ModelSeries.from_paths([planted.base, planted.amplified])
    with pytest.raises(
        RlinterpError, match=r"alpha 1e\+45 makes parameter .*c_proj.weight of .* non-finite in float32"
    ):
        amplify(series, PROMPTS, tmp_path / "amp", AmplifyConfig(alphas=(1.0, 1e45), sampling=SAMPLING))
    assert not list((tmp_path / "amp").glob("*.parquet"))  # nothing sampled
    with pytest.raises(RlinterpError, match="finite"):
        AmplifyConfig(alphas=(float("nan"),))
    with pytest.raises(RlinterpError, match="repeats"):
        AmplifyConfig(alphas=(1.0, 1.0))
