"""How far a checkpoint's own samples are from the base: KL, the base's likelihood of them,
and the persona shift of the activations they produce.

- **KL(π_t‖π_0)** of a sample: the exact per-token KL of the next-token distributions,
  summed along the sampled answer (``organism.model.kl_per_answer``: the sequence KL along
  the sampled path without the sampling noise of the per-token term); its mean over the
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

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..organism.model import AnswerBatch, Rollout, kl_per_answer

DRIFT_COLUMNS = ["kl", "base_logprob"]
"""Per-sample columns of ``sequence_stats``: KL(π_t‖π_0) summed over the answer, and the
mean per-token log-probability of the answer under the base (NaN for an empty answer)."""


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _rollouts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], samples: pd.DataFrame, batch_size: int
) -> list[tuple[range, Rollout]]:
    order = list(range(len(samples)))
    chunks = []
    for start in range(0, len(order), batch_size):
        rows = range(start, min(start + batch_size, len(order)))
        prompt_ids = [_prompt_ids(tokenizer, prompts[int(samples["prompt_index"].iloc[i])]) for i in rows]
        answer_ids = [list(samples["response_ids"].iloc[i]) for i in rows]
        answers = [str(samples["response"].iloc[i]) for i in rows]
        chunks.append((rows, Rollout(prompt_ids, answer_ids, answers)))
    return chunks


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
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    kl = np.zeros(len(samples))
    logprob = np.full(len(samples), np.nan)
    device = next(policy.parameters()).device
    for rows, rollout in _rollouts(tokenizer, prompts, samples, batch_size):
        if not any(rollout.answer_ids):
            continue
        batch = AnswerBatch.from_rollout(rollout, pad)
        batch = AnswerBatch(
            batch.ids.to(device), batch.attention_mask.to(device), batch.answer_mask.to(device)
        )
        log_base = batch.log_probs(base)
        log_p = log_base if policy is base else batch.log_probs(policy)
        kl[rows.start : rows.stop] = kl_per_answer(log_p, log_base, batch.answer_mask).cpu().numpy()
        tokens = batch.answer_mask.sum(-1).cpu().numpy()
        total = batch.token_log_probs(log_base).sum(-1).cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            logprob[rows.start : rows.stop] = np.where(tokens > 0, total / np.maximum(tokens, 1), np.nan)
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
    for rows, rollout in _rollouts(tokenizer, prompts, samples, batch_size):
        batch = AnswerBatch.from_rollout(rollout, 0)
        if not batch.answer_mask.any():
            continue
        # answer_mask marks the positions that *predict* answer tokens; the answer tokens sit one later
        tokens_mask = torch.roll(batch.answer_mask, 1, dims=1).to(device)
        ids = batch.ids.to(device)
        acts = []
        for model in (base, policy):
            _, cache = model.run_with_cache(ids, names_filter=lambda n: n == hook)  # type: ignore[attr-defined]
            acts.append(cache[hook].double())
        change = (acts[1] - acts[0]) * tokens_mask.unsqueeze(-1).double()
        out[rows.start : rows.stop] = (change.sum(1) @ units.T).cpu()
    return out
