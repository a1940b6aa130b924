"""Configs of the models layer that commands show as options: where per-checkpoint work
runs (``ExecutorConfig``) and the dtypes a model may run in. Torch-free, so a command can
describe its options without importing torch (the executor itself is in ``executor``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import RlinterpError

DtypeName = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[DtypeName, ...] = ("float32", "bfloat16", "float16")
"""The floating dtypes models and stores run in, by name (``models.series.DTYPES`` maps them
to torch dtypes)."""


@dataclass(frozen=True)
class ExecutorConfig:
    """Where per-checkpoint work runs (not part of any fingerprint: results do not depend on it)."""

    kind: Literal["local", "ray"] = field(default="local", metadata={"flag": "executor"})
    """``local``: one checkpoint after another in this process; ``ray``: one Ray task each
    (pip install 'rlinterp[ray]')."""
    address: str | None = None
    """Ray cluster to use: ``auto`` (the running cluster), ``ray://<head>:10001`` (Ray client),
    or None (the cluster ``RAY_ADDRESS`` names, else a local one started for this process)."""
    num_cpus: float = field(default=1.0, metadata={"flag": "task-cpus"})
    """CPUs each Ray task requests."""
    num_gpus: float = field(default=0.0, metadata={"flag": "task-gpus"})
    """GPUs each Ray task requests (use ``device = "cuda"``: a task sees only its own GPUs)."""
    max_retries: int = 2
    """Times Ray reruns a task whose worker died (errors raised by the task are not retried)."""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise RlinterpError(f"executor must be local or ray, got {self.kind!r}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise RlinterpError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.max_retries < 0:
            raise RlinterpError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.kind == "local" and self.address is not None:
            raise RlinterpError("an executor address is for --executor ray; drop it or choose ray")
