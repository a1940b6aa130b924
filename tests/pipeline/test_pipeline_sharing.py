"""Work the pipeline shares instead of repeating: a base harvested once for every series
(``harvest(reuse=...)``) and the base's log-probs kept across checkpoints in the KL pass.
Each shortcut must give exactly what the long way gives."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlinterp.activations.harvest import ActivationStore, HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.diff.outputs import diff_outputs
from rlinterp.models.series import ModelSeries

from ..conftest import tiny_hf_config
from ..diff.test_series_diff import ALPHABET, PROMPTS, _save

CFG = HarvestConfig(batch_size=4)


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    """One base, and two RL series from it (``a`` and ``b``), each of one checkpoint."""
    root = tmp_path_factory.mktemp("sharing")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", n_layer=2)).eval()
    base = _save(model, root / "base", ALPHABET)
    steps = {}
    for name, scale in (("a", 0.3), ("b", -0.3)):
        changed = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", n_layer=2)).eval()
        changed.load_state_dict(model.state_dict())
        with torch.no_grad():
            changed.transformer.h[1].mlp.c_proj.weight.add_(scale)
        steps[name] = _save(changed, root / f"{name}-step-1", ALPHABET)
    return root, {name: ModelSeries.from_paths([base, path]) for name, path in steps.items()}


def _shards(store: ActivationStore, label: str, hook: str) -> list[torch.Tensor]:
    return [load_file(store.shard_path(label, hook, k))["acts"] for k in range(store.n_shards)]


def test_a_reused_base_is_linked_and_equals_a_fresh_harvest(two_series, tmp_path):
    root, series = two_series
    first = harvest(series["a"], PROMPTS, tmp_path / "a", CFG)
    shared = harvest(series["b"], PROMPTS, tmp_path / "b", CFG, reuse=[first])
    alone = harvest(series["b"], PROMPTS, tmp_path / "b-alone", CFG)
    for hook in alone.hooks:
        for label in alone.labels:
            for mine, theirs in zip(_shards(shared, label, hook), _shards(alone, label, hook), strict=True):
                assert torch.equal(mine, theirs)
        # the base's shards are the first series' files; the checkpoint's are its own
        base = os.stat(shared.shard_path("base", hook, 0))
        assert base.st_ino == os.stat(first.shard_path("base", hook, 0)).st_ino
        own = os.stat(shared.shard_path(shared.labels[1], hook, 0))
        assert own.st_ino != os.stat(first.shard_path(first.labels[1], hook, 0)).st_ino
    assert shared.fingerprint == alone.fingerprint


def test_nothing_is_reused_from_other_tokens(two_series, tmp_path):
    _, series = two_series
    other = PromptSet.from_list(["a different prompt set", "of two prompts"])
    donor = harvest(series["a"], other, tmp_path / "other", CFG)
    store = harvest(series["b"], PROMPTS, tmp_path / "b", CFG, reuse=[donor])
    hook = store.hooks[0]
    assert (
        os.stat(store.shard_path("base", hook, 0)).st_ino != os.stat(donor.shard_path("base", hook, 0)).st_ino
    )
    fresh = harvest(series["b"], PROMPTS, tmp_path / "fresh", CFG)
    assert torch.equal(store.read("base", hook), fresh.read("base", hook))


def test_kept_base_log_probs_give_the_same_kl_as_rerunning_the_base(two_series, tmp_path):
    _, series = two_series
    store = harvest(series["a"], PROMPTS, tmp_path / "a", CFG)
    kept = diff_outputs(series["a"], store)
    rerun = diff_outputs(series["a"], store, cache_bytes=0)
    assert kept.table.equals(rerun.table) and kept.top_tokens.equals(rerun.top_tokens)
    assert kept.table["kl_mean"].iloc[0] == 0.0 and kept.table["kl_mean"].iloc[1] > 0
