"""Output diffs: how each RL checkpoint's next-token distribution moved away from the base,
and what the mean activation change of each layer says about tokens.

- **KL**: per kept token, ``KL(post || base)`` of the next-token distributions, computed
  batch by batch with the base and one checkpoint in memory (the base's log-probs kept
  across checkpoints when they are small); summarised by mean and quantiles, with the
  tokens whose distribution moved most.
- **Activation-difference lens**: the mean difference vector of a hook (``post - base``)
  read through the checkpoint's unembedding ``W_U`` (no final norm: a difference vector
  has no scale of its own to normalise), listing the tokens it promotes and suppresses
  (``logit_tokens``, the one reading of directions as tokens: feature cards and tracking
  read decoders with it too).

A checkpoint compared with itself gives KL exactly 0 (the same logits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from ..activations.harvest import ActivationStore, TokenBatch
from ..models.checkpoint import Checkpoint
from ..models.hooked import HookedModel
from ..models.series import ModelSeries
from .activations import concat_frames

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class OutputDiff:
    """Output change of every checkpoint against the base."""

    table: pd.DataFrame
    """One row per checkpoint: ``label, step, n_tokens, kl_mean, kl_p50/p90/p99, kl_max``."""
    top_tokens: pd.DataFrame
    """Tokens whose next-token distribution moved most: ``label, rank, row, kl,
    base_top, post_top`` (the argmax next token before and after)."""
    lens: pd.DataFrame
    """The activation-difference lens of each given direction: ``label, hook`` and the
    columns of ``logit_tokens`` (but ``latent``)."""

    def to_frame(self) -> pd.DataFrame:
        return self.table


def merge_output_diffs(parts: Sequence[OutputDiff]) -> OutputDiff:
    """Per-checkpoint output diffs (in checkpoint order) as one."""
    return OutputDiff(
        concat_frames([p.table for p in parts]),
        concat_frames([p.top_tokens for p in parts]),
        concat_frames([p.lens for p in parts]),
    )


@torch.no_grad()
def diff_outputs(
    series: ModelSeries,
    store: ActivationStore,
    directions: dict[tuple[str, str], Float[Tensor, " d_model"]] | None = None,
    top_k: int = 10,
    top_positions: int = 50,
    checkpoints: Sequence[Checkpoint] | None = None,
    cache_bytes: int = 256 * 2**20,
) -> OutputDiff:
    """KL(post || base) on the store's kept tokens, for every checkpoint of ``series`` (or
    of ``checkpoints``), and the lens of each ``(label, hook) -> direction`` read through
    that checkpoint's ``W_U`` (while the checkpoint is loaded anyway). The base's log-probs
    are computed once and kept when they fit in ``cache_bytes`` (small vocabularies), else
    the base is run again beside every checkpoint (see ``BaseLogProbs``)."""
    rows, tops, lenses = [], [], []
    base_runs = BaseLogProbs(series, store, cache_bytes)
    for checkpoint in series if checkpoints is None else checkpoints:
        post_model = series.hooked(checkpoint)  # the plain forward: its logits are the reference
        for (label, hook), vector in (directions or {}).items():
            if label == checkpoint.label and checkpoint != series.base:
                logits = vector[None].to(post_model.W_U.device).float() @ post_model.W_U.float()
                lens = logit_tokens(logits, post_model.tokenizer, top_k).drop(columns="latent")
                lenses.append(lens.assign(label=label, hook=hook))
        kls, base_top, post_top = [], [], []
        for _, log_q, log_p in paired_log_probs(post_model, base_runs, store):
            kls.append(kl_divergence(log_p, log_q).cpu())
            base_top.append(log_q.argmax(-1).cpu())
            post_top.append(log_p.argmax(-1).cpu())
        kl = torch.cat(kls)
        quantiles = torch.quantile(kl, torch.tensor(QUANTILES)).tolist()
        rows.append(
            {
                "label": checkpoint.label,
                "step": checkpoint.step,
                "n_tokens": len(kl),
                "kl_mean": kl.mean().item(),
                **{f"kl_p{round(q * 100)}": v for q, v in zip(QUANTILES, quantiles, strict=True)},
                "kl_max": kl.max().item(),
            }
        )
        before, after = torch.cat(base_top), torch.cat(post_top)
        values, index = kl.topk(min(top_positions, len(kl)))
        tokenizer = post_model.tokenizer
        tops += [
            {
                "label": checkpoint.label,
                "rank": r,
                "row": int(i),
                "kl": float(v),
                "base_top": tokenizer.decode([int(before[i])]),
                "post_top": tokenizer.decode([int(after[i])]),
            }
            for r, (v, i) in enumerate(zip(values, index, strict=True))
            if v > 0
        ]
    return OutputDiff(
        pd.DataFrame(rows),
        pd.DataFrame(tops),
        pd.concat(lenses, ignore_index=True) if lenses else pd.DataFrame(),
    )


def kl_divergence(log_p: Float[Tensor, "n vocab"], log_q: Float[Tensor, "n vocab"]) -> Float[Tensor, " n"]:
    """``KL(p || q)`` per row of two log-probability tables (rounding below 0 clipped)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)


