"""Planted checkpoint series with a known selection-or-novelty answer, on tiny random-init
GPT-2-, Llama- and Qwen2-style Hugging Face models.

Built with plain ``transformers`` and forward hooks only, independently of the code that
reads them (``rlinterp.selection``). Each checkpoint is the base with some of the edits
below applied to its weights; the answer follows from what each edit computes:

- ``new_computation(layer)``: two MLP neurons (GPT-2: four) of block ``layer`` rewired to
  write a function of two random projections of the block's MLP input that nothing in the
  base computes, along a random unit direction ``u``: for the gated MLPs (Llama, Qwen2) the
  product ``z1 * z2`` (a pair of neurons with opposite gates: ``silu(g z) - silu(-g z) = g
  z``), for GPT-2 the sign-XOR ``|z1 + z2| - |z1 - z2|`` (``gelu(g w) + gelu(-g w) ~ g |w|``
  for a large gain). The projections are centred and scaled to unit variance on the
  calibration texts, so neither has a linear part: **novelty**, located at ``layer``.
- ``reweight_context(layer)``: block ``layer``'s attention output matrix gains the rank-one
  term ``c d v^T``: ``d`` is the base's persona direction in the residual stream after the
  block (mean over persona ``p``'s tokens minus persona ``q``'s), ``v`` the same contrast
  in the attention's head outputs (its ``o_proj`` input), with the overall mean removed so
  that ``v . z`` is zero on average. It pushes the base's own persona direction up on one
  persona's tokens and down on the other's, and the mean shift cancels: **selection**.
- ``amplify_neuron(layer, neuron)`` / ``amplify_head(layer, head)``: one existing MLP
  neuron's output (its ``c_proj`` row / ``down_proj`` column) or one head's slice of the
  attention output matrix scaled by ``factor``: a re-weighting of something the base
  computes, whatever a dictionary of the base has latents for: **selection**.

The base is the architecture's random initialisation with every linear map rescaled to
standard deviation ``1 / sqrt(fan_in)`` and unit-variance embeddings, so that its neurons
work in their non-linear range and its attention is not uniform (the 0.02 default leaves a
random model nearly linear, where "new computation" would mean little). The texts are two
personas' turns: the prompt is written with the persona's own letters and the response with
all letters, slightly biased to the persona's, so the persona is carried to the response
tokens by the context (attention) more than by the current token.

Strengths are relative to the residual stream's RMS norm at the edited block on the
response tokens; ``write_rms`` is the RMS norm of the edit's direct write there.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from rlinterp.activations.prompts import PromptSet
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config

ARCHS = ("gpt2", "llama", "qwen2")
ALPHABET = "abcdefghijklmnopqrstuvwxyz :"
PERSONA_LETTERS = {"p": "abcdefghijklm", "q": "nopqrstuvwxyz"}
D_MODEL, N_CTX = 32, 64
GAIN = 20.0
"""Input gain of rewired neurons: GELU / SiLU of a large input act as ReLU."""


def persona_texts(n_per_persona: int = 64, seed: int = 0) -> PromptSet:
    """Texts of personas ``p`` and ``q`` (label ``persona``): a prompt of four to six words in
    the persona's letters and ``": "``, then a response of words over the whole alphabet, two
    thirds of its letters from the persona's half. 40 to 60 characters in all."""
    rng = random.Random(seed)
    rows = []
    for persona, own in PERSONA_LETTERS.items():
        for _ in range(n_per_persona):
            prompt = " ".join(_word(rng, own) for _ in range(rng.randint(2, 3))) + ": "
            response, target = "", rng.randint(40, 56) - len(prompt)
            while len(response) < target:
                letters = own if rng.random() < 2 / 3 else ALPHABET[:26]
                response += _word(rng, letters) + " "
            rows.append({"prompt": prompt, "response": response[:target].strip() or "a", "persona": persona})
    return PromptSet.from_records(rows, source="planted persona texts")


def _word(rng: random.Random, letters: str) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(2, 6)))


# -- the base ------------------------------------------------------------------------------


def base_model(arch: str, n_layer: int = 2, seed: int = 0) -> PreTrainedModel:
    """A random-init model of ``arch`` with standard-scale weights (see the module docstring)."""
    tokenizer = build_tokenizer(ALPHABET)
    config = tiny_hf_config(arch, vocab_size=len(tokenizer), d_model=D_MODEL, n_layer=n_layer, n_ctx=N_CTX)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias") or "norm" in name or "ln_" in name:
                    continue
                if "wte" in name or "embed_tokens" in name or "wpe" in name or "lm_head" in name:
                    param.normal_(0.0, 1.0 if "wpe" not in name else 0.3)
                    continue
                fan_in = param.shape[0] if arch == "gpt2" else param.shape[1]  # Conv1D is [in, out]
                param.normal_(0.0, 1 / math.sqrt(fan_in))
    return model


