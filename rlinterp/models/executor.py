"""Where the per-checkpoint work of a series runs: in this process (``local``, the default)
or as one Ray task per checkpoint (``ray``, an optional extra: ``pip install 'rlinterp[ray]'``).

Per-checkpoint work (harvesting one checkpoint's activations, diffing one checkpoint against
the base) is a *task*: a picklable callable ``task(series, checkpoint) -> result`` that writes
its files into a directory every worker can see and returns a small result. An ``Executor``
maps a task over checkpoints and returns the results in the order of the checkpoints; the
caller merges them (tables, manifests). Fanning out is left to an existing engine: this
module has no scheduler of its own.

- ``LocalExecutor`` calls the task for each checkpoint in turn, in this process, on the
  caller's series (so loaded models are shared, as they always were).
- ``RayExecutor`` submits one Ray task per checkpoint with its own CPU/GPU request, on a copy
  of the series with no model loaded; each worker loads what it needs. Output directories
  must be on storage every node shares. A task whose worker dies is retried up to
  ``max_retries`` times; one that still fails (or raises) is reported as an ``RlinterpError``
  naming its checkpoint, after the other tasks have finished, so their work is kept for the
  next run. The loading fidelity a worker measured is merged into the caller's
  ``series.fidelity``, so manifests record the same numbers as a local run.

Invariants:
- results come back in checkpoint order, whichever task finished first;
- tasks write through ``artifacts.atomic_write``: a task that dies leaves temporary files
  (removed when the directory is claimed again), never a partial file under a final name,
  and callers judge completeness by final names only;
- ``ray`` is imported only inside ``RayExecutor``; the default install never needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..errors import RlinterpError
from .checkpoint import Checkpoint
from .config import ExecutorConfig as ExecutorConfig
from .series import ModelSeries

log = logging.getLogger(__name__)

R = TypeVar("R")
Task = Callable[[ModelSeries, Checkpoint], R]
"""One checkpoint's work: ``task(series, checkpoint)``; module-level (picklable) for Ray."""

INSTALL_HINT = "pip install 'rlinterp[ray]'"


@runtime_checkable
class Executor(Protocol):
    """Maps a task over checkpoints of a series; results in checkpoint order."""

    def map(self, task: Task[R], series: ModelSeries, checkpoints: Sequence[Checkpoint]) -> list[R]: ...


class LocalExecutor:
    """Today's behaviour: each checkpoint in turn, in this process, on ``series`` itself."""

    def map(self, task: Task[R], series: ModelSeries, checkpoints: Sequence[Checkpoint]) -> list[R]:
        return [task(series, checkpoint) for checkpoint in checkpoints]


class RayExecutor:
    """One Ray task per checkpoint (see the module docstring)."""

    def __init__(self, config: ExecutorConfig | None = None):
        self.config = config or ExecutorConfig(kind="ray")

    def map(self, task: Task[R], series: ModelSeries, checkpoints: Sequence[Checkpoint]) -> list[R]:
        if not checkpoints:
            return []
        ray = _import_ray()
        self._connect(ray)
        remote = ray.remote(_on_worker)
        options = {
            "num_cpus": self.config.num_cpus,
            "num_gpus": self.config.num_gpus,
            "max_retries": self.config.max_retries,
            "retry_exceptions": False,
        }
        # The workers get the series without its loaded models (they load their own).
        detached = dataclasses.replace(series, fidelity={}, _loaded=OrderedDict())
        refs = [
            remote.options(name=f"rlinterp {checkpoint.label}", **options).remote(task, detached, checkpoint)
            for checkpoint in checkpoints
        ]
        results: list[R] = []
        failed: list[tuple[str, BaseException]] = []
        for checkpoint, ref in zip(checkpoints, refs, strict=True):
            try:
                value, fidelity = ray.get(ref)
            except ray.exceptions.RayError as e:  # wait for every task: finished work is kept
                failed.append((checkpoint.label, getattr(e, "cause", None) or e))
                continue
            series.fidelity.update(fidelity)
            results.append(value)
        for label, cause in failed:  # an error the task raised says what to fix: pass it on
            if isinstance(cause, RlinterpError):
                raise RlinterpError(f"checkpoint {label}: {cause}") from cause
        if failed:
            shown = "; ".join(f"{label} ({_describe(cause)})" for label, cause in failed)
            raise RlinterpError(
                f"the Ray task(s) of checkpoint(s) {shown} failed after up to {self.config.max_retries} "
                "retries; finished work is kept: run the command again to resume"
            )
        return results

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        address = self.config.address
        if address is None and not os.environ.get("RAY_ADDRESS"):
            log.info("starting a local Ray cluster for this process")
            ray.init(include_dashboard=False)
            return
        try:
            ray.init(address=address)
        except ConnectionError as e:
            raise RlinterpError(
                f"cannot connect to the Ray cluster at {address or os.environ['RAY_ADDRESS']}: {e}; "
                "start one with `ray start --head` or give --address"
            ) from e


def _on_worker(task: Task[R], series: ModelSeries, checkpoint: Checkpoint) -> tuple[R, dict[str, float]]:
    """What a Ray task runs: the task, and the fidelity of the models it loaded."""
    return task(series, checkpoint), dict(series.fidelity)


def _describe(error: BaseException) -> str:
    """One line for a failed Ray task: its exception, or how its worker died."""
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else 'no message'}"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RlinterpError(f"the ray executor needs Ray: {INSTALL_HINT}") from None
    return ray


def make_executor(config: ExecutorConfig | None = None) -> Executor:
    """The executor ``config`` describes (default: local)."""
    config = config or ExecutorConfig()
    if config.kind == "ray":
        _import_ray()  # fail before any work, not after the first checkpoint
        return RayExecutor(config)
    return LocalExecutor()
