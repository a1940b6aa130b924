"""The executor seam and the store's storage options, on the micro organism.

Ray tests start an in-process local cluster (``ray.init(num_cpus=2)``) and are skipped when
Ray is not installed (``pip install 'rlinterp[ray]'``); the others run everywhere. Answers are
known: the Ray executor must reproduce the local executor's files, a killed task must leave
nothing that looks finished, and a bfloat16 store must hold the float32 store's values to
bfloat16's rounding.
"""

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from rlinterp import RlinterpError
from rlinterp.activations.harvest import ActivationStore, HarvestConfig, HarvestTask, budget_keep, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.core.artifacts import atomic_write
from rlinterp.diff.analysis import TABLES, run_diff
from rlinterp.models.executor import ExecutorConfig, LocalExecutor, RayExecutor, make_executor
from rlinterp.models.series import ModelSeries

from ..conftest import make_micro_config

REPO = Path(__file__).resolve().parents[2]
HOOK = "blocks.0.hook_resid_post"
BATCH = HarvestConfig(batch_size=4)
BF16_REL_DIFF_NORM = 2.0**-8
"""Largest change of ``rel_diff_norm`` (a fraction of ``||x||``) from storing bfloat16: each of
x and y is rounded by at most 2^-9 of its size, so ``||y - x||`` moves by at most about
2^-8 ``||x||``. Measured: 7.6e-4 (micro organism), see README for the tiny one."""
BF16_ANGLES = 1e-3
"""Largest change of cosine and CKA (measured: 1.3e-5 on the micro organism, 8.1e-5 on the tiny)."""
BF16_RELATIVE = 1e-2
"""Largest relative change of any activation-diff number of a checkpoint whose change is well
above bfloat16's resolution (``rel_diff_norm >= 0.05``; measured: 4.1e-3). Below it (the
micro weak regime's step 1 has 0.0035) the change is of the size of the rounding and its
relative error is not bounded: 22% measured (use float16 or float32 there)."""


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    from rlinterp import build_organism

    return build_organism(tmp_path_factory.mktemp("executor") / "org", config=make_micro_config())


@pytest.fixture(scope="module")
def prompts(organism):
    return PromptSet.from_organism(organism.root)


def weak(organism) -> ModelSeries:
    return ModelSeries.from_organism(organism.root, "weak")