def save(model: PreTrainedModel, path: Path) -> Path:
    model.save_pretrained(path)
    build_tokenizer(ALPHABET).save_pretrained(path)
    return path


# -- what a model computes, read with forward hooks ------------------------------------------


@dataclass(frozen=True)
class Parts:
    """The modules of one block that the edits read and write."""

    block: nn.Module
    mlp_in: nn.Module
    """Its output is the MLP's input (the second norm)."""
    attn_out: nn.Module
    """The attention output projection; its input is the heads' outputs ``z``."""
    mlp: nn.Module


def parts(model: PreTrainedModel, layer: int) -> Parts:
    inner: Any = model
    if hasattr(inner, "transformer"):
        block = inner.transformer.h[layer]
        return Parts(block, block.ln_2, block.attn.c_proj, block.mlp)
    block = inner.model.layers[layer]
    return Parts(block, block.post_attention_layernorm, block.self_attn.o_proj, block.mlp)


@dataclass(frozen=True)
class Reading:
    """A model's activations at one block on the kept (response) tokens of some texts."""

    resid: Tensor
    """``[token, d]``: the residual stream after the block."""
    mlp_in: Tensor
    """``[token, d]``: the MLP's (normalised) input."""
    z: Tensor
    """``[token, d]``: the heads' outputs, the attention output projection's input."""
    persona: list[str]
    """Per token, its text's persona."""


@torch.no_grad()
def read(model: PreTrainedModel, texts: PromptSet, layer: int) -> Reading:
    """``Reading`` of ``model`` at block ``layer`` on the response tokens of ``texts``."""
    tokenizer = build_tokenizer(ALPHABET)
    p = parts(model, layer)
    seen: dict[str, Tensor] = {}

    def output(name: str) -> Callable[..., None]:
        return lambda _m, _i, out: seen.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    def inputs(name: str) -> Callable[..., None]:
        return lambda _m, args: seen.__setitem__(name, args[0])

    handles = [
        p.block.register_forward_hook(output("resid")),
        p.mlp_in.register_forward_hook(output("mlp_in")),
        p.attn_out.register_forward_pre_hook(inputs("z")),
    ]
    rows: dict[str, list[Tensor]] = {"resid": [], "mlp_in": [], "z": []}
    persona: list[str] = []
    try:
        for text, start, label in zip(
            texts.texts, texts.response_starts or (), texts.labels["persona"], strict=True
        ):
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
            n_prompt = 1 + len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
            model(input_ids=torch.tensor([ids]))
            for name in rows:
                rows[name].append(seen[name][0, n_prompt:])
            persona += [label] * (len(ids) - n_prompt)
    finally:
        for handle in handles:
            handle.remove()
    return Reading(**{k: torch.cat(v) for k, v in rows.items()}, persona=persona)


def rms(x: Tensor) -> float:
    return float(x.pow(2).sum(-1).mean().sqrt())


# -- the edits ------------------------------------------------------------------------------

Edit = Callable[[PreTrainedModel, PromptSet], float]
"""Changes a model in place, reading the *base* activations it needs on the calibration
texts; returns the RMS norm of its direct write relative to the residual's."""


def _is_gpt2(model: PreTrainedModel) -> bool:
    return hasattr(model, "transformer")


def _unit(x: Tensor) -> Tensor:
    return x / x.norm()


