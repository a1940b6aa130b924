"""How far a checkpoint's own samples are from the base: KL, the base's likelihood of them,
and the persona shift of the activations they produce.

- **KL(π_t‖π_0)** of a sample: the exact per-token KL of the next-token distributions,
  summed along the sampled answer (the sequence KL along the sampled path without the
  sampling noise of the per-token term, as the organism's RL penalty computes it); its mean over the
  checkpoint's samples estimates KL(π_t‖π_0) on the prompts, and ``d = sqrt(KL)`` is the
  distance of Gao et al. (2022, "Scaling Laws for Reward Model Overoptimization").
- **Base log-likelihood** of a sample: the mean per-token log-probability of its answer
  under the base. A sample is **new** (a behaviour no persona wrote) when that is below
  the ``new_quantile`` of the same quantity on a separate draw of the base's own samples:
  text the base itself would write at most that rarely. The definition needs no list of
  personas, so it applies to any base; on the base its rate is ``new_quantile`` up to
  sampling error, the false-positive rate it is read against.
- **Persona shift**: the mean, over a sample's answer tokens, of the checkpoint's activation
  minus the base's on the same tokens at one hook, projected on each unit persona direction
  (``selection.personas``: persona mean minus the others' mean, fitted on the base). It says
  which persona's direction RL moved the representation along while the behaviour changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DRIFT_COLUMNS = ["kl", "base_logprob"]
"""Per-sample columns of ``sequence_stats``: KL(π_t‖π_0) summed over the answer, and the
mean per-token log-probability of the answer under the base (NaN for an empty answer)."""


class _Batch(NamedTuple):
    rows: range
    """The samples it holds (rows of the sample table)."""
    ids: Int[Tensor, "batch pos"]
    """BOS, prompt and answer tokens, right-padded."""
    attention: Int[Tensor, "batch pos"]
    predicts: Bool[Tensor, "batch pos"]
    """True at the positions whose next token is an answer token."""


def _batches(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    samples: pd.DataFrame,
    size: int,
    device: torch.device | str,
) -> Iterator[_Batch]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    for start in range(0, len(samples), size):
        rows = range(start, min(start + size, len(samples)))
        heads = [
            bos
            + list(
                tokenizer(prompts[int(samples["prompt_index"].iloc[i])], add_special_tokens=False)[
                    "input_ids"
                ]
            )
            for i in rows
        ]
        answers = [list(samples["response_ids"].iloc[i]) for i in rows]
        width = max(len(h) + len(a) for h, a in zip(heads, answers, strict=True))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        predicts = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (head, answer) in enumerate(zip(heads, answers, strict=True)):
            ids[r, : len(head) + len(answer)] = torch.tensor(head + answer)
            attention[r, : len(head) + len(answer)] = 1
            predicts[r, len(head) - 1 : len(head) - 1 + len(answer)] = True
        yield _Batch(rows, ids.to(device), attention.to(device), predicts.to(device))


def _log_probs(model: PreTrainedModel, batch: _Batch) -> Float[Tensor, "batch pos vocab"]:
    logits = model(input_ids=batch.ids, attention_mask=batch.attention).logits
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def sequence_stats(
    policy: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    samples: pd.DataFrame,
    batch_size: int,
) -> pd.DataFrame:
    """``DRIFT_COLUMNS`` of every sample of ``policy`` (its rows in ``samples`` order)."""
    kl = np.zeros(len(samples))
    logprob = np.full(len(samples), np.nan)
    device = next(policy.parameters()).device
    for batch in _batches(tokenizer, prompts, samples, batch_size, device):
        if not batch.predicts.any():
            continue
        log_q = _log_probs(base, batch)
        log_p = log_q if policy is base else _log_probs(policy, batch)
        mask = batch.predicts.double()
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1).double()  # exact KL of the next-token laws
        kl[batch.rows.start : batch.rows.stop] = (per_token * mask).sum(-1).cpu().numpy()
        following = torch.roll(batch.ids, -1, dims=1)
        picked = log_q.gather(-1, following.unsqueeze(-1)).squeeze(-1).double()
        tokens = mask.sum(-1)
        mean = ((picked * mask).sum(-1) / tokens.clamp_min(1)).cpu().numpy()
        logprob[batch.rows.start : batch.rows.stop] = np.where(tokens.cpu().numpy() > 0, mean, np.nan)
    return pd.DataFrame({"kl": kl, "base_logprob": logprob})


def new_threshold(base_logprobs: np.ndarray, quantile: float) -> float:
    """The base log-likelihood below which a sample counts as new (see the module docstring)."""
    values = base_logprobs[np.isfinite(base_logprobs)]
    return float(np.quantile(values, quantile)) if len(values) else float("nan")


@torch.no_grad()
def persona_projection(
    base: object,
    policy: object,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    samples: pd.DataFrame,
    hook: str,
    directions: Float[Tensor, "persona d"],
    batch_size: int,
) -> Float[Tensor, "sample persona"]:
    """Per sample, the sum over its answer tokens of ``(policy - base) activation`` at
    ``hook`` projected on each unit direction (divide by the answer's token count for the
    mean); ``base`` and ``policy`` are hooked TransformerLens models."""
    out = torch.zeros(len(samples), directions.shape[0], dtype=torch.float64)
    device = str(base.cfg.device or "cpu")  # type: ignore[attr-defined]
    units = directions.double().to(device)
    for batch in _batches(tokenizer, prompts, samples, batch_size, device):
        if not batch.predicts.any():
            continue
        # the answer's tokens sit one position after those that predict them
        on_answer = torch.roll(batch.predicts, 1, dims=1).double().unsqueeze(-1)
        acts = []
        for model in (base, policy):
            _, cache = model.run_with_cache(batch.ids, names_filter=[hook])  # type: ignore[attr-defined]
            acts.append(cache[hook].double())
        change = (acts[1] - acts[0]) * on_answer
        out[batch.rows.start : batch.rows.stop] = (change.sum(1) @ units.T).cpu()
    return out