@pytest.fixture(scope="module")
def reference(organism, prompts, tmp_path_factory):
    """The local executor's diff of the weak regime (float32 store, every token)."""
    out = tmp_path_factory.mktemp("reference") / "diff"
    run_diff(weak(organism), prompts, out, BATCH)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs in this process; workers import this checkout."""
    ray = pytest.importorskip("ray")
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), previous) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if previous is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = previous


def shards_of(store: ActivationStore) -> dict[str, torch.Tensor]:
    return {f"{label}/{hook}": store.read(label, hook) for label in store.labels for hook in store.hooks}


def assert_same_diff(a: Path, b: Path) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(
            pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet"), rtol=1e-6
        )
    left, right = (
        shards_of(ActivationStore.load(a / "activations")),
        shards_of(ActivationStore.load(b / "activations")),
    )
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-6, atol=1e-6)


# -- killing a worker ------------------------------------------------------------------------


def _die_writing_the_second_shard() -> None:
    """In this (worker) process: exit hard halfway through writing the second shard, its
    bytes in a temporary file, as a process killed mid-write leaves them."""
    module = importlib.import_module("rlinterp.activations.harvest")
    original = module.write_safetensors
    written = {"shards": 0}

    def write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
        if written["shards"] == 0:
            written["shards"] += 1
            return original(path, tensors)

        def half(tmp: Path) -> None:
            save_file(tensors, str(tmp))
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
            os._exit(1)  # skips atomic_write's clean-up, as a killed process would

        atomic_write(path, half)

    module.write_safetensors = write


@dataclass(frozen=True)
class DiesOnce:
    """A harvest task whose first attempt for ``label`` kills its worker mid-harvest."""

    task: HarvestTask
    label: str
    flag: Path

    def __call__(self, series: ModelSeries, checkpoint: Any) -> int:
        if checkpoint.label == self.label and not self.flag.exists():
            self.flag.touch()
            _die_writing_the_second_shard()
        return self.task(series, checkpoint)


class KillingRayExecutor(RayExecutor):
    def __init__(self, config: ExecutorConfig, label: str, flag: Path):
        super().__init__(config)
        self.kill = (label, flag)

    def map(self, task, series, checkpoints):
        if isinstance(task, HarvestTask):
            task = DiesOnce(task, *self.kill)
        return super().map(task, series, checkpoints)


# -- Ray ------------------------------------------------------------------------------------


def test_ray_executor_writes_the_local_executors_tables(ray_cluster, organism, prompts, reference, tmp_path):
    del ray_cluster
    series = weak(organism)
    result = run_diff(series, prompts, tmp_path / "ray", BATCH, executor=RayExecutor())
    assert_same_diff(reference, tmp_path / "ray")
    # the loader check ran once, on the driver (the base's bridge against the model in
    # memory); the workers got its hook map with the series and loaded each checkpoint once
    assert set(series.fidelity) == {"base"}
    assert len(result.outputs) == len(series)


def test_a_worker_killed_mid_harvest_is_retried(ray_cluster, organism, prompts, reference, tmp_path):
    del ray_cluster
    series, label = weak(organism), "weak-step-2"
    executor = KillingRayExecutor(ExecutorConfig(kind="ray", max_retries=1), label, tmp_path / "died")
    store = harvest(series, prompts, tmp_path / "store", BATCH, executor=executor)
    assert (tmp_path / "died").exists()  # the first attempt did die
    assert not list(store.root.rglob("*.tmp"))  # and its half-written shard is gone
    expected = ActivationStore.load(reference / "activations")
    assert store.n_shards >= 2
    for key, value in shards_of(expected).items():
        torch.testing.assert_close(shards_of(store)[key], value, rtol=1e-6, atol=1e-6)


def test_a_task_that_dies_for_good_is_reported_and_its_partial_shard_is_not_complete(
    ray_cluster, organism, prompts, reference, tmp_path
):
    del ray_cluster
    series, label, out = weak(organism), "weak-step-1", tmp_path / "store"
    executor = KillingRayExecutor(ExecutorConfig(kind="ray", max_retries=0), label, tmp_path / "died")
    with pytest.raises(RlinterpError, match=f"checkpoint.s. {label} .*run the command again to resume"):
        harvest(series, prompts, out, BATCH, executor=executor)
    with pytest.raises(RlinterpError, match="unfinished"):
        ActivationStore.load(out)
    # the dead worker left shard 0 complete and shard 1 as half a temporary file
    folder = out / label / HOOK
    assert (folder / "shard-00000.safetensors").is_file()
    assert not (folder / "shard-00001.safetensors").exists()
    (partial,) = folder.glob(".shard-00001.safetensors.*.tmp")
    assert partial.stat().st_size > 0
    plan = {**ActivationStore.load(reference / "activations").manifest}
    assert HarvestTask(out, plan, None).missing(label)[:1] == [1]
    # resuming (here with the local executor) finishes it, equal to an uninterrupted harvest
    store = harvest(series, prompts, out, BATCH)
    assert not partial.exists()
    for key, value in shards_of(ActivationStore.load(reference / "activations")).items():
        torch.testing.assert_close(shards_of(store)[key], value, rtol=1e-6, atol=1e-6)


@dataclass(frozen=True)
class Refuses:
    """A task that returns the checkpoint's step, or raises for ``label``."""

    label: str

    def __call__(self, series: ModelSeries, checkpoint: Any) -> int:
        del series
        if checkpoint.label == self.label:
            raise RlinterpError("non-finite activations at blocks.0.hook_resid_post")
        return checkpoint.step


def test_results_come_in_order_and_a_task_error_is_passed_on_with_its_checkpoint(ray_cluster, organism):
    del ray_cluster
    series = weak(organism)
    assert RayExecutor().map(Refuses("none"), series, list(reversed(series.checkpoints))) == [2, 1, 0]
    with pytest.raises(RlinterpError, match="^checkpoint weak-step-1: non-finite activations"):
        RayExecutor().map(Refuses("weak-step-1"), series, list(series))
    assert RayExecutor().map(Refuses("none"), series, []) == []


def test_dictionary_evaluation_per_checkpoint_on_ray_equals_local(ray_cluster, reference, tmp_path):
    from rlinterp.dictionaries.train import DictionaryConfig, evaluate_dictionary, train_dictionary

    del ray_cluster
    store = ActivationStore.load(reference / "activations")
    cfg = DictionaryConfig(d_sae=16, k=2, n_tokens=1024, batch_size=64)
    sae = train_dictionary(store, "sae", HOOK, tmp_path / "sae", cfg, model="base")
    local = evaluate_dictionary(sae)
    on_ray = evaluate_dictionary(sae, executor=RayExecutor())
    assert list(local["label"]) == store.labels and local["ce_recovered"].notna().all()
    pd.testing.assert_frame_equal(on_ray, local, rtol=1e-6)


# -- storage --------------------------------------------------------------------------------


