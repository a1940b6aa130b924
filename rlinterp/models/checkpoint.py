"""One model of a checkpoint series: its label, its RL step and its folder.

Its own module so that the series and the checks run on it (``models.checks``) can both
use it without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    """One model of the series."""

    label: str
    """Unique, filesystem-safe name (``base``, ``step-25``, ``checkpoint-500``)."""
    step: int
    """RL step; the base model is step 0."""
    path: Path
    """The Hugging Face checkpoint folder (full weights, or a PEFT adapter over the base)."""


ADAPTER_CONFIG = "adapter_config.json"
"""The file that makes a folder a PEFT adapter checkpoint."""
STEP_DIR = re.compile(r"^(?:(?:checkpoint|step|global_step)[-_]?)?(\d+)$")
"""Checkpoint folders named by step: ``checkpoint-<N>`` (transformers/TRL), ``step-<N>``
(the organism), ``global_step<N>`` (DeepSpeed) and plain ``<N>``."""
