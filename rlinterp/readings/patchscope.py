"""Patchscope readings of a direction: what the base model says when a vector stands in for a
token (Ghandeharioun et al. 2024, "Patchscopes"; used on fine-tuning differences by Minder et
al. 2025).

A direction in the residual stream (a per-layer mean activation difference, a principal
component of the differences, any latent's decoder row) is read by *placing* it in the base
model: the residual stream at ``hook`` and at the last position of a fixed identity-style
prompt (``yes yes / no no / 1135 1135 / ?``: each line repeats its token, so the model is
primed to say what the last position holds) is replaced by the direction, scaled, and the
model runs on. The reading is the next-token distribution at that position (top tokens and
their probabilities) and a short greedy continuation with the patch held in place.

Scale: a direction has no norm of its own that means anything at another layer, so it is
normalised and patched at ``scale`` times the base's mean residual norm at ``hook`` on the
prompt (BOS excluded): scale 1 is a typical activation. Too small a scale lets the model's
own computation drown it, too large one leaves the model's range; several scales are read.

Beside it, the difference lens (``diff.outputs.logit_tokens`` of ``direction @ W_U``) reads
the same direction straight through the unembedding (no model computation after ``hook``):
the two agree where the direction is already written in output space, and the patchscope
also decodes directions that only later layers turn into tokens.

Invariants: the base's weights are not changed (the patch is a forward hook); every prompt
token is in the vocabulary (an unknown token is refused before any compute).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from ..diff.outputs import logit_tokens
from ..errors import RlinterpError
from .config import PatchscopeConfig as PatchscopeConfig

TABLE_COLUMNS = ["direction", "hook", "scale", "norm", "top_tokens", "top_probs", "continuation", "lens"]
"""One row per (direction, scale): the direction's name, the hook it was patched at, the
scale and the patched vector's norm, the ``top_k`` next tokens and their probabilities at
the patched position, the greedy continuation, and the tokens the difference lens says the
direction promotes (the same for every scale)."""


def unknown_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[str]:
    """The pieces of ``prompt`` that ``tokenizer`` encodes as its unknown token (none: [])."""
    encoded = tokenizer(prompt, add_special_tokens=False)
    unknown = tokenizer.unk_token_id
    spans = [encoded.token_to_chars(i) for i, t in enumerate(encoded["input_ids"]) if t == unknown]
    return sorted({prompt[s.start : s.end] for s in spans if s is not None}) if unknown is not None else []


def prompt_tokens(model: TransformerBridge, prompt: str) -> Tensor:
    """``[1, pos]`` ids of BOS + ``prompt``; an unknown token is refused with the text that made it."""
    tokenizer = model.tokenizer
    shown = unknown_text(tokenizer, prompt)
    if shown:
        raise RlinterpError(
            f"the patchscope prompt has text the tokenizer does not know ({shown}); write it with the "
            "model's own characters (patchscope.prompt)"
        )
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    return torch.tensor([[*([bos] if bos is not None else []), *ids]], device=model.cfg.device)


@torch.no_grad()
def mean_residual_norm(model: TransformerBridge, hook: str, tokens: Tensor) -> float:
    """The base's mean residual norm at ``hook`` over the prompt's positions (BOS excluded)."""
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return float(cache[hook][0, 1:].float().norm(dim=-1).mean())


@torch.no_grad()
def patchscope(
    model: TransformerBridge,
    directions: Mapping[str, Float[Tensor, " d_model"]],
    hook: str,
    cfg: PatchscopeConfig | None = None,
) -> pd.DataFrame:
    """Read each named direction at every scale of ``cfg`` by patching it into ``model`` at
    ``hook`` (see the module docstring); one row per (direction, scale), ``TABLE_COLUMNS``."""
    cfg = cfg or PatchscopeConfig()
    if not directions:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    tokens = prompt_tokens(model, cfg.prompt)
    typical = mean_residual_norm(model, hook, tokens)
    names, vectors = [], []
    for name, direction in directions.items():
        norm = float(direction.float().norm())
        if not norm > 0 or norm == float("inf"):
            raise RlinterpError(f"direction {name!r} has norm {norm}; it has nothing to read")
        for scale in cfg.scales:
            names.append((name, scale))
            vectors.append(direction.float() / norm * scale * typical)
    patched = torch.stack(vectors).to(model.cfg.device)
    position = tokens.shape[1] - 1

    def patch(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001 (TransformerLens' signature)
        activation[:, position] = patched.to(activation.dtype)
        return activation

    ids = tokens.expand(len(vectors), -1)
    first = None
    for _ in range(max(cfg.continuation, 1)):
        logits = model.run_with_hooks(ids, fwd_hooks=[(hook, patch)], return_type="logits")[:, -1].float()
        first = F.softmax(logits, dim=-1) if first is None else first
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert first is not None
    probs, top = first.topk(min(cfg.top_k, first.shape[-1]))
    generated = ids[:, tokens.shape[1] :] if cfg.continuation else ids[:, :0]
    tokenizer = model.tokenizer
    lens = _promoted(directions, model, cfg.top_k)
    rows = []
    for i, ((name, scale), vector) in enumerate(zip(names, vectors, strict=True)):
        rows.append(
            {
                "direction": name,
                "hook": hook,
                "scale": scale,
                "norm": float(vector.norm()),
                "top_tokens": [tokenizer.decode([int(t)]) for t in top[i]],
                "top_probs": probs[i].tolist(),
                "continuation": tokenizer.decode(generated[i].tolist()),
                "lens": lens[name],
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _promoted(
    directions: Mapping[str, Float[Tensor, " d_model"]], model: TransformerBridge, top_k: int
) -> dict[str, list[str]]:
    """Per direction, the ``top_k`` tokens it promotes read through ``W_U`` (the lens)."""
    stacked = torch.stack([d.float() for d in directions.values()]).to(model.W_U.device)
    read = logit_tokens(stacked @ model.W_U.float(), model.tokenizer, top_k)
    promoted = read[read["direction"] == "promoted"].sort_values(["latent", "rank"])
    return {
        name: [str(t) for t in promoted[promoted["latent"] == i]["token"]]
        for i, name in enumerate(directions)
    }