COLUMNS = [
    "mean_diff_norm",
    "rel_diff_norm",
    "cosine",
    "cka",
    "diff_norm_p50",
    "diff_norm_p90",
    "diff_norm_max",
]


def _shard_bytes(store: ActivationStore) -> int:
    return sum(p.stat().st_size for p in store.root.glob("*/*/shard-*.safetensors"))


def test_bfloat16_store_halves_the_bytes_and_bounds_the_diff_error(organism, prompts, reference, tmp_path):
    half = run_diff(
        weak(organism), prompts, tmp_path / "bf16", HarvestConfig(batch_size=4, store_dtype="bfloat16")
    )
    full_store = ActivationStore.load(reference / "activations")
    half_store = ActivationStore.load(tmp_path / "bf16" / "activations")
    assert half_store.store_dtype == "bfloat16" and half_store.manifest["store_dtype"] == "bfloat16"
    ratio = _shard_bytes(half_store) / _shard_bytes(full_store)
    assert 0.5 <= ratio < 0.55  # data halves; each shard's small header does not
    # readers get float32, equal to the float32 store rounded to bfloat16
    read = half_store.read("weak-step-2", HOOK)
    assert read.dtype == torch.float32
    torch.testing.assert_close(read, full_store.read("weak-step-2", HOOK).bfloat16().float(), rtol=0, atol=0)
    # the headline numbers move by less than the stated bounds (and do move)
    full = pd.read_parquet(reference / "activations.parquet")
    moved = (half.activations[COLUMNS] - full[COLUMNS]).abs()
    assert float(moved["rel_diff_norm"].max()) < BF16_REL_DIFF_NORM
    assert float(moved[["cosine", "cka"]].to_numpy().max()) < BF16_ANGLES
    large = full["rel_diff_norm"] >= 0.05
    assert large.sum() >= 1
    relative = (moved / full[COLUMNS].abs())[large].to_numpy()
    assert 0 < float(relative.max()) < BF16_RELATIVE
    changed = full["label"] != "base"
    # a store compared with itself still gives exactly zero in bfloat16
    assert (half.activations.loc[~changed, "diff_norm_max"] == 0).all()
    # the KL is computed from the models, not the store: unchanged
    pd.testing.assert_frame_equal(half.outputs, pd.read_parquet(reference / "outputs.parquet"))


def test_token_budget_is_recorded_and_respected_by_every_reader(organism, prompts, reference, tmp_path):
    full_store = ActivationStore.load(reference / "activations")
    n_all = int(full_store.tokens().keep.sum())
    budget = n_all // 3
    cfg = HarvestConfig(batch_size=4, max_tokens=budget, token_seed=7)
    result = run_diff(weak(organism), prompts, tmp_path / "budget", cfg)
    store = ActivationStore.load(tmp_path / "budget" / "activations")
    manifest = store.manifest
    assert (manifest["max_tokens"], manifest["token_seed"]) == (budget, 7)
    assert (manifest["n_tokens"], manifest["n_tokens_before_budget"]) == (budget, n_all)
    assert manifest["fingerprint"]["max_tokens"] == budget
    keep = store.tokens().keep
    assert int(keep.sum()) == budget and not (keep & ~full_store.tokens().keep).any()
    # the kept rows are the full store's rows at the sampled positions, in store order
    rows_of_full = torch.zeros_like(full_store.tokens().keep, dtype=torch.long)
    rows_of_full[full_store.tokens().keep] = torch.arange(n_all)
    torch.testing.assert_close(
        store.read("weak-step-1", HOOK), full_store.read("weak-step-1", HOOK)[rows_of_full[keep]]
    )
    # the activation and the KL readers count the budget's tokens
    assert (result.activations["n_tokens"] == budget).all()
    assert (result.outputs["n_tokens"] == budget).all()
    # another budget or seed is another store: resume refuses it, naming the key
    with pytest.raises(RlinterpError, match="token_seed changed"):
        harvest(
            weak(organism),
            prompts,
            tmp_path / "budget" / "activations",
            HarvestConfig(batch_size=4, max_tokens=budget, token_seed=8),
        )


def test_budget_sample_is_seeded_uniform_and_within_keep():
    keep = torch.zeros(6, 10, dtype=torch.bool)
    keep[:, 1:8] = True
    one, again, other = budget_keep(keep, 20, 0), budget_keep(keep, 20, 0), budget_keep(keep, 20, 1)
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert int(one.sum()) == 20 and not (one & ~keep).any()
    assert budget_keep(keep, 1000, 0) is keep  # a budget above the tokens keeps all
    # uniform: over many seeds every kept position is chosen about 20/42 of the time
    counts = sum(budget_keep(keep, 20, seed).float() for seed in range(400))
    assert torch.allclose(counts[keep] / 400, torch.tensor(20 / 42), atol=0.1)


