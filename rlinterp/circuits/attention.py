"""Which attention heads now attend where: base vs checkpoint attention patterns per head.

For every head, on the same prompts: the total-variation distance between the two models'
attention distributions (``0.5 * sum_k |A_post - A_base|``, in [0, 1]), averaged over real
query positions (``tv_mean``) and at each prompt's last token, where the answer is read
(``tv_last``); and the key token whose attention weight at the last token grew most, as
its most common value over prompts (``gained_token``, with the share of prompts that agree).

Invariant: a model compared with itself gives zero everywhere; padding positions are never
queries (right padding: causal attention never lets a real query see them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from .metrics import MetricBatch


@torch.no_grad()
def attention_change(
    base: TransformerBridge,
    model: TransformerBridge,
    batches: Iterable[MetricBatch],
    tokenizer: PreTrainedTokenizerBase,
) -> pd.DataFrame:
    """One row per head: ``component`` (``L{l}.H{h}``), ``layer``, ``head``, ``tv_mean``,
    ``tv_last``, ``gained_token``, ``gained_share`` (see the module docstring)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    tv_sum = torch.zeros(n_layers, n_heads)
    tv_last_sum = torch.zeros(n_layers, n_heads)
    n_queries, n_prompts = 0, 0
    gained: list[list[Counter[int]]] = [[Counter() for _ in range(n_heads)] for _ in range(n_layers)]
    for batch in batches:
        _, cache_b = base.run_with_cache(batch.tokens, names_filter=names)
        _, cache_m = model.run_with_cache(batch.tokens, names_filter=names)
        valid = (torch.arange(batch.tokens.shape[1]) < batch.lengths.unsqueeze(1)).float()  # batch query
        rows = torch.arange(batch.tokens.shape[0])
        last = batch.lengths - 1
        tokens = batch.tokens.cpu()
        for layer, name in enumerate(names):
            diff = (cache_m[name] - cache_b[name]).float().cpu()  # batch head query key
            tv_sum[layer] += (0.5 * diff.abs().sum(-1) * valid.unsqueeze(1)).sum((0, 2))
            at_last = diff[rows, :, last]  # batch head key
            tv_last_sum[layer] += 0.5 * at_last.abs().sum(-1).sum(0)
            for b, keys in enumerate(at_last.argmax(-1).tolist()):
                for head, key in enumerate(keys):
                    gained[layer][head][int(tokens[b, key])] += 1
        n_queries += int(valid.sum())
        n_prompts += batch.tokens.shape[0]
    rows_out = []
    for layer in range(n_layers):
        for head in range(n_heads):
            token, count = gained[layer][head].most_common(1)[0] if n_prompts else (0, 0)
            rows_out.append(
                {
                    "component": f"L{layer}.H{head}",
                    "layer": layer,
                    "head": head,
                    "tv_mean": (tv_sum[layer, head] / max(n_queries, 1)).item(),
                    "tv_last": (tv_last_sum[layer, head] / max(n_prompts, 1)).item(),
                    "gained_token": tokenizer.decode([token]),
                    "gained_share": count / max(n_prompts, 1),
                }
            )
    return pd.DataFrame(rows_out)
