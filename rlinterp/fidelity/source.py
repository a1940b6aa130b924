"""Which task a series is measured on: the user's (``TaskConfig``: a prompts file, regexes,
a reward script) or, for a series that comes from an organism, the organism's own
(``organism.organism_task``: its held-out questions, format, proxy and gold rewards).

Everything is read and checked here, before any model is: the prompts file, the regexes,
and the reward script (imported and called once on the first prompt), so a command fails
with one line before it claims its output directory.
"""

from __future__ import annotations

from pathlib import Path

from ..core.artifacts import sha256_file
from ..errors import RlinterpError
from ..organism.layout import Organism
from .config import TaskConfig
from .organism import organism_task
from .task import FidelityTask, load_prompts, load_reward_script


def series_task(config: TaskConfig, organism: Path | None = None, regime: str | None = None) -> FidelityTask:
    """The task of a series: the user's files when ``config.prompts`` is given, else that of
    the ``organism`` the series comes from (its ``regime``'s reward as the proxy)."""
    if config.prompts is None:
        if organism is None:
            raise RlinterpError(
                "these checkpoints come from no organism; give --prompts FILE.jsonl (and --reasoning "
                "and --answer regexes when the answers state their reasoning)"
            )
        if config.reasoning is not None or config.reward_script is not None:
            raise RlinterpError(
                "--reasoning, --answer and --reward-script read your own prompts' answers; give "
                "--prompts too (an organism is measured on its own questions and rewards)"
            )
        return organism_task(Organism.load(organism), regime)
    prompts, gold = load_prompts(config.prompts)
    script = config.reward_script
    proxy = load_reward_script(script, prompts) if script is not None else None
    return FidelityTask(
        prompts=prompts,
        format=config.format(),
        gold=gold,
        proxy=proxy,
        no_reasoning="no reasoning regex was given (--reasoning and --answer): the answers are read "
        "as stating no reasoning",
        scoring=f"reward script {_digest(script)}" if script is not None else "gold answers",
    )


def _digest(path: str) -> str:
    """The reward script's name and content hash: a changed script is a changed analysis."""
    return f"{Path(path).name} sha256 {sha256_file(Path(path))[:16]}"
