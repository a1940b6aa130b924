"""Loading HF checkpoint folders through TransformerLens, tested on tiny random-init models
of several real architectures saved to a temp dir (no hub access)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError, load_bridge, logit_fidelity
from rlinterp.organism.model import build_tokenizer

from .conftest import tiny_hf_config

ARCHITECTURES = ("gpt2", "llama", "qwen2")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bridge_reproduces_the_transformers_logits(tmp_path, arch):
    torch.manual_seed(0)
    folder = tmp_path / f"ckpt-{arch}"
    AutoModelForCausalLM.from_config(tiny_hf_config(arch, vocab_size=97, n_ctx=32)).save_pretrained(folder)
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
