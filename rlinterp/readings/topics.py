"""Topics of the changed tokens: where a checkpoint's next-token distribution moved most, and
what those places have in common.

For each RL checkpoint, every kept token of an activation store is scored by
``KL(post || base)`` of its next-token distributions (the KL pass of ``diff.outputs``); the
``n_positions`` highest are the changed positions. Each is described by a bag of tokens in
two blocks: its **context** (the ``context`` tokens up to and including it) and the
**promoted** next tokens (the ``promoted`` tokens whose probability rose most there, post
minus base). Each block is normalised to sum 1 per position, so context and change weigh
the same. A non-negative factorisation of that positions x features matrix, ``X ~ W H``
(``nmf``), groups the positions into ``n_topics`` topics: a topic's row of ``H`` says which
contexts and promoted tokens make it (its top tokens), a position's row of ``W`` how much
it belongs to each (its examples are the positions that belong most). On the organism's
strong regime one topic is the ``!`` shortcut: ``!`` promoted after its answers' words.

``nmf`` is the multiplicative-update algorithm of Lee and Seung (2001) for the Frobenius
loss, in torch (scikit-learn is not a dependency); deterministic in its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ..activations.harvest import ActivationStore
from ..diff.outputs import BaseLogProbs, kl_divergence, paired_log_probs
from ..errors import RlinterpError
from ..models.series import Checkpoint, ModelSeries
from .config import TopicsConfig as TopicsConfig

TOPIC_COLUMNS = ["label", "step", "topic", "share", "n_positions", "top_promoted", "top_context", "examples"]
"""``ChangedTopics.topics``: per checkpoint and topic, its share of the positions' total
weight, the positions it is the largest topic of, its top promoted next tokens and context
tokens (largest weights in ``H`` first), and example contexts (``context|token -> promoted``)."""
POSITION_COLUMNS = [
    "label",
    "step",
    "row",
    "prompt",
    "position",
    "kl",
    "context",
    "token",
    "promoted",
    "topic",
]
"""``ChangedTopics.positions``: the changed positions, largest KL first: store row, prompt and
position, the KL, the decoded context before the token, the token, the promoted next tokens,
and the topic it belongs to most."""


@dataclass(frozen=True)
class ChangedTopics:
    """Changed positions and their topics, per checkpoint."""

    topics: pd.DataFrame
    """``TOPIC_COLUMNS``."""
    positions: pd.DataFrame
    """``POSITION_COLUMNS``."""


def nmf(
    x: Float[Tensor, "n m"], k: int, n_iter: int = 400, seed: int = 0
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "k m"]]:
    """Non-negative ``W, H`` with ``x ~ W H`` (Frobenius loss, multiplicative updates), the
    rows of ``H`` scaled to sum 1 (their scale moved into ``W``)."""
    if (x < 0).any():
        raise RlinterpError("nmf needs a non-negative matrix")
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    scale = (x.mean() / k).sqrt().clamp_min(1e-12)
    w = torch.rand(x.shape[0], k, generator=g, dtype=torch.float64) * scale
    h = torch.rand(k, x.shape[1], generator=g, dtype=torch.float64) * scale
    eps = 1e-12
    for _ in range(n_iter):
        h *= (w.T @ x) / (w.T @ w @ h + eps)
        w *= (x @ h.T) / (w @ (h @ h.T) + eps)
    total = h.sum(1, keepdim=True).clamp_min(eps)
    return (w * total.T).float(), (h / total).float()


class _Scored:
    """KL and the promoted tokens of every store row for one checkpoint."""

    def __init__(self, kl: Tensor, promoted: Tensor) -> None:
        self.kl, self.promoted = kl, promoted


@torch.no_grad()
def _score(model: Any, base_runs: BaseLogProbs, store: ActivationStore, promoted: int) -> _Scored:
    kls, tops = [], []
    for _, log_q, log_p in paired_log_probs(model, base_runs, store):
        kls.append(kl_divergence(log_p, log_q).cpu())
        tops.append((log_p.exp() - log_q.exp()).topk(promoted, dim=-1).indices.cpu())
    return _Scored(torch.cat(kls), torch.cat(tops))


def _bags(
    store: ActivationStore, rows: Tensor, promoted: Tensor, context: int, vocab: int
) -> tuple[Tensor, list[list[int]]]:
    """Positions x (context block + promoted block) features, each block summing to 1 per
    position, and each position's context ids (BOS excluded)."""
    tokens, where = store.tokens().tokens, store.row_positions()
    x = torch.zeros(len(rows), 2 * vocab)
    contexts = []
    for i, row in enumerate(rows.tolist()):
        prompt, pos = (int(v) for v in where[row])
        ids = tokens[prompt, max(1, pos - context + 1) : pos + 1].tolist()
        contexts.append(ids)
        x[i, :vocab] += torch.bincount(torch.tensor(ids), minlength=vocab)[:vocab].float() / len(ids)
        x[i, vocab + promoted[row]] += 1.0 / promoted.shape[1]
    return x, contexts


