"""Planted checkpoints: a tiny random-init Hugging Face GPT-2 and copies of it that differ in
exactly one MLP neuron, so that feature-tracking tests know their answer.

The base is a random-init GPT-2 (``tiny_hf_config``) with a character-level tokenizer (the
organism's ``build_tokenizer``), changed in one place: neuron ``NEURON`` of block ``LAYER``
reads a random direction ``w_in`` of the normalised residual stream with gain ``IN_GAIN``, its
bias set so that it fires on ``FIRING_FRACTION`` of the tokens of ``planted_prompts`` (which
tokens depends on the character and its position, so its activation varies continuously),
and it writes a random unit direction ``direction`` with an output norm set so that, where it
fires, its mean contribution to ``HOOK`` is ``CONTRIBUTION_RATIO`` times the RMS norm of the
rest of the residual stream there: a clear feature a small dictionary finds. Every other
weight is GPT-2's random initialisation (std 0.02), which is tiny next to it.

The checkpoints, each differing from the base in that neuron's output weights only (its
``mlp.c_proj.weight`` row), so it fires on exactly the same tokens in every one:

- ``amplified``: output scaled by ``AMPLIFY``;
- ``suppressed``: output scaled by ``SUPPRESS`` (weaker, not gone);
- ``rewired``: output replaced by the same norm along ``new_direction``, a unit vector
  orthogonal to ``direction`` (the *repurposed* feature: same inputs, new write);
- ``identical``: a byte-for-byte copy of the base's weights (the self-comparison control).

At ``HOOK`` (the residual stream right after the planted MLP) the neuron's contribution is
``activation * output row``, so ``direction`` / ``new_direction`` are the planted directions
in residual space. Everything is deterministic in ``seed`` at a fixed thread count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from rlinterp.activations.prompts import PromptSet
from rlinterp.organism.model import build_tokenizer

from .conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.?"
"""The tokenizer's characters (after the four special tokens)."""
D_MODEL, N_LAYER, N_CTX = 32, 2, 64
LAYER = 0
"""Block holding the planted neuron."""
NEURON = 17
"""Index of the planted neuron among the block's ``4 * D_MODEL`` MLP neurons."""
HOOK = f"blocks.{LAYER}.hook_resid_post"
"""Where the planted direction is read: the residual stream after the planted MLP."""
IN_GAIN = 3.0
"""Norm of the neuron's input weights: its pre-activation has a standard deviation of about
this on the normalised residual stream, so firing activations range over a few units."""
FIRING_FRACTION = 0.3
"""Fraction of the calibration tokens (BOS excluded) on which the neuron's pre-activation is
positive: frequent enough to be learnt from a few thousand tokens."""
CONTRIBUTION_RATIO = 2.0
"""Mean norm of the neuron's write where it fires, over the RMS norm of the residual
stream without it (measured on the same tokens)."""
AMPLIFY = 3.0
"""Factor on the amplified checkpoint's output weights."""
SUPPRESS = 0.3
"""Factor on the suppressed checkpoint's output weights."""
KINDS = ("amplified", "suppressed", "rewired", "identical")


@dataclass(frozen=True)
class PlantedModels:
    """The folders of a planted base and its one-neuron variants, with what was planted."""

    base: Path
    amplified: Path
    suppressed: Path
    rewired: Path
    identical: Path
    layer: int
    """Block of the planted neuron."""
    neuron: int
    """Index of the planted neuron in the block's MLP."""
    hook: str
    """Residual-stream hook right after the planted MLP."""
    amplify: float
    """Output factor of ``amplified``."""
    suppress: float
    """Output factor of ``suppressed``."""
    direction: Tensor
    """Unit ``[d_model]`` vector the neuron writes in the base, amplified and suppressed models."""
    new_direction: Tensor
    """Unit ``[d_model]`` vector it writes in ``rewired`` (orthogonal to ``direction``)."""
    output_norm: float
    """Norm of the neuron's output row in the base (and in ``rewired``)."""
    firing_fraction: float
    """Fraction of the calibration tokens on which the neuron fires (pre-activation > 0)."""

    def path(self, kind: str) -> Path:
        """The folder of ``"base"`` or one of ``KINDS``."""
        if kind != "base" and kind not in KINDS:
            raise ValueError(f"kind must be 'base' or one of {KINDS}, got {kind!r}")
        return Path(getattr(self, kind))


