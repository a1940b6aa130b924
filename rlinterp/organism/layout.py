"""An organism on disk, read as data: its manifest says where the base and every regime's
checkpoints are, which persona texts and questions it was judged on, and what its weights
hashed to. This is all the library needs of an organism (the series, the prompts, the
selection and circuits analyses), so reading one imports none of the code that builds it
(``build``, ``model``, ``rl``, ``behaviour``: torch and transformers); only the builders
(``rlinterp organism``, ``rlinterp run`` when the organism is missing, and the behaviour
re-sampling of the selection analysis, ``selection.steering``) import those.

Torch-free; the behaviour table is read with pandas when asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import rundir
from ..core.artifacts import read_parquet, sha256_file
from ..errors import RlinterpError
from .config import EvalConfig, ReasoningConfig, RegimeConfig
from .personas import Question, eval_questions
from .reasoning import SumQuestion, eval_sum_questions

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = rundir.ORGANISM.manifest


@dataclass(frozen=True)
class Organism:
    """A finished organism on disk: paths into it, read from its manifest."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Organism:
        """Open a finished organism; raise if ``root`` is missing or unfinished."""
        root = Path(root)
        hint = f"build it with `rlinterp organism --out {root}`"
        return cls(root=root, manifest=rundir.read_finished(root, rundir.ORGANISM, hint))

    @property
    def personas(self) -> list[str]:
        return [p["name"] for p in self.manifest["personas"]]

    @property
    def regimes(self) -> list[str]:
        return list(self.manifest["regimes"])

    @property
    def base(self) -> Path:
        return self.root / self.manifest["base"]

    def checkpoints(self, regime: str) -> dict[int, Path]:
        """Step -> checkpoint folder for ``regime``, ascending by step."""
        if regime not in self.manifest["regimes"]:
            raise RlinterpError(f"no regime {regime!r} in {self.root}; it has {self.regimes}")
        found = self.manifest["regimes"][regime]["checkpoints"]
        return {int(step): self.root / rel for step, rel in sorted(found.items(), key=lambda kv: int(kv[0]))}

    def regime_config(self, regime: str) -> RegimeConfig:
        """The config ``regime``'s behaviour rows were scored under (its reward); for a planted
        regime, the reward recorded apart from its planting parameters."""
        if regime not in self.regimes:
            raise RlinterpError(f"no regime {regime!r} in {self.root}; it has {self.regimes}")
        entry = self.manifest["regimes"][regime]
        raw = entry.get("reward_config", entry["config"])
        return RegimeConfig(**{**raw, "checkpoint_steps": tuple(raw["checkpoint_steps"])})

    def eval_config(self) -> EvalConfig:
        """How the behaviour table was sampled (questions, samples per question, length)."""
        return EvalConfig(**self.manifest["config"]["evaluation"])

    def behaviour(self) -> pd.DataFrame:
        remedy = f"the organism is damaged; rebuild it with `rlinterp organism --out {self.root} --force`"
        return read_parquet(self.root / self.manifest["behaviour"], remedy)

    @property
    def reasoning(self) -> ReasoningConfig | None:
        """The reasoning world's config, or None for the yes/no world."""
        raw = self.manifest["config"].get("reasoning")
        return None if raw is None else ReasoningConfig(**raw)

    @property
    def max_operand(self) -> int:
        """The largest operand of the organism's questions (its corpus config)."""
        return int(self.manifest["config"]["corpus"]["max_operand"])

    @property
    def controls(self) -> dict[str, Path]:
        """Control rule -> model folder (reasoning organisms; empty otherwise)."""
        return {rule: self.root / rel for rule, rel in self.manifest.get("controls", {}).items()}

    def eval_questions(self) -> list[Question] | list[SumQuestion]:
        """The held-out questions the behaviour table was scored on (single-turn prompts),
        of the organism's world."""
        seed = int(self.manifest["seed"])
        if self.reasoning is not None:
            return eval_sum_questions(self.eval_config(), seed, self.max_operand, self.reasoning)
        return eval_questions(self.eval_config().n_questions, seed, self.max_operand)

    def question_prompts(self) -> list[str]:
        """The prompts of ``eval_questions``: what the checkpoints are asked when they answer
        for themselves (on-policy), as the behaviour table asked them."""
        return [q.prompt for q in self.eval_questions()]

    def damaged_files(self) -> list[str]:
        """Weight files that are missing or no longer hash to the manifest's record."""
        return [
            rel
            for rel, digest in self.manifest["weights_sha256"].items()
            if not (self.root / rel).is_file() or sha256_file(self.root / rel) != digest
        ]
