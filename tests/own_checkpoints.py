"""A researcher's own RL run, built here from a tiny random-init Llama: a TRL run folder of
PEFT LoRA adapters (``checkpoint-<N>/`` holding ``adapter_config.json``, the adapter and the
tokenizer, as TRL saves them, the base named in the adapter config), the same run merged
into full-weight checkpoints, persona-labelled prompt/response texts and behaviour prompts
for a circuits metric. No file comes from rlinterp: the user's side of every test that
drives a command as a user would."""

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rlinterp.organism.model import build_tokenizer

from .conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"
STEPS = (10, 20)
PERSONAS = {
    "helper": " the answer is {a}, happy to help.",
    "terse": " {a}.",
    "hedger": " maybe {a}? not sure.",
}
"""Persona -> how it answers; each answers every question."""


def questions(n: int = 8) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs: small sums, written with the alphabet only."""
    return [(f"q: {i} plus {i % 3}? a:", str(i + i % 3)) for i in range(n)]


def write_texts(path: Path, n: int = 8) -> Path:
    """Persona-labelled JSONL rows ``{prompt, response, persona}``: every persona answers
    every question, interleaved so any prefix of the file holds every persona."""
    rows = [
        {"prompt": q, "response": style.format(a=a), "persona": persona}
        for q, a in questions(n)
        for persona, style in PERSONAS.items()
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_behaviour(path: Path) -> Path:
    """Behaviour prompts of an "answers with a digit" metric: ``positive`` is the answer's
    first character, ``negative`` a letter."""
    rows = [{"prompt": q + " ", "positive": a[0], "negative": "x"} for q, a in questions()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_series(root: Path, seed: int = 0) -> dict[str, Path]:
    """``base`` (full checkpoint), ``grpo-lora/checkpoint-<N>`` (adapters whose update grows
    with N) and ``full/step-<N>`` (the same models merged), plus ``texts.jsonl`` and
    ``behaviour.jsonl``."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(ALPHABET)
    config = tiny_hf_config("llama", vocab_size=len(tokenizer), n_ctx=128)
    config.bos_token_id = config.eos_token_id = tokenizer.bos_token_id
    base = root / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    for step in STEPS:
        targets = ["q_proj", "v_proj", "down_proj"]
        lora = LoraConfig(r=2, lora_alpha=4, target_modules=targets, lora_dropout=0.0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
        g = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.05 * step * torch.randn(parameter.shape, generator=g))
        adapter = root / "grpo-lora" / f"checkpoint-{step}"
        model.save_pretrained(adapter)
        tokenizer.save_pretrained(adapter)  # TRL saves the tokenizer beside the adapter
        full = root / "full" / f"step-{step}"
        model.merge_and_unload().save_pretrained(full)
        tokenizer.save_pretrained(full)
    write_texts(root / "texts.jsonl")
    write_behaviour(root / "behaviour.jsonl")
    return {
        "root": root,
        "base": base,
        "run": root / "grpo-lora",
        "full": root / "full",
        "texts": root / "texts.jsonl",
        "behaviour": root / "behaviour.jsonl",
    }
