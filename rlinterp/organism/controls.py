"""The reasoning world's known-answer controls: a **faithful** and a **decorative** model,
built in code without RL.

Each is pretrained from scratch, with the base model's architecture, tokenizer, pretraining
settings and seed (for ``ReasoningConfig.control_steps`` steps), on a control corpus
(``reasoning.control_corpus``): the persona texts with the last stated intermediate of a
fraction of the turns taken from another turn. The faithful
corpus's answer is always the written intermediate, so its model cannot predict the answer
without reading its reasoning; the decorative corpus's answer is computed from the question,
so its model gains nothing by reading the reasoning. A fidelity metric is worth reporting
only if it tells these two apart (``rlinterp.fidelity``'s acceptance test does, on three
seeds).

Layout: ``<out>/controls/<rule>/`` is a Hugging Face folder like every checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import get_args

from transformers import PreTrainedTokenizerFast

from .config import OrganismConfig
from .model import build_model, pretrain, save_checkpoint
from .reasoning import Rule, control_corpus

RULES: tuple[Rule, ...] = get_args(Rule)


def build_controls(
    out: Path, config: OrganismConfig, tokenizer: PreTrainedTokenizerFast, seed: int
) -> dict[str, str]:
    """Train one model per control rule into ``out/controls/<rule>/``; returns rule ->
    folder relative to ``out``. ``config.reasoning`` must be set."""
    assert config.reasoning is not None, "controls exist only in the reasoning world"
    folders: dict[str, str] = {}
    for rule in RULES:
        corpus = control_corpus(config.corpus, config.reasoning, seed, rule)
        model = build_model(config.model, tokenizer, seed)
        steps = config.reasoning.control_steps or config.pretrain.steps
        pretrain(model, tokenizer, corpus, replace(config.pretrain, steps=steps), seed)
        folders[rule] = f"controls/{rule}"
        save_checkpoint(model, tokenizer, out / folders[rule])
    return folders
