"""What ``run_selection`` analyses and with which budgets (``SelectionConfig``), how the
per-block read-out behind the index is fitted and controlled (``ReadoutConfig``), and how the
index's interval and transition are computed (``IndexConfig``). Torch-free, so a command
describes its options without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dictionaries.config import DictionaryConfig
from ..errors import RlinterpError

EDITS = ("persona", "full", "persona_choice")
"""The causal table's edits (see ``selection.analysis``, step 6)."""


@dataclass(frozen=True)
class ReadoutConfig:
    """How the per-block read-out (``selection.readout``) is fitted and controlled."""

    layers: tuple[int, ...] | None = None
    """Blocks to read; None: every block."""
    n_folds: int = 5
    """Folds of texts: each fold is scored by a read-out fitted on the others."""
    n_repeats: int = 2
    """Fold partitions (the read-out's fit variance enters the interval)."""
    n_controls: int = 2
    """Seeds of the seed control (random rotations; their variance enters the interval)."""
    ridge: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """Penalties (on standardised features); one is chosen per fit on a held-out fold."""
    max_tokens: int | None = 30_000
    """Tokens read (a seeded sample of the store's, None: all): memory is about
    ``max_tokens * (n_controls + 1) * d_mlp * 4`` bytes per block."""
    seed: int = 0
    """Fold partitions, token sample and control rotations."""

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise RlinterpError(f"n_folds must be at least 2, got {self.n_folds}")
        if self.n_repeats < 1 or self.n_controls < 1:
            raise RlinterpError(
                f"n_repeats and n_controls must be positive, got {self.n_repeats} and {self.n_controls}"
            )
        if not self.ridge or any(not r > 0 for r in self.ridge):
            raise RlinterpError(f"ridge penalties must be positive, got {self.ridge}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RlinterpError(f"max_tokens must be positive or none, got {self.max_tokens}")
        if self.layers is not None and (not self.layers or any(layer < 0 for layer in self.layers)):
            raise RlinterpError(f"layers must name blocks (0, 1, ...) or be none, got {self.layers}")


@dataclass(frozen=True)
class IndexConfig:
    """How the index's interval and the transition are computed."""

    n_bootstrap: int = 500
    """Bootstrap replicates (texts, fold partition and control seed drawn together)."""
    confidence: float = 0.9
    """Coverage of the percentile intervals."""
    min_jump: float = 0.2
    """Smallest rise of the index between two segments that counts as a transition."""
    min_control: float = 0.01
    """Floor of the control's unexplained share in the novelty ratio (``selection.readout``)."""
    seed: int = 0
    """Seed of the resampling."""

    def __post_init__(self) -> None:
        if not self.n_bootstrap >= 10:
            raise RlinterpError(f"n_bootstrap must be at least 10, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1:
            raise RlinterpError(f"confidence must lie in (0, 1), got {self.confidence}")
        if not 0 < self.min_jump <= 1:
            raise RlinterpError(f"min_jump must lie in (0, 1], got {self.min_jump}")
        if not 0 < self.min_control < 1:
            raise RlinterpError(f"min_control must lie in (0, 1), got {self.min_control}")


@dataclass(frozen=True)
class SelectionConfig:
    """What ``run_selection`` analyses and with which budgets."""

    label: str = "persona"
    """The label column of the texts that names each text's persona."""
    hook: str | None = None
    """Hook of the dictionary explanation, persona latents and mean-shift checks; None: the
    residual stream after the block the index names. The index itself reads every block."""
    dictionary: str | None = None
    """A trained base SAE (``rlinterp dictionaries train``) at ``hook``; None trains one."""
    dictionary_config: DictionaryConfig = field(
        default_factory=lambda: DictionaryConfig(d_sae=128, k=8, n_tokens=100_000)
    )
    """Budget of the base SAE trained when ``dictionary`` is None."""
    dictionary_seeds: int = 2
    """Dictionaries whose seeds the explanation's interval covers: the one above and this
    many minus one twins trained here with the next seeds (its config, its hook)."""
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    """The per-block read-out behind the index (blocks, folds, control seeds, token budget)."""
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
        if self.dictionary_seeds < 1:
            raise RlinterpError(f"dictionary_seeds must be at least 1, got {self.dictionary_seeds}")
