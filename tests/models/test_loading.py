"""Loading HF checkpoint folders through TransformerLens, tested on tiny random-init models
of several real architectures saved to a temp dir (no hub access)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import ModelSeries, RlinterpError, load_bridge, logit_fidelity
from rlinterp.models import series as series_module
from rlinterp.models.series import FIDELITY_TOLERANCE
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config

ARCHITECTURES = ("gpt2", "llama", "qwen2")


def _checkpoint(tmp_path, arch: str):
    torch.manual_seed(0)
    folder = tmp_path / f"ckpt-{arch}"
    AutoModelForCausalLM.from_config(tiny_hf_config(arch, vocab_size=97, n_ctx=32)).save_pretrained(folder)
    build_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ?!.,").save_pretrained(folder)
    return folder


def _reference_logits(folder, tokens: torch.Tensor) -> torch.Tensor:
    """The plain transformers model's logits, computed here (not by the code under test)."""
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=tokens).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bridge_reproduces_the_transformers_logits(tmp_path, arch):
    folder = _checkpoint(tmp_path, arch)
    bridge = load_bridge(folder)
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    expected = _reference_logits(folder, tokens)
    with torch.no_grad():
        actual = bridge(tokens, return_type="logits")
    assert expected.abs().max() > 0.1  # a model whose logits say something
    assert (actual - expected).abs().max() < 1e-4
    # logit_fidelity measures exactly that difference
    fidelity = logit_fidelity(folder, tokens, bridge)
    assert fidelity.max_abs_diff == pytest.approx((actual - expected).abs().max().item(), abs=1e-7)
    assert fidelity.max_abs_logit == pytest.approx(expected.abs().max().item(), rel=1e-6)
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
    assert sorted(cache.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_corrupted_bridge_weight_is_detected(tmp_path, arch):
    """One MLP weight of the hooked model nudged after loading (the checkpoint on disk is
    intact): the fidelity check sees it, and a series refuses to use that model."""
    folder = _checkpoint(tmp_path, arch)
    bridge = load_bridge(folder)
    mlp = [(n, p) for n, p in bridge.named_parameters() if ".1." in n and "mlp" in n and p.ndim == 2]
    name, weight = mlp[0]
    with torch.no_grad():
        weight.add_(0.5 * torch.randn_like(weight))
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        moved = (bridge(tokens, return_type="logits") - _reference_logits(folder, tokens)).abs().max().item()
    assert moved > 1e-3, name
    assert logit_fidelity(folder, tokens, bridge).relative > FIDELITY_TOLERANCE[torch.float32]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_bridge_that_computes_something_else_is_refused(tmp_path, arch, monkeypatch):
    """The series' bridge shares the model's weights, so what its check guards against is a
    bridge that computes another function of them (a wrong architecture mapping), simulated
    by a permanent hook shifting one MLP's output: the series refuses it, and the plain model
    it was checked against is untouched."""
    folder = _checkpoint(tmp_path, arch)
    build = series_module.bridge_over

    def wrong(*args, **kwargs):
        bridge, sites = build(*args, **kwargs)
        # a shift the final norm cannot undo (it would remove a constant one)
        bridge.blocks[1].mlp.hook_out.add_hook(
            lambda x, **_: x + torch.linspace(-1, 1, x.shape[-1]), is_permanent=True
        )
        return bridge, sites

    monkeypatch.setattr(series_module, "bridge_over", wrong)
    series = ModelSeries.from_paths([folder])
    with pytest.raises(RlinterpError, match="TransformerLens does not reproduce base"):
        series.load(series.base)
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = series.model(series.base)(input_ids=tokens).logits
    assert (plain - _reference_logits(folder, tokens)).abs().max() < 1e-5


def test_missing_folder_and_missing_weights_are_named(tmp_path):
    with pytest.raises(RlinterpError, match="does not exist"):
        load_bridge(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlinterpError, match="no config.json"):
        load_bridge(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(RlinterpError, match="no safetensors weights"):
        load_bridge(tmp_path / "empty")
