"""The harvest's plain-forward path against TransformerLens' own hooks, on tiny random-init
models of three architectures and a LoRA adapter, each loaded once.

The reference is TransformerLens' bridge booted by TransformerLens itself from the folder
(``boot_transformers``), run with ``run_with_cache``: independent of the shared-weights
bridge and the hook sites under test."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from rlinterp import HarvestConfig, ModelSeries, PromptSet, harvest
from rlinterp.errors import RlinterpError
from rlinterp.models import loading
from rlinterp.models.adapters import merged_model
from rlinterp.models.hooked import HookedModel, HookMap
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config

ARCHITECTURES = ("gpt2", "llama", "qwen2")
TOOLKIT_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
HOOKS = tuple(f"blocks.{layer}.{name}" for layer in (0, 1) for name in TOOLKIT_HOOKS)
# Lengths differ, so batches are padded on the right and BOS is left out: the rows a shard
# keeps must be the same tokens in both paths.
PROMPTS = PromptSet.from_list(["the cat sat", "a dog ran far away", "hi", "why is the sky blue?", "ok go"])
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,"


def _checkpoint(folder, arch: str, seed: int = 0):
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_hf_config(arch, vocab_size=97, n_ctx=32)).save_pretrained(folder)
    build_tokenizer(ALPHABET).save_pretrained(folder)
    return folder


def _adapter(base, folder):
    """A LoRA adapter over ``base`` whose update is not zero (PEFT initialises B at zero)."""
    torch.manual_seed(1)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "up_proj", "o_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    return folder


def _reference(bridge: TransformerBridge, store, label: str) -> dict[str, torch.Tensor]:
    """TransformerLens' activations at every hook on the store's batches, kept rows only."""
    rows: dict[str, list[torch.Tensor]] = {hook: [] for hook in HOOKS}
    with torch.no_grad():
        for batch in store.token_batches():
            _, cache = bridge.run_with_cache(batch.tokens, names_filter=list(HOOKS))
            for hook in HOOKS:
                rows[hook].append(cache[hook][batch.keep])
    del label
    return {hook: torch.cat(values) for hook, values in rows.items()}


def _assert_equal_to_transformerlens(store, label: str, bridge: TransformerBridge) -> None:
    expected = _reference(bridge, store, label)
    for hook in HOOKS:
        actual = store.read(label, hook)
        assert actual.shape == expected[hook].shape, hook
        assert expected[hook].abs().max() > 1e-3, hook  # a hook that carries something
        assert (actual - expected[hook]).abs().max() < 1e-5, (label, hook)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_harvest_equals_transformerlens_hooks_and_loads_each_checkpoint_once(tmp_path, arch, monkeypatch):
    base = _checkpoint(tmp_path / f"{arch}-base", arch, seed=0)
    step = _checkpoint(tmp_path / f"{arch}-step", arch, seed=1)
    loads: list[str] = []
    load = loading.AutoModelForCausalLM.from_pretrained

    def counted(folder, *args, **kwargs):
        loads.append(str(folder))
        return load(folder, *args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", counted)
    series = ModelSeries.from_paths([base, step])
    store = harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(hooks=HOOKS, batch_size=2))
    assert sorted(loads) == sorted([str(base), str(step)])  # one load per checkpoint, no check copy
    assert set(HOOKS) <= set(series.hook_map().sites)  # every toolkit hook ran on the plain forward
    monkeypatch.undo()
    for label, folder in zip(store.labels, (base, step), strict=True):
        reference = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
        _assert_equal_to_transformerlens(store, label, reference)


def test_harvest_of_a_lora_adapter_equals_transformerlens_on_the_merged_model(tmp_path):
    base = _checkpoint(tmp_path / "base", "llama")
    adapter = _adapter(base, tmp_path / "checkpoint-10")
    series = ModelSeries.from_paths([base, adapter])
    store = harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(hooks=HOOKS, batch_size=2))
    assert series.fidelity["checkpoint-10"] < 1e-4  # the merge reproduced PEFT's unmerged forward
    merged = merged_model(base, adapter, torch.float32)
    reference = TransformerBridge.boot_transformers(
        str(base), hf_model=merged, device="cpu", dtype=torch.float32
    )
    _assert_equal_to_transformerlens(store, "checkpoint-10", reference)
    # the adapter moved the activations: the check above is not the base's
    assert (store.read("checkpoint-10", HOOKS[-1]) - store.read("base", HOOKS[-1])).abs().max() > 1e-3


def test_the_bridge_shares_the_models_weights_and_leaves_its_attention_alone(tmp_path):
    folder = _checkpoint(tmp_path / "m", "gpt2")
    series = ModelSeries.from_paths([folder])
    model = series.model(series.base)
    bridge = series.load(series.base)
    assert model.config._attn_implementation != "eager"  # the plain model keeps its own attention
    # every weight of the model is the bridge's own tensor, not a copy
    assert {p.data_ptr() for p in model.parameters()} <= {
        p.data_ptr() for p in bridge.original_model.parameters()
    }
    tokens = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (bridge(tokens, return_type="logits") - model(input_ids=tokens).logits).abs().max() < 1e-5


def test_the_forward_stops_after_the_last_hook_it_needs(tmp_path):
    folder = _checkpoint(tmp_path / "m", "llama")
    series = ModelSeries.from_paths([folder])
    hooked = series.hooked(series.base)
    assert isinstance(hooked, HookedModel)
    ran: list[int] = []
    layers = hooked.model.model.layers
    handles = [layer.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    tokens = torch.randint(0, 97, (1, 6))
    _, cache = hooked.run_with_cache(tokens, ["blocks.0.hook_mlp_out"], return_type=None)
    assert ran == [] and set(cache) == {"blocks.0.hook_mlp_out"}  # block 0 never returned
    logits, cache = hooked.run_with_cache(tokens, ["blocks.0.hook_resid_post"])
    assert ran == [0, 1] and logits is not None and logits.shape == (1, 6, 97)
    for handle in handles:
        handle.remove()
    # hooks are removed after every pass, a stopped one included
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in hooked.model.modules())
    with pytest.raises(RlinterpError, match="not the input or output of a module"):
        hooked.run_with_cache(tokens, ["blocks.0.attn.hook_pattern"])


def test_a_hook_no_module_gives_is_harvested_through_the_bridge(tmp_path):
    folder = _checkpoint(tmp_path / "m", "gpt2")
    series = ModelSeries.from_paths([folder])
    hook = "blocks.1.ln2.hook_normalized"
    assert hook in series.hook_map().names and hook not in series.hook_map().sites
    store = harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(hooks=(hook,), batch_size=2))
    reference = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    expected = []
    with torch.no_grad():
        for batch in store.token_batches():
            _, cache = reference.run_with_cache(batch.tokens, names_filter=[hook])
            expected.append(cache[hook][batch.keep])
    assert (store.read("base", hook) - torch.cat(expected)).abs().max() < 1e-5


def test_a_site_that_disagrees_with_the_bridge_is_left_to_the_bridge(tmp_path):
    """A wrong site (block 0's output read from block 1) fails the check against the
    bridge when the map is built, so that name is read through the bridge, correctly."""
    folder = _checkpoint(tmp_path / "m", "gpt2")
    series = ModelSeries.from_paths([folder])
    entry_model = series.model(series.base)
    bridge, sites = loading.bridge_over(entry_model, folder, torch.float32)
    wrong = {**sites, "blocks.0.hook_resid_post": sites["blocks.1.hook_resid_post"]}
    hook_map = HookMap.build(bridge, wrong, entry_model, tolerance=1e-5)
    assert "blocks.0.hook_resid_post" not in hook_map.sites
    assert hook_map.sites["blocks.1.hook_resid_post"] == sites["blocks.1.hook_resid_post"]
    assert "blocks.0.hook_resid_post" in hook_map.names


@pytest.mark.parametrize("arch", ("gpt2", "llama"))
def test_edits_through_the_sites_equal_the_bridges_edits(tmp_path, arch):
    """Zeroing an MLP's output and doubling what the second norm reads change the logits
    exactly as the same edits through TransformerLens' bridge do."""
    folder = _checkpoint(tmp_path / "m", arch)
    hooked = ModelSeries.from_paths([folder]).hooked(ModelSeries.from_paths([folder]).base)
    reference = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    edits = [("blocks.0.hook_mlp_out", lambda x, **_: torch.zeros_like(x)),
             ("blocks.1.hook_resid_mid", lambda x, **_: 2 * x)]  # fmt: skip
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.run_with_hooks(tokens, fwd_hooks=edits, return_type="logits")
        clean = reference(tokens, return_type="logits")
    actual = hooked.run_with_hooks(tokens, fwd_hooks=edits)
    assert (expected - clean).abs().max() > 1e-3  # the edits change the output
    assert (actual - expected).abs().max() < 1e-5
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in hooked.model.modules())
