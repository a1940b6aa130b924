"""The reasoning-mediated share: how much of the answer flows through the reasoning positions,
by activation patching.

For two samples ``i`` (clean) and ``j`` (corrupted) of the same checkpoint whose contexts
``prompt + reasoning span + trigger`` have the same token length and the same span positions,
and whose forced answers begin with different tokens ``t_i`` and ``t_j``, the answer logit
difference at the last position is ``LD = logit(t_i) - logit(t_j)``. Three runs give

- ``LD_clean``: sample ``i``'s context;
- ``LD_corrupt``: sample ``j``'s context (another question and its reasoning);
- ``LD_patched``: the corrupted run with the residual stream entering block ``L``
  (``blocks.L.hook_resid_pre``) replaced, **at the reasoning positions only**, by the clean
  run's;

and the share ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)`` (summed over pairs
before dividing, so pairs with no effect weigh nothing): 1 when the clean reasoning alone
restores the clean answer (the answer is read from the reasoning), 0 when the answer
bypasses it (read from the question). At ``L = 0`` the patch replaces the written tokens of
the reasoning (what a reader sees); at deeper blocks it also carries what those positions
computed from the clean question, so the share at the last block bounds everything that
reaches the answer through them. ``share`` is the one at ``L = 0``; the table has every
block.

Positions come from tokenizing ``prompt + response[:start]`` and ``prompt +
response[:end]`` of the span (a tokenizer that merges across the span's edges moves them by
one token at most); BOS is prepended as in sampling.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformers import PreTrainedTokenizerBase

from ..core.reproducibility import stream_seed
from .format import ReasoningFormat

PAIR_COLUMNS = ["clean", "corrupt", "prompt_index", "layer", "ld_clean", "ld_corrupt", "ld_patched"]
"""``patching.parquet``: the clean and corrupted samples (row numbers in ``samples``), the
clean sample's prompt, the block whose input was patched, and the three logit differences."""


@dataclass(frozen=True)
class _Context:
    sample: int
    prompt_index: int
    tokens: list[int]
    span: tuple[int, int]
    answer_token: int


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def contexts(
    tokenizer: PreTrainedTokenizerBase,
    fmt: ReasoningFormat,
    prompts: Sequence[str],
    responses: Sequence[str],
    prompt_indices: Sequence[int],
    forced: Sequence[str | None],
) -> list[_Context]:
    """The patchable context of every sample with a span, a trigger and a forced answer."""
    found = []
    for i, (prompt, response, answer) in enumerate(zip(prompts, responses, forced, strict=True)):
        parsed = fmt.parse(response)
        # no forced answer: None, or NaN once the column has passed through a DataFrame
        if parsed.span is None or parsed.trigger is None or not isinstance(answer, str):
            continue
        start, end = parsed.span
        head = _encode(tokenizer, prompt + response[:start])
        body = _encode(tokenizer, prompt + response[:end])
        tokens = _encode(tokenizer, prompt + response[:end] + parsed.trigger)
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not answer_ids or len(body) <= len(head):
            continue
        found.append(_Context(i, int(prompt_indices[i]), tokens, (len(head), len(body)), int(answer_ids[0])))
    return found


def pair_up(found: Sequence[_Context], max_pairs: int, seed: int) -> list[tuple[_Context, _Context]]:
    """Clean/corrupted pairs of token-aligned contexts with different first answer tokens:
    contexts are grouped by (length, span), shuffled with ``seed``, and each is paired with
    the next one in its group that answers differently; at most ``max_pairs``."""
    groups: dict[tuple[int, int, int], list[_Context]] = defaultdict(list)
    for c in found:
        groups[(len(c.tokens), *c.span)].append(c)
    rng = random.Random(stream_seed(seed, "patching"))
    pairs = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for n, clean in enumerate(members):
            partner = next(
                (c for c in members[n + 1 :] + members[:n] if c.answer_token != clean.answer_token), None
            )
            if partner is not None:
                pairs.append((clean, partner))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def _answer_ld(
    logits: Float[Tensor, "batch pos vocab"], a: Int[Tensor, " batch"], b: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    last = logits[:, -1].float()
    rows = torch.arange(len(a))
    return last[rows, a] - last[rows, b]


def _patch_at(value: Float[Tensor, "batch pos d"], mask: Bool[Tensor, "batch pos"]) -> object:
    def hook(x: Tensor, hook: HookPoint) -> Tensor:
        del hook
        keep = mask.to(x.device).unsqueeze(-1)
        return torch.where(keep, value.to(x.device, x.dtype), x)

    return hook


@torch.no_grad()
def patch_pairs(model: object, pairs: Sequence[tuple[_Context, _Context]], batch_size: int) -> pd.DataFrame:
    """The three logit differences of every pair at every block (``PAIR_COLUMNS``);
    ``model`` is a hooked TransformerLens model."""
    n_layers = int(model.cfg.n_layers)  # type: ignore[attr-defined]
    device = str(model.cfg.device or "cpu")  # type: ignore[attr-defined]
    rows = []
    by_length: dict[int, list[tuple[_Context, _Context]]] = defaultdict(list)
    for pair in pairs:
        by_length[len(pair[0].tokens)].append(pair)
    sites = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            clean = torch.tensor([c.tokens for c, _ in chunk], device=device)
            corrupt = torch.tensor([d.tokens for _, d in chunk], device=device)
            a = torch.tensor([c.answer_token for c, _ in chunk], device=device)
            b = torch.tensor([d.answer_token for _, d in chunk], device=device)
            mask = torch.zeros(clean.shape, dtype=torch.bool)
            for r, (c, _) in enumerate(chunk):
                mask[r, c.span[0] : c.span[1]] = True
            logits, cache = model.run_with_cache(clean, names_filter=sites)  # type: ignore[attr-defined]
            ld_clean = _answer_ld(logits, a, b)
            ld_corrupt = _answer_ld(model(corrupt), a, b)  # type: ignore[operator]
            for layer, site in enumerate(sites):
                patched = model.run_with_hooks(corrupt, fwd_hooks=[(site, _patch_at(cache[site], mask))])  # type: ignore[attr-defined]
                ld_patched = _answer_ld(patched, a, b)
                for r, (c, d) in enumerate(chunk):
                    rows.append(
                        {
                            "clean": c.sample,
                            "corrupt": d.sample,
                            "prompt_index": c.prompt_index,
                            "layer": layer,
                            "ld_clean": float(ld_clean[r]),
                            "ld_corrupt": float(ld_corrupt[r]),
                            "ld_patched": float(ld_patched[r]),
                        }
                    )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)
