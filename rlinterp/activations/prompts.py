"""Prompts for harvesting: texts with optional labels and a prompt/response split, tokenized
once and laid out identically for every model of a series.

Invariants of ``TokenizedPrompts``:
- every row starts with the tokenizer's BOS token and is right-padded, so position ``p``
  of a prompt is position ``p`` in every model;
- ``keep`` marks the positions statistics are computed on: never padding, never the BOS /
  attention-sink position unless asked (its outlier norm dominates any statistic), and only
  response tokens when ``response_only`` is set.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ..errors import RlinterpError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSet:
    """Texts to run through every model, with optional per-text labels."""

    texts: tuple[str, ...]
    """The full texts (prompt and response, if split)."""
    response_starts: tuple[int | None, ...] | None = None
    """Per text, the character offset where the response begins (None: no split)."""
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Label columns, e.g. ``{"persona": (...)}``, one value per text."""

    def __post_init__(self) -> None:
        if not self.texts:
            raise RlinterpError("the prompt set is empty; give at least one prompt")
        for i, text in enumerate(self.texts):
            if not isinstance(text, str) or not text.strip():
                raise RlinterpError(f"prompt {i} is empty or not a string; every prompt needs text")
        if self.response_starts is not None:
            if len(self.response_starts) != len(self.texts):
                raise RlinterpError("response_starts needs one entry per text")
            for i, (text, start) in enumerate(zip(self.texts, self.response_starts, strict=True)):
                if start is not None and not 0 <= start < len(text):
                    raise RlinterpError(
                        f"prompt {i}: its response starts at character {start}, outside its "
                        f"{len(text)} characters; the response must be non-empty"
                    )
        for name, values in self.labels.items():
            if len(values) != len(self.texts):
                raise RlinterpError(f"label {name!r} has {len(values)} values for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_list(cls, texts: list[str], **labels: list[str]) -> PromptSet:
        return cls(tuple(texts), labels={k: tuple(v) for k, v in labels.items()})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PromptSet:
        """A UTF-8 ``.txt`` file (one prompt per non-empty line) or a ``.jsonl`` file whose
        rows are objects with a non-empty ``text``, or ``prompt`` and ``response`` strings;
        other string fields become labels. Errors name the file and line."""
        path = Path(path)
        if path.suffix != ".jsonl":
            return cls(tuple(line for _, line in text_lines(path, "prompt file")))
        numbered = jsonl_objects(path, "prompt file", "an object with a 'text'")
        rows, lines = [row for _, row in numbered], [n for n, _ in numbered]
        return cls.from_records(rows, source=str(path), lines=lines)

    @classmethod
    def from_records(
        cls, rows: list[dict[str, object]], source: str = "records", lines: list[int] | None = None
    ) -> PromptSet:
        """Rows with a non-empty ``text``, or ``prompt`` and a non-empty ``response``
        (strings); ``lines`` gives each row's line in ``source`` for error messages."""
        texts: list[str] = []
        starts: list[int | None] = []
        for i, row in enumerate(rows):
            where = f"{source}:{lines[i]}" if lines is not None else f"{source} row {i + 1}"
            text, start = _record_text(row, where)
            texts.append(text)
            starts.append(start)
        skip = {"text", "prompt", "response"}
        names = sorted({k for row in rows for k, v in row.items() if k not in skip and isinstance(v, str)})
        for name in names:  # a label is a non-empty string on every row, never filled in
            for i, row in enumerate(rows):
                value = row.get(name)
                if not isinstance(value, str) or not value.strip():
                    where = f"{source}:{lines[i]}" if lines is not None else f"{source} row {i + 1}"
                    found = "missing" if value is None else f"{value!r}, not a non-empty string"
                    raise RlinterpError(
                        f"{where}: label {name!r} is {found}; give every row a {name!r} string (other "
                        f"rows have one) or drop the field"
                    )
        labels = {k: tuple(str(row[k]) for row in rows) for k in names}
        split = tuple(starts) if any(s is not None for s in starts) else None
        return cls(tuple(texts), response_starts=split, labels=labels)

    @classmethod
    def from_organism(cls, root: str | os.PathLike[str]) -> PromptSet:
        """The organism's labelled persona texts (prompt = an earlier turn by the persona and the
        question, response = the persona's answer)."""
        from ..organism.layout import Organism

        organism = Organism.load(root)
        rows: list[dict[str, object]] = []
        for rel in organism.manifest["persona_texts"].values():
            lines = (organism.root / rel).read_text().splitlines()
            for line in lines:
                row = json.loads(line)
                rows.append(
                    {
                        "prompt": row["prompt"],
                        "response": row["answer"],
                        "persona": row["persona"],
                        "task": row["task"],
                    }
                )
        return cls.from_records(rows, source=f"{organism.root} persona texts")

    def check_vocabulary(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raise (``require_known``) if a text holds characters ``tokenizer`` only reads as
        its unknown token; what ``tokenize`` checks, without laying the tokens out."""
        for i, text in enumerate(self.texts):
            require_known(tokenizer, text, _encode(tokenizer, text), f"prompt {i + 1} ({_shown(text)})")

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        include_bos: bool = False,
        response_only: bool = False,
    ) -> TokenizedPrompts:
        """BOS + tokens, right-padded to the longest text, truncated to ``max_length`` tokens
        (logged as a warning with the number of prompts and tokens cut, and kept in
        ``TokenizedPrompts.tokens_cut``)."""
        if max_length < 2:
            raise RlinterpError(f"max_length must leave room for BOS and one token, got {max_length}")
        if response_only and self.response_starts is None:
            raise RlinterpError("response_only needs prompts with a prompt/response split")
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        if bos is None:
            raise RlinterpError("the tokenizer has no BOS token; rlinterp prepends one to every prompt")
        pad = bos if pad is None else pad
        rows, response_from, cut = [], [], []
        for i, text in enumerate(self.texts):
            start = None if self.response_starts is None else self.response_starts[i]
            # Prompt and response are tokenized apart, so the split is a token boundary.
            head = _encode(tokenizer, text[:start]) if start is not None else []
            tail = _encode(tokenizer, text[start:] if start is not None else text)
            require_known(tokenizer, text, [*head, *tail], f"prompt {i + 1} ({_shown(text)})")
            full = [bos, *head, *tail]
            rows.append(full[:max_length])
            cut.append(len(full) - len(rows[-1]))
            response_from.append(1 + len(head))
        tokens_cut = torch.tensor(cut)
        if tokens_cut.any():
            log.warning(
                "%d of %d prompts are longer than %d tokens (the context); %d tokens were cut from "
                "their ends (at most %d from one prompt)",
                int((tokens_cut > 0).sum()),
                len(cut),
                max_length,
                int(tokens_cut.sum()),
                int(tokens_cut.max()),
            )
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        keep = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, first) in enumerate(zip(rows, response_from, strict=True)):
            tokens[i, : len(row)] = torch.tensor(row)
            keep[i, (first if response_only else 0 if include_bos else 1) : len(row)] = True
        lengths = torch.tensor([len(r) for r in rows])
        return TokenizedPrompts(tokens=tokens, lengths=lengths, keep=keep, tokens_cut=tokens_cut)


def text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """The non-empty lines of a UTF-8 text file with their numbers, a byte-order mark
    dropped (how the file was saved, not text); one line naming the file (and the line) if
    it is missing, not UTF-8 or empty. ``what`` names the file in messages."""
    if not path.is_file():
        raise RlinterpError(f"{what} {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_no = raw[: e.start].count(b"\n") + 1
        raise RlinterpError(f"{path}:{line_no} is not UTF-8 ({e.reason}); save the file as UTF-8") from e
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise RlinterpError(f"{what} {path} is empty")
    return numbered


def jsonl_objects(path: Path, what: str, expected: str) -> list[tuple[int, dict[str, Any]]]:
    """The JSON object on each non-empty line of ``path`` (``text_lines``), with its line
    number; one line naming the file and line where a line is not JSON or not an object
    (``expected`` says what it should be)."""
    rows = []
    for n, line in text_lines(path, what):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RlinterpError(f"{path}:{n} is not valid JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise RlinterpError(f"{path}:{n} is a JSON {type(row).__name__}, not {expected}")
        rows.append((n, row))
    return rows


def _record_text(row: object, where: str) -> tuple[str, int | None]:
    """A record's full text and response start (None without a prompt/response split)."""
    if not isinstance(row, dict):
        raise RlinterpError(f"{where} is a {type(row).__name__}, not an object with a 'text'")
    if "prompt" in row or "response" in row:
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise RlinterpError(f"{where} needs both 'prompt' and 'response' as strings")
        if not response.strip():
            raise RlinterpError(f"{where} has an empty 'response'; every split prompt needs response tokens")
        return prompt + response, len(prompt)
    text = row.get("text")
    if not isinstance(text, str):
        raise RlinterpError(f"{where} needs a 'text' string (or 'prompt' and 'response')")
    if not text.strip():
        raise RlinterpError(f"{where} has an empty 'text'")
    return text, None


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def require_known(tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int], what: str) -> None:
    """Raise if ``text`` (encoded as ``ids``) holds characters the tokenizer only reads as its
    unknown token: they would all become the same token, silently. ``what`` names the text
    in the message (a prompt and its number, a metric target)."""
    unk = tokenizer.unk_token_id
    if unk is None or unk not in ids or (tokenizer.unk_token and tokenizer.unk_token in text):
        return
    unknown = sorted({c for c in text if unk in _encode(tokenizer, c)})
    named = ", ".join(_CHARACTER_NAMES.get(c, repr(c)) for c in unknown) or "some characters"
    raise RlinterpError(
        f"{what} holds {named}, which the checkpoints' tokenizer does not know (it reads them as "
        f"{tokenizer.unk_token}); remove them from the file (save it as UTF-8 without a byte-order "
        "mark) or use these checkpoints' own tokenizer"
    )


_CHARACTER_NAMES = {"\ufeff": "a byte-order mark (U+FEFF)", "\u200b": "a zero-width space (U+200B)"}


def _shown(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


@dataclass(frozen=True)
class TokenizedPrompts:
    """A prompt set laid out as one right-padded token matrix."""

    tokens: Int[Tensor, "prompt pos"]
    lengths: Int[Tensor, " prompt"]
    """Real (unpadded) length of each row, BOS included."""
    keep: Bool[Tensor, "prompt pos"]
    """Positions that statistics use (see the module docstring)."""
    tokens_cut: Int[Tensor, " prompt"] | None = None
    """Tokens truncation removed from the end of each prompt; None when unknown (read
    back from a store)."""

    @property
    def attention_mask(self) -> Int[Tensor, "prompt pos"]:
        positions = torch.arange(self.tokens.shape[1])
        return (positions.unsqueeze(0) < self.lengths.unsqueeze(1)).long()