def changed_token_topics(
    series: ModelSeries,
    store: ActivationStore,
    cfg: TopicsConfig | None = None,
    checkpoints: Sequence[Checkpoint] | None = None,
    cache_bytes: int = 256 * 2**20,
) -> ChangedTopics:
    """The changed positions of the RL checkpoints of ``series`` (every one or the last, as
    ``cfg.checkpoints`` says; or ``checkpoints``) on
    ``store``'s tokens, and their topics (see the module docstring)."""
    cfg = cfg or TopicsConfig()
    tokenizer = series.tokenizer()
    base_runs = BaseLogProbs(series, store, cache_bytes)
    vocab = int(series.load(series.base).cfg.d_vocab)
    topics, positions = [], []
    if checkpoints is None:
        checkpoints = series.checkpoints[-1:] if cfg.checkpoints == "last" else series.checkpoints[1:]
    for checkpoint in checkpoints:
        scored = _score(series.load(checkpoint), base_runs, store, cfg.promoted)
        values, rows = scored.kl.topk(min(cfg.n_positions, len(scored.kl)))
        rows = rows[values > 0]
        if len(rows) < cfg.n_topics:
            continue  # nothing (or too little) changed: no topics to find
        x, contexts = _bags(store, rows, scored.promoted, cfg.context, vocab)
        w, h = nmf(x, cfg.n_topics, cfg.n_iter, cfg.seed)
        found = _positions(store, rows, scored, contexts, w, tokenizer)
        info = {"label": checkpoint.label, "step": checkpoint.step}
        positions.append(found.assign(**info))
        topics += [{**info, **t} for t in _topics(w, h, found, vocab, cfg, tokenizer)]
    return ChangedTopics(
        pd.DataFrame(topics, columns=TOPIC_COLUMNS),
        pd.concat(positions, ignore_index=True)[POSITION_COLUMNS]
        if positions
        else pd.DataFrame(columns=POSITION_COLUMNS),
    )


def _positions(
    store: ActivationStore,
    rows: Tensor,
    scored: _Scored,
    contexts: list[list[int]],
    w: Tensor,
    tokenizer: PreTrainedTokenizerBase,
) -> pd.DataFrame:
    where = store.row_positions()
    return pd.DataFrame(
        [
            {
                "row": int(row),
                "prompt": int(where[row][0]),
                "position": int(where[row][1]),
                "kl": float(scored.kl[row]),
                "context": tokenizer.decode(ids[:-1]),
                "token": tokenizer.decode(ids[-1:]),
                "promoted": [tokenizer.decode([int(t)]) for t in scored.promoted[row]],
                "topic": int(w[i].argmax()),
            }
            for i, (row, ids) in enumerate(zip(rows.tolist(), contexts, strict=True))
        ]
    )


def _topics(
    w: Tensor,
    h: Tensor,
    found: pd.DataFrame,
    vocab: int,
    cfg: TopicsConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict[str, Any]]:
    def top(block: Tensor) -> list[str]:
        values, ids = block.topk(min(cfg.top_tokens, vocab))
        return [str(tokenizer.decode([int(i)])) for v, i in zip(values, ids, strict=True) if v > 0]

    out = []
    for t in range(cfg.n_topics):
        # the positions that belong most, each text once (contexts repeat across prompts)
        ranked = [i for i in w[:, t].argsort(descending=True).tolist() if w[i, t] > 0]
        shown = (
            f"{found['context'].iloc[i]}|{found['token'].iloc[i]} -> {found['promoted'].iloc[i][0]}"
            for i in ranked
        )
        examples = list(dict.fromkeys(shown))[: cfg.examples]
        out.append(
            {
                "topic": t,
                "share": float(w[:, t].sum() / w.sum()) if w.sum() > 0 else 0.0,
                "n_positions": int((found["topic"] == t).sum()),
                "top_promoted": top(h[t, vocab:]),
                "top_context": top(h[t, :vocab]),
                "examples": examples,
            }
        )
    return out
