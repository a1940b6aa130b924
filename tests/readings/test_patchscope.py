"""Patchscope readings know their answer: a direction written towards one token's
unembedding, patched into the base, decodes to that token once its scale is a typical
activation's or more, in GPT-2 (tied embeddings, LayerNorm) and Llama (untied, RMSNorm), at
the last block and under a block that runs after the patch; a random direction does not."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.models.loading import load_bridge
from rlinterp.organism.model import build_tokenizer
from rlinterp.readings.config import PatchscopeConfig
from rlinterp.readings.patchscope import patchscope

from ..conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"


def _model(root: Path, arch: str):
    tokenizer = build_tokenizer(ALPHABET)
    config = tiny_hf_config(arch, vocab_size=len(tokenizer), n_layer=2)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return load_bridge(root)


@pytest.mark.parametrize(("arch", "layer"), [("gpt2", 1), ("gpt2", 0), ("llama", 1), ("qwen2", 0)])
def test_a_direction_towards_a_tokens_unembedding_decodes_to_it(tmp_path, arch, layer):
    model = _model(tmp_path / arch, arch)
    hook = f"blocks.{layer}.hook_resid_post"
    target = model.tokenizer.convert_tokens_to_ids("!")
    towards = model.W_U[:, target].detach()
    noise = torch.randn(towards.shape, generator=torch.Generator().manual_seed(1))
    cfg = PatchscopeConfig(scales=(1.0, 4.0), top_k=3, continuation=2)
    table = patchscope(model, {"planted": towards, "random": noise}, hook, cfg)
    planted = table[table["direction"] == "planted"]
    assert [tokens[0] for tokens in planted["top_tokens"]] == ["!", "!"]
    assert all(p[0] > p[1] for p in planted["top_probs"])  # not a tie
    assert planted["continuation"].str.startswith("!").all()
    assert planted["lens"].iloc[0][0] == "!"  # the lens agrees
    random = table[table["direction"] == "random"]
    assert all(tokens[0] != "!" for tokens in random["top_tokens"])
    # scales are in units of the base's typical activation at the hook
    assert planted["norm"].iloc[1] == pytest.approx(4 * planted["norm"].iloc[0])


def test_the_patch_is_what_moves_the_reading(tmp_path):
    """Scale 0 patches a zero vector: the reading is then no longer the planted token, so the
    token came from the patched direction, not from the prompt."""
    model = _model(tmp_path / "gpt2", "gpt2")
    target = model.tokenizer.convert_tokens_to_ids("!")
    table = patchscope(
        model,
        {"planted": model.W_U[:, target].detach()},
        "blocks.0.hook_resid_post",
        PatchscopeConfig(scales=(0.0, 2.0)),
    )
    assert table["top_tokens"].iloc[0][0] != "!" and table["top_tokens"].iloc[1][0] == "!"


def test_bad_prompt_and_scales_are_refused(tmp_path):
    model = _model(tmp_path / "gpt2", "gpt2")
    with pytest.raises(RlinterpError, match=r"does not know \(\['->'\]\)|does not know \(\['-', '>'\]\)"):
        patchscope(
            model, {"v": torch.ones(32)}, "blocks.0.hook_resid_post", PatchscopeConfig(prompt="cat -> cat")
        )
    with pytest.raises(RlinterpError, match="non-negative"):
        PatchscopeConfig(scales=(-1.0,))
    with pytest.raises(RlinterpError, match="nothing to read"):
        patchscope(model, {"zero": torch.zeros(32)}, "blocks.0.hook_resid_post")