def test_float16_overflow_is_named(organism, prompts, tmp_path, monkeypatch):
    module = sys.modules["rlinterp.activations.harvest"]
    original = module._harvest_batch

    def huge(model, *args):  # activations a million times larger than the model's
        run = model.run_with_cache

        def scaled(*a, **k):
            logits, cache = run(*a, **k)
            return logits, {name: value * 1e6 for name, value in cache.items()}

        monkeypatch.setattr(model, "run_with_cache", scaled)
        original(model, *args)

    monkeypatch.setattr(module, "_harvest_batch", huge)
    with pytest.raises(RlinterpError, match="exceed the range of float16.*bfloat16"):
        harvest(weak(organism), prompts, tmp_path / "f16", HarvestConfig(batch_size=4, store_dtype="float16"))


# -- configuration ------------------------------------------------------------------------


def test_ray_executor_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RlinterpError, match=r"pip install 'rlinterp\[ray\]'"):
        make_executor(ExecutorConfig(kind="ray"))
    assert isinstance(make_executor(), LocalExecutor)


def test_executor_settings_are_checked_and_not_fingerprinted():
    from rlinterp.pipeline.config import RunConfig, config_from_dict, fingerprint

    with pytest.raises(RlinterpError, match="address is for --executor ray"):
        ExecutorConfig(address="auto")
    with pytest.raises(RlinterpError, match="max_retries"):
        ExecutorConfig(kind="ray", max_retries=-1)
    ray_run = config_from_dict({"compute": {"executor": "ray", "address": "auto", "task_gpus": 1}})
    assert fingerprint(ray_run) == fingerprint(RunConfig())
    stored = config_from_dict({"harvest": {"store_dtype": "bfloat16"}})
    assert fingerprint(stored)["harvest"] != fingerprint(RunConfig())["harvest"]


def test_cli_run_shortcuts_set_the_executor(capsys):
    from rlinterp.cli import main

    assert main(["run", "--executor", "ray", "--address", "auto", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'executor = "ray"' in printed and 'address = "auto"' in printed


# -- large-model loading --------------------------------------------------------------------


def test_a_bfloat16_llama_loads_in_its_own_dtype_through_a_device_map(tmp_path):
    """A random-init 4-layer Llama saved in bfloat16 (the layout of real large checkpoints):
    the series loads it in bfloat16 without being told, through a device map, reproducing
    transformers; its harvest stores bfloat16 and a self-diff is exactly zero."""
    from transformers import AutoModelForCausalLM

    from rlinterp.organism.model import build_tokenizer

    from ..conftest import ALPHABET, tiny_hf_config

    torch.manual_seed(0)
    config = tiny_hf_config("llama", vocab_size=len(ALPHABET) + 8, d_model=64, n_layer=4)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    for name in ("base", "step-1"):
        model.save_pretrained(tmp_path / name)
        build_tokenizer(ALPHABET).save_pretrained(tmp_path / name)
    series = ModelSeries.from_paths([tmp_path / "base", tmp_path / "step-1"], device_map="auto")
    assert series.load_dtype == torch.bfloat16
    bridge = series.load(series.base)
    assert {p.dtype for p in bridge.original_model.parameters()} == {torch.bfloat16}
    assert series.fidelity["base"] < 0.05
    texts = PromptSet.from_list(["hello there", "the quick brown fox", "a b c d"])
    store = harvest(series, texts, tmp_path / "store", HarvestConfig(batch_size=2, store_dtype="bfloat16"))
    assert store.manifest["checkpoints"][0]["dtype"] == "bfloat16"
    header = (store.shard_path("step-1", "blocks.3.hook_resid_post", 0)).read_bytes()[8:200]
    assert b'"dtype":"BF16"' in header
    table = run_diff(series, texts, tmp_path / "diff", HarvestConfig(batch_size=2, store_dtype="bfloat16"))
    assert (table.activations["diff_norm_max"] == 0).all() and (table.outputs["kl_max"] == 0).all()


def test_ray_is_imported_only_inside_the_ray_executor():
    """The default install has no Ray: no module imports it at module level, and only
    ``executor._import_ray`` imports it at all."""
    import ast

    importers = []
    for path in sorted((REPO / "rlinterp").rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = {
            id(node): fn.name
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef)
            for node in ast.walk(fn)
        }
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.append((path.name, functions.get(id(node))))
    assert importers == [("executor.py", "_import_ray")]
