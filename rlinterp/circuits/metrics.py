"""Behaviour metrics: the number a circuit analysis explains.

A behaviour is defined by two things kept apart on purpose:

- ``BehaviourPrompts``: the prompts, the tokens each prompt's score is about
  (``positive``: what the behaviour makes more likely, ``negative``: what it competes
  with) and, optionally, a token-aligned ``corrupted`` version of every prompt that lacks
  the behaviour's cause (for within-model patching);
- ``BehaviourMetric``: how logits become one score per prompt, read at the last real token
  of the prompt (the position whose next token is the answer).

Invariants:
- a metric returns exactly one finite-or-not value per prompt, shape ``(batch,)``; any
  other shape is an error naming the metric, never a silent broadcast;
- ``kind="logit_diff"`` is ``logsumexp(logits[positive]) - logsumexp(logits[negative])``
  (the plain logit difference for one token a side: linear in the logits, so its direct
  logit attribution is exact); ``kind="logprob"`` is ``log sum_{t in positive} p(t)``;
- a corrupted prompt tokenizes to exactly as many tokens as its clean prompt, so position
  ``p`` means the same in both runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ..core.artifacts import read_jsonl
from ..errors import RlinterpError

MetricKind = Literal["logit_diff", "logprob", "custom"]


@dataclass(frozen=True)
class MetricBatch:
    """What a metric sees besides the logits, for one batch of prompts."""

    tokens: Int[Tensor, "batch pos"]
    """BOS + prompt tokens, right-padded."""
    lengths: Int[Tensor, " batch"]
    """Real length of each row; the metric reads logits at ``lengths - 1``."""
    positive: Int[Tensor, "batch k_positive"]
    """Token ids the behaviour promotes, per prompt, padded with -1."""
    negative: Int[Tensor, "batch k_negative"]
    """Token ids the behaviour competes with, per prompt, padded with -1 (may be empty)."""

    def last_logits(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, "batch vocab"]:
        """Logits at the last real token of every prompt."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, (self.lengths - 1).to(logits.device)]


MetricFunction = Callable[[Float[Tensor, "batch pos vocab"], MetricBatch], Float[Tensor, " batch"]]


@dataclass(frozen=True)
class BehaviourMetric:
    """One score per prompt computed from a model's logits."""

    name: str
    """Short identifier, used in file names and tables (``answer``, ``persona``)."""
    kind: MetricKind = "logit_diff"
    """``logit_diff``, ``logprob`` (see the module docstring) or ``custom`` (``function``)."""
    description: str = ""
    """One sentence for reports: what a higher value means."""
    function: MetricFunction | None = None
    """For ``kind="custom"``: ``function(logits, batch) -> (batch,)`` scores; it must be
    differentiable in the logits for attribution patching."""

    def __post_init__(self) -> None:
        if (self.kind == "custom") != (self.function is not None):
            raise ValueError("BehaviourMetric: give a function exactly when kind='custom'")
        if self.kind not in ("logit_diff", "logprob", "custom"):
            raise ValueError(f"BehaviourMetric.kind must be logit_diff, logprob or custom, got {self.kind!r}")

    def __call__(
        self, logits: Float[Tensor, "batch pos vocab"], batch: MetricBatch
    ) -> Float[Tensor, " batch"]:
        if self.function is not None:
            values = self.function(logits, batch)
        else:
            last = batch.last_logits(logits).float()
            if self.kind == "logprob":
                values = _select_logsumexp(last.log_softmax(-1), batch.positive)
            else:
                values = _select_logsumexp(last, batch.positive) - _select_logsumexp(last, batch.negative)
        expected = (logits.shape[0],)
        if not isinstance(values, Tensor) or tuple(values.shape) != expected:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise RlinterpError(
                f"metric {self.name!r} returned shape {shape}; a metric must return one value per "
                f"prompt, shape {expected}"
            )
        return values


def _select_logsumexp(values: Float[Tensor, "batch vocab"], ids: Int[Tensor, "batch k"]) -> Tensor:
    """``logsumexp`` of ``values`` over each row's ids (-1 padding ignored); 0 for no ids."""
    if ids.shape[1] == 0:
        return values.new_zeros(values.shape[0])
    ids = ids.to(values.device)
    picked = values.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    return picked.logsumexp(-1)


