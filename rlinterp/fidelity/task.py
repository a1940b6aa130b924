"""What a series is measured on: prompts, how to read the answers, and how to score them.

A ``FidelityTask`` holds the prompts every checkpoint answers, the ``ReasoningFormat`` that
reads its answers (None when they state no reasoning: the reasoning metrics are then
skipped with that reason), and, optionally:

- ``gold``: the gold answer of each prompt. Without it, every gold-dependent number
  (accuracy, filler gap, gold reward, wrong answers) is skipped with a line saying so;
- ``proxy``: the reward the RL optimised, ``(prompt index, response) -> float`` (a user's
  reward script, or the organism's regime reward). Without one, the proxy is the correctness
  of the extracted final answer when gold answers exist (a reward that reads only the final
  answer: what a proxy is);
- ``verifier``: the gold reward, ``(prompt index, response) -> float``. Without one it is
  1 when the final answer is the gold answer *and* equals the last stated intermediate
  (correct, and following from the reasoning);
- ``behaviours``: named undesired behaviours that exist in the base, ``(prompt index,
  response) -> bool`` (``wrong``, the extracted answer is not the gold one, is added when
  gold answers exist);
- ``persona_texts``: persona-labelled texts (``{persona, prompt, answer}``) whose directions
  the persona shift is projected on.

``load_prompts`` and ``load_reward_script`` read the two files ``rlinterp fidelity`` takes.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..activations.prompts import jsonl_objects
from ..errors import RlinterpError
from .format import ReasoningFormat, same_answer

Score = Callable[[int, str], float]
Behaviour = Callable[[int, str], bool]


@dataclass(frozen=True)
class FidelityTask:
    """Prompts and how to read and score the answers (module docstring)."""

    prompts: tuple[str, ...]
    format: ReasoningFormat | None
    gold: tuple[str, ...] | None = None
    proxy: Score | None = field(default=None, compare=False)
    verifier: Score | None = field(default=None, compare=False)
    behaviours: tuple[tuple[str, Behaviour], ...] = field(default=(), compare=False)
    persona_texts: tuple[Mapping[str, str], ...] = ()
    no_reasoning: str = "the task gives no reasoning format"
    """Why the reasoning metrics are skipped when ``format`` is None."""
    scoring: str = "task callables"
    """Names the proxy, verifier and behaviour callables in the fingerprint of a finished
    analysis (e.g. the reward script's hash): change it when they change, or the finished
    analysis is reused as it is."""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise RlinterpError("the fidelity task has no prompts")
        if self.gold is not None and len(self.gold) != len(self.prompts):
            raise RlinterpError(f"got {len(self.gold)} gold answers for {len(self.prompts)} prompts")
        names = [name for name, _ in self.behaviours]
        if len(set(names)) != len(names) or "wrong" in names and self.gold is not None:
            raise RlinterpError(
                f"behaviour names must be distinct (and not 'wrong' with gold answers): {names}"
            )

    def answer(self, response: str) -> str | None:
        """The final answer of a response (None without a format or when none is found)."""
        if self.format is None:
            return None
        return self.format.parse(response).answer

    def proxy_reward(self, i: int, response: str) -> float | None:
        """The proxy reward of one response; None without one, or when the user's callable
        raises on it (the caller counts those)."""
        if self.proxy is not None:
            return _safely(self.proxy, i, response)
        if self.gold is None:
            return None
        return float(same_answer(self.answer(response), self.gold[i]))

    def gold_reward(self, i: int, response: str) -> float | None:
        """The gold reward of one response; None as for ``proxy_reward``."""
        if self.verifier is not None:
            return _safely(self.verifier, i, response)
        if self.gold is None or self.format is None:
            return None
        parsed = self.format.parse(response)
        return float(same_answer(parsed.answer, self.gold[i]) and bool(parsed.consistent()))

    def behaviour_flags(self, i: int, response: str) -> dict[str, bool]:
        """Each undesired behaviour's flag for one response (``wrong`` with gold answers)."""
        flags = {name: bool(test(i, response)) for name, test in self.behaviours}
        if self.gold is not None and self.format is not None:
            flags["wrong"] = not same_answer(self.answer(response), self.gold[i])
        return flags

    @property
    def behaviour_names(self) -> list[str]:
        names = [name for name, _ in self.behaviours]
        return names + (["wrong"] if self.gold is not None and self.format is not None else [])

    def select(self, indices: Sequence[int]) -> FidelityTask:
        """The task on a subset of its prompts (callables see the original indices)."""
        keep = list(indices)

        def remap(fn: Callable[[int, str], object] | None) -> Callable[[int, str], object] | None:
            return None if fn is None else (lambda i, r: fn(keep[i], r))

        return FidelityTask(
            prompts=tuple(self.prompts[i] for i in keep),
            format=self.format,
            gold=None if self.gold is None else tuple(self.gold[i] for i in keep),
            proxy=remap(self.proxy),  # type: ignore[arg-type]
            verifier=remap(self.verifier),  # type: ignore[arg-type]
            behaviours=tuple((n, remap(b)) for n, b in self.behaviours),  # type: ignore[misc]
            persona_texts=self.persona_texts,
            no_reasoning=self.no_reasoning,
            scoring=self.scoring,
        )


def _safely(score: Score, i: int, response: str) -> float | None:
    try:
        return float(score(i, response))
    except Exception:  # a user's scoring failing on one sample is counted, not fatal
        return None


def load_prompts(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """Prompts and gold answers from a ``.jsonl`` of ``{"prompt": ..., "gold": ...}`` rows
    (``gold`` optional, but on every row or on none)."""
    path = Path(path)
    rows = []
    for n, row in jsonl_objects(path, "prompts file", "an object with a 'prompt'"):
        if not isinstance(row.get("prompt"), str):
            raise RlinterpError(f'{path}:{n} needs a "prompt" string')
        rows.append(row)
    with_gold = [r for r in rows if r.get("gold") is not None]
    if with_gold and len(with_gold) != len(rows):
        raise RlinterpError(
            f'{path}: {len(with_gold)} of {len(rows)} rows have a "gold" answer; '
            "give one on every row or on none"
        )
    prompts = tuple(r["prompt"] for r in rows)
    return prompts, tuple(str(r["gold"]) for r in rows) if with_gold else None


def load_reward_script(path: str | Path, prompts: Sequence[str]) -> Score:
    """The proxy reward of a Python file that defines ``reward(prompt, response) -> float``
    (the reward the RL run optimised), as ``(prompt index, response) -> float``."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise RlinterpError(f"reward script {path} is not a .py file")
    spec = importlib.util.spec_from_file_location(f"rlinterp_reward_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RlinterpError(f"cannot import the reward script {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise RlinterpError(f"the reward script {path} failed on import: {type(e).__name__}: {e}") from e
    reward = getattr(module, "reward", None)
    if not callable(reward) or len(inspect.signature(reward).parameters) != 2:
        raise RlinterpError(f"{path} must define reward(prompt, response) -> float")
    try:
        float(reward(prompts[0], ""))
    except Exception as e:
        raise RlinterpError(
            f"the reward script {path} fails on the first prompt with an empty response "
            f"({type(e).__name__}: {e}); it must return a number for any response"
        ) from e
    return lambda i, response: float(reward(prompts[i], response))