@torch.no_grad()
def paired_log_probs(
    post_model: HookedModel | TransformerBridge, base_runs: BaseLogProbs, store: ActivationStore
) -> Iterator[tuple[TokenBatch, Float[Tensor, "kept vocab"], Float[Tensor, "kept vocab"]]]:
    """Batch by batch over the store's kept tokens (in store-row order): the batch, the
    base's and ``post_model``'s next-token log-probs at its kept positions."""
    for batch in store.token_batches():
        tokens = batch.tokens.to(post_model.cfg.device)
        keep = batch.keep.to(post_model.cfg.device)
        log_q = base_runs.log_probs(batch)
        yield batch, log_q, F.log_softmax(post_model(tokens, return_type="logits").float()[keep], dim=-1)


class BaseLogProbs:
    """The base model's next-token log-probs on each batch of a store's kept tokens.

    Kept in memory when all of them fit in ``cache_bytes`` (``kept tokens x vocabulary``
    float32: a few MB for a character-level vocabulary), so the base runs once for the
    whole series; for real vocabularies they do not fit, and the base is run again beside
    every checkpoint (a forward is cheaper than the disk). Either way the values are
    those of the same forward pass, so the KL does not depend on the choice."""

    def __init__(self, series: ModelSeries, store: ActivationStore, cache_bytes: int) -> None:
        self.series = series
        n_kept = int(store.tokens().keep.sum())
        vocab = int(series.hook_map().cfg.d_vocab)
        self.cached: dict[int, Tensor] | None = {} if n_kept * vocab * 4 <= cache_bytes else None

    @torch.no_grad()
    def log_probs(self, batch: TokenBatch) -> Float[Tensor, "kept vocab"]:
        if self.cached is not None and batch.shard in self.cached:
            return self.cached[batch.shard]
        model = self.series.hooked(self.series.base)
        tokens, keep = batch.tokens.to(model.cfg.device), batch.keep.to(model.cfg.device)
        log_q = F.log_softmax(model(tokens, return_type="logits").float()[keep], dim=-1)
        if self.cached is not None:
            self.cached[batch.shard] = log_q
        return log_q


@torch.no_grad()
def logit_tokens(
    logits: Float[Tensor, "n d_vocab"],
    tokenizer: PreTrainedTokenizerBase,
    top_k: int = 10,
    skip_special: bool = True,
) -> pd.DataFrame:
    """What directions write into the logits, as tokens: per row of ``logits`` (directions
    read through an unembedding, ``directions @ W_U``: a lens's mean difference, a
    dictionary's decoder), the ``top_k`` tokens it promotes (largest logits) and suppresses
    (smallest): ``latent`` (the row), ``direction``, ``rank``, ``token_id``, ``token``,
    ``logit``; every row's promoted tokens first. Special tokens (padding, BOS, ...) are
    left out unless ``skip_special`` is False: text never predicts them."""
    logits = logits.float().cpu()
    ids = torch.arange(logits.shape[1])
    if skip_special:
        usable = torch.ones(logits.shape[1], dtype=torch.bool)
        usable[torch.tensor(tokenizer.all_special_ids, dtype=torch.long)] = False
        ids = ids[usable]
    k = min(top_k, len(ids))
    kept = logits[:, ids]
    frames = []
    for direction, sign in (("promoted", 1.0), ("suppressed", -1.0)):
        top = (sign * kept).topk(k, dim=-1)
        token_ids = ids[top.indices.flatten()]
        names = {int(i): tokenizer.decode([int(i)]) for i in token_ids.unique()}
        frames.append(
            pd.DataFrame(
                {
                    "latent": torch.arange(logits.shape[0]).repeat_interleave(k).numpy(),
                    "direction": direction,
                    "rank": torch.arange(k).repeat(logits.shape[0]).numpy(),
                    "token_id": token_ids.numpy(),
                    "token": [names[int(i)] for i in token_ids],
                    "logit": (sign * top.values.flatten()).numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
