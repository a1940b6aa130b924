"""How the comparative benchmark measures one run of one contender, and summarises many.

Each measured run is a forked child of the benchmark process (``run_forked``): it starts
from the parent's imports and warm caches, so a run costs only its own work, and its peak
memory is its own. Peak memory is the child's peak resident set (Linux ``VmHWM``, reset at
the fork through ``/proc/self/clear_refs``) above its resident set at the fork: what this
run needed beyond the libraries already loaded. Contenders are interleaved (A B C A B C,
``interleave``) after an in-process warm-up, so slow drifts of a shared machine's load hit
every contender alike.

A contender is a function of a fresh scratch folder that does its timed work and returns
an ``Outcome``: the tokens it processed, extra numbers, and an optional ``check`` run after
the clock and the memory peak are read (explained variance, activation differences), so
checking costs neither time nor memory in the results.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PROC = Path("/proc/self")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where every lane computes: the GPU when there is one (then in bfloat16), else the CPU."""
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def synchronize() -> None:
    """Wait for queued GPU work, so that a clock read after it counts it (no-op on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Outcome:
    """What one run of a contender reports besides its time and memory."""

    tokens: int
    """Tokens processed (the numerator of tokens/s)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Numbers measured during the timed work (e.g. seconds spent switching checkpoints)."""
    check: Callable[[], dict[str, Any]] | None = None
    """Run after time and memory are read: numbers that judge the result."""


Contender = Callable[[Path], Outcome]


def _kib(name: str) -> int:
    match = re.search(rf"{name}:\s+(\d+) kB", (PROC / "status").read_text())
    return int(match.group(1)) if match else 0


def forking() -> bool:
    """Whether runs are measured in forked children (Linux, CPU: a CUDA context does not
    survive a fork); elsewhere they run in-process and peak host memory is not reported
    (on a GPU, the peak GPU memory is)."""
    return hasattr(os, "fork") and (PROC / "clear_refs").exists() and DEVICE.type == "cpu"


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measure(contender: Contender, scratch: Path) -> dict[str, Any]:
    if forking():
        (PROC / "clear_refs").write_text("5")  # peak := current
    start_kib = _kib("VmRSS") if forking() else 0
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    start = time.perf_counter()
    outcome = contender(scratch)
    synchronize()
    seconds = time.perf_counter() - start
    peak_mib = (_kib("VmHWM") - start_kib) / 1024 if forking() else None
    if DEVICE.type == "cuda":  # the GPU's peak is the one that binds there
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    written = sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file())
    checked = outcome.check() if outcome.check is not None else {}
    return {
        "seconds": seconds,
        "peak_mib": peak_mib,
        "tokens": outcome.tokens,
        "written_mib": written / 2**20,
        **outcome.extra,
        **checked,
    }


def run_forked(contender: Contender) -> dict[str, Any]:
    """One measured run of ``contender`` in a scratch folder: seconds, peak memory (MiB),
    tokens, MiB written into the folder, and the contender's own numbers."""
    _release_memory()
    with tempfile.TemporaryDirectory(prefix="rlinterp-bench-") as tmp:
        if not forking():
            return _measure(contender, Path(tmp))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report through the pipe, never return
            os.close(read)
            try:
                payload = json.dumps(_measure(contender, Path(tmp)))
            except BaseException:  # reported to the parent, which raises
                payload = json.dumps({"error": traceback.format_exc()})
            with os.fdopen(write, "w") as pipe:
                pipe.write(payload)
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            payload = pipe.read()  # before waitpid: a full pipe would block the child
        os.waitpid(pid, 0)
    result = json.loads(payload) if payload else {"error": "the measuring child died without a result"}
    if "error" in result:
        raise RuntimeError(f"a measured run failed:\n{result['error']}")
    return result


def interleave(contenders: dict[str, Contender], repeats: int, warmup: int = 1) -> dict[str, list[dict]]:
    """``warmup`` in-process runs of each contender, then ``repeats`` rounds of one forked
    run of each, in order (A B C A B C ...)."""
    for contender in contenders.values():
        for _ in range(warmup):
            with tempfile.TemporaryDirectory(prefix="rlinterp-bench-") as tmp:
                outcome = contender(Path(tmp))
                if outcome.check is not None:
                    outcome.check()
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, contender in contenders.items():
            runs[name].append(run_forked(contender))
    return runs


def spread(values: list[float]) -> dict[str, Any]:
    """Median, quartiles, extremes and the values themselves."""
    ordered = sorted(values)
    if len(ordered) > 1:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "min": ordered[0],
        "max": ordered[-1],
        "values": values,
    }


def summarise(runs: list[dict], flops_per_token: float | None, calibrated_flops: float | None) -> dict:
    """Per contender: tokens/s, seconds and peak memory as spreads; every other number as
    its median; and, given the FLOPs per token and the calibrated matmul rate, the
    efficiency eta = achieved FLOP/s / calibrated FLOP/s at the median tokens/s."""
    rates = [r["tokens"] / r["seconds"] for r in runs]
    out: dict[str, Any] = {
        "tokens": runs[0]["tokens"],
        "tokens_per_s": spread(rates),
        "seconds": spread([r["seconds"] for r in runs]),
    }
    if runs[0]["peak_mib"] is not None:
        out["peak_mib"] = spread([r["peak_mib"] for r in runs])
    for key in runs[0]:
        if key not in ("seconds", "peak_mib", "tokens") and isinstance(runs[0][key], int | float):
            out[key] = statistics.median(r[key] for r in runs)
    if flops_per_token is not None and calibrated_flops:
        out["flops_per_token"] = flops_per_token
        out["achieved_gflops"] = flops_per_token * out["tokens_per_s"]["median"] / 1e9
        out["eta"] = flops_per_token * out["tokens_per_s"]["median"] / calibrated_flops
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import sae_lens
    import transformer_lens
    import transformers

    cpuinfo = Path("/proc/cpuinfo")
    model = None
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), None)  # fmt: skip
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "device": str(DEVICE),
        "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
        "dtype": str(DTYPE).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", None),
            "sae_lens": sae_lens.__version__,
        },
        "forked_runs": forking(),
    }