def planted_prompts(n: int = 256, seed: int = 0) -> PromptSet:
    """``n`` texts of random lowercase words (2 to 7 letters) with occasional punctuation,
    36 to 60 characters long (each character is a token; the context is ``N_CTX``)."""
    rng = random.Random(seed)
    letters = ALPHABET[:26]
    texts = []
    for _ in range(n):
        target, words = rng.randint(36, 60), []
        while sum(len(w) + 1 for w in words) < target:
            word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))
            words.append(word + (rng.choice(",.?") if rng.random() < 0.1 else ""))
        texts.append(" ".join(words)[:target])
    return PromptSet.from_list(texts)


def build_planted(root: Path, seed: int = 0) -> PlantedModels:
    """Build the base and the four variants under ``root`` (one folder each, with the
    tokenizer) and return their paths with the planted facts. About a second."""
    tokenizer = build_tokenizer(ALPHABET)
    config = tiny_hf_config("gpt2", vocab_size=len(tokenizer), d_model=D_MODEL, n_layer=N_LAYER, n_ctx=N_CTX)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
    assert isinstance(model, GPT2LMHeadModel)
    g = torch.Generator().manual_seed(seed + 1)
    w_in = torch.randn(D_MODEL, generator=g)
    w_in = w_in - w_in.mean()  # LayerNorm output has zero mean: that component reads nothing
    direction = torch.nn.functional.normalize(torch.randn(D_MODEL, generator=g), dim=0)
    new_direction = torch.randn(D_MODEL, generator=g)
    new_direction = new_direction - (new_direction @ direction) * direction  # exactly orthogonal
    new_direction = torch.nn.functional.normalize(new_direction, dim=0)

    mlp = model.transformer.h[LAYER].mlp
    tokens = planted_prompts(seed=seed).tokenize(tokenizer, N_CTX)
    with torch.no_grad():
        mlp.c_fc.weight[:, NEURON] = IN_GAIN * w_in / w_in.norm()
        mlp.c_fc.bias[NEURON] = 0.0
        mlp.c_proj.weight[NEURON] = 0.0
        pre, rest = _neuron_and_residual(model, tokens.tokens, tokens.keep)
        mlp.c_fc.bias[NEURON] = -torch.quantile(pre, 1 - FIRING_FRACTION)
        act = model.transformer.h[LAYER].mlp.act(pre + mlp.c_fc.bias[NEURON])
        fires = act > 0
        output_norm = CONTRIBUTION_RATIO * float(rest.pow(2).sum(-1).mean().sqrt() / act[fires].mean())
        mlp.c_proj.weight[NEURON] = output_norm * direction

    root.mkdir(parents=True, exist_ok=True)
    rows = {
        "base": output_norm * direction,
        "amplified": AMPLIFY * output_norm * direction,
        "suppressed": SUPPRESS * output_norm * direction,
        "rewired": output_norm * new_direction,
        "identical": output_norm * direction,
    }
    for kind, row in rows.items():
        with torch.no_grad():
            mlp.c_proj.weight[NEURON] = row
        model.save_pretrained(root / kind)
        tokenizer.save_pretrained(root / kind)
    return PlantedModels(
        **{kind: root / kind for kind in rows},
        layer=LAYER,
        neuron=NEURON,
        hook=HOOK,
        amplify=AMPLIFY,
        suppress=SUPPRESS,
        direction=direction,
        new_direction=new_direction,
        output_norm=output_norm,
        firing_fraction=float(fires.float().mean()),
    )


@torch.no_grad()
def _neuron_and_residual(model: GPT2LMHeadModel, tokens: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The planted neuron's pre-activation and the residual stream at ``HOOK`` (with the
    neuron's output row zeroed by the caller) on the kept tokens."""
    captured: dict[str, Tensor] = {}

    def keep_output(name: str):
        # A block returns its hidden states, or a tuple starting with them (older transformers).
        return lambda _m, _i, out: captured.__setitem__(name, out if isinstance(out, Tensor) else out[0])

    block = model.transformer.h[LAYER]
    handles = [
        block.mlp.c_fc.register_forward_hook(keep_output("pre")),
        block.register_forward_hook(keep_output("resid")),
    ]
    try:
        model(input_ids=tokens)  # right padding: causal attention keeps it from earlier tokens
    finally:
        for handle in handles:
            handle.remove()
    return captured["pre"][..., NEURON][keep], captured["resid"][keep]


@torch.no_grad()
def neuron_activations(path: Path, prompts: PromptSet) -> Tensor:
    """The planted neuron's activation on every kept token of ``prompts`` (BOS excluded),
    in store order, computed with plain ``transformers`` (an independent reference)."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokens = prompts.tokenize(tokenizer, N_CTX)
    pre, _ = _neuron_and_residual(model, tokens.tokens, tokens.keep)
    block = model.transformer.h[LAYER]
    return block.mlp.act(pre)