def _centred_projections(x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two random directions ``a, b`` of the MLP input orthogonal to its mean, and the
    offsets/scales that make ``(a . x - m) / s`` zero-mean and unit-variance on ``x``."""
    mean = x.mean(0)
    dirs = torch.randn(2, x.shape[1], generator=g)
    dirs = dirs - (dirs @ _unit(mean)).unsqueeze(1) * _unit(mean)
    proj = x @ dirs.T
    return dirs[0], dirs[1], proj.mean(0), proj.std(0)


def new_computation(layer: int, strength: float = 0.5, seed: int = 0) -> Edit:
    """See the module docstring: a function of two projections that the base lacks, written
    along a random direction, from rewired neurons of block ``layer``'s MLP."""

    def edit(model: PreTrainedModel, calib: PromptSet) -> float:
        g = torch.Generator().manual_seed(1000 + seed + layer)
        reading = read(model, calib, layer)
        a, b, m, s = _centred_projections(reading.mlp_in, g)
        z1, z2 = (reading.mlp_in @ a - m[0]) / s[0], (reading.mlp_in @ b - m[1]) / s[1]
        u = _unit(torch.randn(D_MODEL, generator=g))
        mlp: Any = parts(model, layer).mlp
        value = (z1 + z2).abs() - (z1 - z2).abs() if _is_gpt2(model) else z1 * z2
        scale = strength * rms(reading.resid) / float(value.pow(2).mean().sqrt())
        with torch.no_grad():
            if _is_gpt2(model):
                # |w| ~ (gelu(G w) + gelu(-G w)) / G; w = z1 + z2 and z1 - z2, each with both signs.
                for i, (sign, mix) in enumerate([(1, 1), (-1, 1), (1, -1), (-1, -1)]):
                    read_dir = a / s[0] + mix * b / s[1]
                    offset = m[0] / s[0] + mix * m[1] / s[1]
                    mlp.c_fc.weight[:, i] = sign * GAIN * read_dir
                    mlp.c_fc.bias[i] = -sign * GAIN * offset
                    mlp.c_proj.weight[i] = mix * scale / GAIN * u
            else:
                # silu(G z1) - silu(-G z1) = G z1, times the up projection z2.
                for i, sign in enumerate([1, -1]):
                    mlp.gate_proj.weight[i] = sign * GAIN * a / s[0]
                    mlp.up_proj.weight[i] = b / s[1]
                    mlp.down_proj.weight[:, i] = sign * scale / GAIN * u
        return strength

    return edit


def persona_contrast(values: Tensor, persona: Sequence[str]) -> Tensor:
    """Mean over persona ``p``'s tokens minus the mean over ``q``'s."""
    is_p = torch.tensor([x == "p" for x in persona])
    return values[is_p].mean(0) - values[~is_p].mean(0)


def reweight_context(layer: int, strength: float = 0.5) -> Edit:
    """See the module docstring: the base's persona direction pushed up on one persona's
    tokens and down on the other's, through the attention output matrix."""

    def edit(model: PreTrainedModel, calib: PromptSet) -> float:
        reading = read(model, calib, layer)
        d = _unit(persona_contrast(reading.resid, reading.persona))
        v = persona_contrast(reading.z, reading.persona)
        mean = reading.z.mean(0)
        v = v - (v @ mean) / (mean @ mean) * mean  # v . z is zero on average: the mean cancels
        signal = reading.z @ v
        c = strength * rms(reading.resid) / float(signal.pow(2).mean().sqrt())
        out: Any = parts(model, layer).attn_out
        with torch.no_grad():
            if _is_gpt2(model):
                out.weight += c * torch.outer(v, d)  # Conv1D: [in, out]
            else:
                out.weight += c * torch.outer(d, v)
        return strength

    return edit


def neuron_writes(model: PreTrainedModel, layer: int) -> Tensor:
    """``[neuron, d]``: each MLP neuron's output direction (unnormalised)."""
    mlp: Any = parts(model, layer).mlp
    return (mlp.c_proj.weight if _is_gpt2(model) else mlp.down_proj.weight.T).detach().clone()


def amplify_neuron(layer: int, neuron: int, factor: float = 3.0) -> Edit:
    """Neuron ``neuron`` of block ``layer``'s MLP writes ``factor`` times as much."""

    def edit(model: PreTrainedModel, _calib: PromptSet) -> float:
        mlp: Any = parts(model, layer).mlp
        with torch.no_grad():
            if _is_gpt2(model):
                mlp.c_proj.weight[neuron] *= factor
            else:
                mlp.down_proj.weight[:, neuron] *= factor
        return factor

    return edit


def amplify_head(layer: int, head: int, factor: float = 2.0) -> Edit:
    """Head ``head`` of block ``layer`` writes ``factor`` times as much."""

    def edit(model: PreTrainedModel, _calib: PromptSet) -> float:
        out: Any = parts(model, layer).attn_out
        d_head = D_MODEL // model.config.num_attention_heads
        heads = slice(head * d_head, (head + 1) * d_head)
        with torch.no_grad():
            if _is_gpt2(model):
                out.weight[heads] *= factor
            else:
                out.weight[:, heads] *= factor
        return factor

    return edit


def build_series(
    root: Path, base: PreTrainedModel, steps: Sequence[Sequence[Edit]], calib: PromptSet
) -> list[Path]:
    """Save ``base`` as ``root/base`` and, for each entry of ``steps``, a copy of the base with
    those edits applied (in order, each calibrated on the base's activations at that point)
    as ``root/step-<i>`` (``i`` from 1). Returns the folders, base first."""
    folders = [save(base, root / "base")]
    for i, edits in enumerate(steps, start=1):
        model = copy.deepcopy(base)
        for edit in edits:
            edit(model, calib)
        folders.append(save(model, root / f"step-{i}"))
    return folders