@dataclass(frozen=True)
class BehaviourPrompts:
    """Prompts for a behaviour metric, with per-prompt target tokens."""

    clean: tuple[str, ...]
    """Prompts ending where the behaviour's token would come next."""
    positive: tuple[tuple[str, ...], ...]
    """Per prompt, the tokens (each exactly one token) the behaviour promotes."""
    negative: tuple[tuple[str, ...], ...] | None = None
    """Per prompt, the competing tokens (``None``: no competitor, for ``logprob``)."""
    corrupted: tuple[str, ...] | None = None
    """Per prompt, a token-aligned variant without the behaviour's cause (``None``: no
    within-model contrast; component use is then read from direct logit attribution)."""

    def __post_init__(self) -> None:
        n = len(self.clean)
        if n == 0:
            raise RlinterpError("behaviour prompts are empty; give at least one prompt")
        for name in ("positive", "negative", "corrupted"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise RlinterpError(
                    f"behaviour prompts: {name} has {len(value)} entries for {n} clean prompts; "
                    "give one per clean prompt"
                )

    def __len__(self) -> int:
        return len(self.clean)

    def spread(self, n: int | None) -> BehaviourPrompts:
        """``n`` prompts evenly spaced over these (all of them when ``n`` is None or at least
        their number), every field kept aligned."""
        if n is not None and n < 1:
            raise RlinterpError(f"a prompt subset needs at least one prompt, got {n}")
        if n is None or n >= len(self):
            return self
        keep = [round(i * (len(self) - 1) / max(n - 1, 1)) for i in range(n)]

        def pick(values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
            return None if values is None else tuple(values[i] for i in keep)

        return BehaviourPrompts(
            clean=tuple(self.clean[i] for i in keep),
            positive=tuple(self.positive[i] for i in keep),
            negative=pick(self.negative),
            corrupted=pick(self.corrupted),
        )

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> BehaviourPrompts:
        """Rows ``{"prompt": str, "positive": str | [str], "negative": str | [str],
        "corrupted": str}``; ``negative`` and ``corrupted`` are optional (all rows or none)."""
        path = Path(path)
        rows = []
        for n, row in read_jsonl(path, "behaviour prompt file"):
            if not isinstance(row.get("prompt"), str) or "positive" not in row:
                raise RlinterpError(f"{path}:{n} needs a 'prompt' string and 'positive' token(s)")
            rows.append(row)

        def tokens(value: object) -> tuple[str, ...]:
            return (value,) if isinstance(value, str) else tuple(str(v) for v in value)  # type: ignore[attr-defined]

        def column(key: str) -> tuple | None:
            present = [key in row for row in rows]
            if any(present) and not all(present):
                raise RlinterpError(f"{path}: give '{key}' on every row or on none")
            return tuple(row[key] for row in rows) if all(present) else None

        negative, corrupted = column("negative"), column("corrupted")
        return cls(
            clean=tuple(row["prompt"] for row in rows),
            positive=tuple(tokens(row["positive"]) for row in rows),
            negative=None if negative is None else tuple(tokens(v) for v in negative),
            corrupted=corrupted,
        )

    def subset(self, indices: Sequence[int]) -> BehaviourPrompts:
        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[i] for i in indices)

        return BehaviourPrompts(
            clean=tuple(self.clean[i] for i in indices),
            positive=tuple(self.positive[i] for i in indices),
            negative=pick(self.negative),
            corrupted=pick(self.corrupted),
        )

    def encode(self, tokenizer: PreTrainedTokenizerBase) -> EncodedPrompts:
        """Token ids for every prompt and target; errors name the offending prompt."""
        bos = tokenizer.bos_token_id
        if bos is None:
            raise RlinterpError("the tokenizer has no BOS token; rlinterp prepends one to every prompt")
        clean = [[bos, *_ids(tokenizer, t)] for t in self.clean]
        corrupted = None
        if self.corrupted is not None:
            corrupted = [[bos, *_ids(tokenizer, t)] for t in self.corrupted]
            for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
                if len(a) != len(b):
                    raise RlinterpError(
                        f"prompt {i}: clean {self.clean[i]!r} has {len(a)} tokens but corrupted "
                        f"{self.corrupted[i]!r} has {len(b)}; patching needs token-aligned pairs"
                    )
        positive = [[_one_token(tokenizer, t) for t in row] for row in self.positive]
        negative = [[_one_token(tokenizer, t) for t in row] for row in (self.negative or [()] * len(clean))]
        return EncodedPrompts(clean, corrupted, positive, negative, pad=tokenizer.pad_token_id or bos)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _one_token(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    ids = _ids(tokenizer, text)
    if len(ids) != 1:
        raise RlinterpError(
            f"target {text!r} is {len(ids)} tokens; a metric target must be exactly one token"
        )
    return ids[0]


@dataclass(frozen=True)
class EncodedPrompts:
    """``BehaviourPrompts`` as token ids, batched on demand."""

    clean: list[list[int]]
    corrupted: list[list[int]] | None
    positive: list[list[int]]
    negative: list[list[int]]
    pad: int

    def __len__(self) -> int:
        return len(self.clean)

    def batch(self, indices: Sequence[int], corrupted: bool = False) -> MetricBatch:
        """A right-padded batch of the given prompts (their corrupted versions if asked)."""
        rows = self.corrupted if corrupted else self.clean
        if rows is None:
            raise RlinterpError("these behaviour prompts have no corrupted versions")
        chosen = [rows[i] for i in indices]
        width = max(len(r) for r in chosen)
        tokens = torch.full((len(chosen), width), self.pad, dtype=torch.long)
        for i, row in enumerate(chosen):
            tokens[i, : len(row)] = torch.tensor(row)
        return MetricBatch(
            tokens=tokens,
            lengths=torch.tensor([len(r) for r in chosen]),
            positive=_pad([self.positive[i] for i in indices]),
            negative=_pad([self.negative[i] for i in indices]),
        )


def _pad(rows: list[list[int]]) -> Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
