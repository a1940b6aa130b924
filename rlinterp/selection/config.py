"""What ``run_selection`` analyses and with which budgets (``SelectionConfig``), and how
the index's interval and transition are computed (``IndexConfig``). Torch-free, so a
command describes its options without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dictionaries.config import DictionaryConfig
from ..errors import RlinterpError

EDITS = ("persona", "full", "persona_choice")
"""The causal table's edits (see the module docstring, step 6)."""


@dataclass(frozen=True)
class IndexConfig:
    """How the index's interval and the transition are computed."""

    n_bootstrap: int = 500
    """Bootstrap resamples of the prompts."""
    confidence: float = 0.9
    """Coverage of the percentile intervals."""
    min_jump: float = 0.2
    """Smallest rise of the index between two segments that counts as a transition."""
    seed: int = 0
    """Seed of the resampling."""

    def __post_init__(self) -> None:
        if not self.n_bootstrap >= 10:
            raise RlinterpError(f"n_bootstrap must be at least 10, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1:
            raise RlinterpError(f"confidence must lie in (0, 1), got {self.confidence}")
        if not 0 < self.min_jump <= 1:
            raise RlinterpError(f"min_jump must lie in (0, 1], got {self.min_jump}")


@dataclass(frozen=True)
class SelectionConfig:
    """What ``run_selection`` analyses and with which budgets."""

    label: str = "persona"
    """The label column of the texts that names each text's persona."""
    hook: str | None = None
    """Hook to analyse; None picks the hook whose persona directions separate best."""
    dictionary: str | None = None
    """A trained base SAE (``rlinterp dictionaries train``) at ``hook``; None trains one."""
    dictionary_config: DictionaryConfig = field(
        default_factory=lambda: DictionaryConfig(d_sae=128, k=8, n_tokens=100_000)
    )
    """Budget of the base SAE trained when ``dictionary`` is None."""
    held_out_fraction: float = 0.3
    """Share of each persona's texts kept out of every fit."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Bootstrap and transition settings."""
    batch_size: int = 32
    """Texts per harvest batch."""
    seed: int = 0
    """Split, controls and resampling."""
    samples_per_prompt: int = 4
    """On-policy answers each checkpoint samples per question for the persona readout
    (organism series)."""
    decision_hook: str | None = None
    """A ``blocks.<i>.hook_resid_post`` where the persona-choice patch runs; None: the last
    block's (everything the decision reads has been computed there)."""
    n_random: int = 4
    """Random subspaces averaged for the persona-choice patch's control."""
    behaviour_edits: tuple[str, ...] = ("persona", "full", "persona_choice")
    """Causal edits whose behaviour is re-sampled on organism series (each costs about
    three behaviour-table evaluations per step, ``n_random + 2`` for ``persona_choice``);
    the others keep their KL columns and get NaN behaviour columns."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.behaviour_edits) - set(EDITS))
        if unknown:
            raise RlinterpError(f"behaviour_edits must name causal edits {EDITS}, got {unknown}")
        if self.n_random < 1:
            raise RlinterpError(f"n_random must be at least 1, got {self.n_random}")
