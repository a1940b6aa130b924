"""Whether a torch device exists on this machine, checked where a config names one.

Torch is imported only when a device other than ``cpu`` is named, so a config that keeps
the default validates without it (the command line answers at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import RlinterpError

if TYPE_CHECKING:
    import torch


def require_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or an error if it does not name one that this
    machine has (``tpu9``, ``cuda`` on a CPU-only build, ``cuda:3`` on a 2-GPU machine)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise RlinterpError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:<n> or mps") from e
    if parsed.type == "cpu":
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    if backend is None or not backend.is_available():
        cpu_only = parsed.type == "cuda" and not torch.version.cuda
        cpu_only_note = f" (torch {torch.__version__} is a CPU-only build)" if cpu_only else ""
        raise RlinterpError(f"device {device!r} is not available on this machine{cpu_only_note}; use cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        raise RlinterpError(
            f"device {device!r} does not exist: this machine has {count} {parsed.type} device(s)"
        )
    return parsed


def check_device(device: str) -> None:
    """``require_device`` for a config's ``__post_init__``: ``cpu`` needs no torch."""
    if device != "cpu":
        require_device(device)
