"""Loading HF checkpoint folders through TransformerLens, tested on tiny random-init models
of several real architectures saved to a temp dir (no hub access)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from rlinterp import RlinterpError, load_bridge, logit_fidelity
from rlinterp.organism.model import build_tokenizer

# Llama and Qwen2 share their config vocabulary; grouped-query attention on purpose.
ROTARY_SHAPE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=97, n_positions=32, n_ctx=32, n_embd=32, n_layer=2, n_head=4),
    "llama": lambda: LlamaConfig(**ROTARY_SHAPE),
    "qwen2": lambda: Qwen2Config(**ROTARY_SHAPE),
}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_bridge_reproduces_the_transformers_logits(tmp_path, arch):
    torch.manual_seed(0)
    folder = tmp_path / f"ckpt-{arch}"
    AutoModelForCausalLM.from_config(CONFIGS[arch]()).save_pretrained(folder)
    build_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ?!.,").save_pretrained(folder)
    bridge = load_bridge(folder)
    tokens = torch.randint(0, 97, (2, 12))
    assert logit_fidelity(folder, tokens, bridge).max_abs_diff < 1e-4
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
    assert sorted(cache.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_missing_folder_and_missing_weights_are_named(tmp_path):
    with pytest.raises(RlinterpError, match="does not exist"):
        load_bridge(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlinterpError, match="no config.json"):
        load_bridge(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(RlinterpError, match="no safetensors weights"):
        load_bridge(tmp_path / "empty")
