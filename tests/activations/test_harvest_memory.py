"""Harvest memory is one batch, measured: the peak resident memory a harvest adds does not
grow when the prompts are four times as many, while a harvest that keeps what it writes
(the control) grows by about what it keeps. Peak RSS is Linux's ``VmHWM``, reset before
each run through ``/proc/self/clear_refs``."""

import contextlib
import ctypes
import gc
import importlib
import re
from pathlib import Path

import pytest
import torch

from rlinterp.activations.harvest import HarvestConfig, default_hooks, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries

from ..conftest import random_checkpoints

harvest_module = importlib.import_module("rlinterp.activations.harvest")

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux /proc"
)

N_LAYER, D_MODEL, BATCH = 4, 256, 16
MIB = 2**20


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def peak_growth(run) -> int:
    """Bytes by which ``run()`` raised the process's peak resident memory above where it
    started, freed memory handed back to the system first (else what the allocator happens
    to hold from earlier runs makes the growth vary by tens of MiB from run to run)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # peak := current
    start = _kib("VmRSS")
    run()
    return (_kib("VmHWM") - start) * 1024


def prompts(n: int) -> PromptSet:
    g = torch.Generator().manual_seed(n)
    letters = "abcdefghijklmnopqrstuvwxyz "
    return PromptSet.from_list(
        ["".join(letters[i] for i in torch.randint(0, 27, (60,), generator=g)) for _ in range(n)]
    )


def test_peak_memory_does_not_grow_with_the_prompts(tmp_path, monkeypatch):
    folders = random_checkpoints(tmp_path, n_layer=N_LAYER, d_model=D_MODEL)
    series = ModelSeries.from_paths([folders["base"], folders["step-1"]])
    cfg = HarvestConfig(hooks=tuple(default_hooks(N_LAYER)), batch_size=BATCH)
    harvest(series, prompts(BATCH), tmp_path / "warm-up", cfg)  # loads both models once

    # the least of two runs each: one run's peak varies by ~15 MiB with what the allocator
    # holds from earlier tests in the process (measured 51.7 and 70.8 MiB in one suite run)
    small = min(
        peak_growth(lambda i=i: harvest(series, prompts(64), tmp_path / f"x1-{i}", cfg)) for i in (0, 1)
    )
    large = min(
        peak_growth(lambda i=i: harvest(series, prompts(256), tmp_path / f"x4-{i}", cfg)) for i in (0, 1)
    )
    stored = sum(f.stat().st_size for f in (tmp_path / "x4-0").rglob("*.safetensors"))
    assert stored > 100 * MIB  # 256 prompts x 61 tokens x 4 hooks x 256 floats x 2 models
    assert large - small < 16 * MIB, (small / MIB, large / MIB)  # measured 55 to 69 MiB, both

    # control: the same harvest, keeping every shard it writes, grows by what it keeps
    kept: list[torch.Tensor] = []
    write = harvest_module.write_safetensors

    def write_and_keep(path, tensors):
        kept.extend(t.clone() for t in tensors.values())
        write(path, tensors)

    monkeypatch.setattr(harvest_module, "write_safetensors", write_and_keep)
    leaky = peak_growth(lambda: harvest(series, prompts(256), tmp_path / "leak", cfg))
    held = sum(t.numel() * t.element_size() for t in kept)
    assert held > 100 * MIB and leaky > held / 2, (held / MIB, leaky / MIB)  # measured 120, 133 MiB
