"""On-policy tokens on tiny random-init checkpoints built here: identical checkpoints sample
identically (common random numbers), near-zero temperature is greedy decoding, the stores
keep exactly the sampled answer tokens, generation memory is bounded by the batch, a
finished run is reused, and a zero budget is a one-line error."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationMixin

from rlinterp import RlinterpError
from rlinterp.activations.onpolicy import SamplingConfig, harvest_on_policy, prompt_texts, sample
from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz ?:\n"
HOOK = "blocks.0.hook_resid_post"
PROMPTS = PromptSet.from_records(
    [{"prompt": f"q: {w}?\na:", "response": " yes\n"} for w in ("cat", "dog", "owl", "cat", "bird", "moth")]
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A base and a byte-identical copy, and a perturbed third checkpoint."""
    root = tmp_path_factory.mktemp("onpolicy")
    tokenizer = build_tokenizer(ALPHABET)
    config = tiny_hf_config("gpt2", vocab_size=len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("\n")
    for name in ("base", "step-1"):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(root / "step-2")
    tokenizer.save_pretrained(root / "step-2")
    return root


def test_zero_budget_is_a_one_line_error():
    for bad in ({"samples_per_prompt": 0}, {"max_new_tokens": 0}):
        with pytest.raises(RlinterpError, match="sampling budget is zero") as error:
            SamplingConfig(**bad)
        assert "\n" not in str(error.value)


def test_prompts_are_the_prompt_parts_once_each():
    assert prompt_texts(PROMPTS) == [
        "q: cat?\na:",
        "q: dog?\na:",
        "q: owl?\na:",
        "q: bird?\na:",
        "q: moth?\na:",
    ]
    assert prompt_texts(PromptSet.from_list(["x", "y", "x"])) == ["x", "y"]


def test_answers_stop_at_the_context_and_prompts_that_fill_it_are_refused(checkpoints):
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "step-2").eval()
    tokenizer = ModelSeries.from_paths([checkpoints / "step-2"]).tokenizer()
    context = model.config.n_positions
    cfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=context, temperature=1.0)
    near = "a" * (context - 4)  # BOS + prompt leave room for 3 tokens
    table = sample(model, tokenizer, [near], cfg)
    assert table["n_tokens"].max() <= 3
    with pytest.raises(RlinterpError, match=f"context of {context}"):
        sample(model, tokenizer, ["a" * context], cfg)


def test_near_zero_temperature_is_greedy_decoding(checkpoints):
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "step-2").eval()
    tokenizer = ModelSeries.from_paths([checkpoints / "step-2"]).tokenizer()
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=5, temperature=1e-6)
    table = sample(model, tokenizer, ["q: cat?\na:", "q: bird?\na:"], cfg)
    for row in table.itertuples():
        ids = torch.tensor(
            [[tokenizer.bos_token_id, *tokenizer(row.prompt, add_special_tokens=False)["input_ids"]]]
        )
        greedy = model.generate(ids, do_sample=False, max_new_tokens=5, pad_token_id=0)[0, ids.shape[1] :]
        expected = greedy.tolist()
        stop = tokenizer.convert_tokens_to_ids("\n")
        expected = expected[: expected.index(stop) + 1] if stop in expected else expected
        assert list(row.response_ids) == expected
        assert row.stopped == (stop in expected) and row.n_tokens == len(expected)
    assert table["retokenized_exact"].all()  # one character, one token


def test_identical_checkpoints_sample_alike_and_stores_hold_the_answers(checkpoints, tmp_path, monkeypatch):
    series = ModelSeries.from_paths([checkpoints / "base", checkpoints / "step-1", checkpoints / "step-2"])
    sizes = []
    generate = GenerationMixin.generate

    def recording(self, *args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recording)
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=8, batch_size=4)
    result = harvest_on_policy(series, PROMPTS, tmp_path / "op", cfg)
    # per checkpoint: 5 prompts of 3 lengths, 3 samples each, at most 4 per generate call
    assert max(sizes) <= 4 and sum(sizes) == 3 * 15
    columns = ["prompt_index", "sample", "response", "n_tokens"]
    base, same, other = (result.samples[k] for k in ("base", "step-1", "step-2"))
    assert base[columns].equals(same[columns])  # same weights, same random numbers
    assert not base["response"].equals(other["response"])
    assert len(base) == 15 and base["prompt_index"].tolist() == [i for i in range(5) for _ in range(3)]
    store = result.stores["step-2"]
    assert store.labels == ["base", "step-2"] and result.stores["base"].labels == ["base"]
    # kept tokens are exactly the sampled answer tokens (special tokens are decoded away)
    kept = store.tokens().tokens[store.tokens().keep]
    sampled = [t for ids in other["response_ids"] for t in ids if t > 3]
    assert kept.tolist() == sampled
    identical = result.stores["step-1"]
    assert torch.equal(identical.read("base", HOOK), identical.read("step-1", HOOK))
    assert not torch.equal(store.read("base", HOOK), store.read("step-2", HOOK)) or len(kept) == 0

    # A finished run is reused as it is: nothing is sampled again.
    def refuse(*_args, **_kwargs):
        pytest.fail("resampled")

    monkeypatch.setattr(GenerationMixin, "generate", refuse)
    again = harvest_on_policy(series, PROMPTS, tmp_path / "op", cfg)
    assert again.samples["step-2"].equals(other)
    with pytest.raises(RlinterpError, match="another sampling config"):
        harvest_on_policy(series, PROMPTS, tmp_path / "op", SamplingConfig(samples_per_prompt=2))
