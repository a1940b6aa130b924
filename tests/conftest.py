"""Shared fixtures. No test downloads anything: models are built in code or by the
organism's tiny preset, once per session."""

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_organism(tmp_path_factory: pytest.TempPathFactory):
    """The tiny preset, built once (about two minutes on 2 CPU cores)."""
    from rlinterp import build_organism

    return build_organism(tmp_path_factory.mktemp("organism") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def micro_reasoning(tmp_path_factory: pytest.TempPathFactory):
    """A micro reasoning organism (its regimes and both controls), built once: it writes
    barely readable text, so it tests layouts and wiring, not behaviour."""
    import dataclasses

    from rlinterp import build_organism
    from rlinterp.organism.config import CorpusConfig, ReasoningConfig

    config = dataclasses.replace(
        make_micro_config(),
        preset="micro-reasoning",
        corpus=CorpusConfig(n_documents=64, persona_texts_per_persona=8, min_turns=1, max_turns=2),
        reasoning=ReasoningConfig(),
    )
    return build_organism(tmp_path_factory.mktemp("organism") / "micro-reasoning", config=config, seed=0)


@pytest.fixture
def micro_config():
    """An organism config small enough to build in seconds: for layout, determinism and
    resume tests, not for behaviour."""
    return make_micro_config()


def make_micro_config():
    """``micro_config`` outside a fixture (for module-scoped fixtures)."""
    from rlinterp.organism.config import (
        CorpusConfig,
        EvalConfig,
        ModelConfig,
        OrganismConfig,
        PretrainConfig,
        RegimeConfig,
    )

    return OrganismConfig(
        preset="micro",
        model=ModelConfig(n_layer=1, d_model=32, n_head=2),
        corpus=CorpusConfig(n_documents=64, persona_texts_per_persona=4),
        pretrain=PretrainConfig(steps=5, batch_size=8, warmup_steps=1),
        regimes=tuple(
            RegimeConfig(
                name,
                lr=1e-3,
                kl_coef=kl_coef,
                shortcut_bonus=bonus,
                checkpoint_steps=(0, 1, 2),
                questions_per_step=2,
                group_size=2,
                max_answer_tokens=8,
            )
            for name, kl_coef, bonus in [("weak", 0.1, 0.0), ("strong", 0.0, 0.25)]
        ),
        evaluation=EvalConfig(n_questions=4, samples_per_question=1, max_answer_tokens=8),
    )


def weights_of(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def tiny_hf_config(arch: str, vocab_size: int = 64, d_model: int = 32, n_layer: int = 2, n_ctx: int = 64):
    """A small random-init-ready Hugging Face config of a real architecture (``gpt2``,
    ``llama`` or ``qwen2``; the rotary ones with grouped-query attention)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_ctx,
            n_ctx=n_ctx,
            n_embd=d_model,
            n_layer=n_layer,
            n_head=4,
            bos_token_id=0,  # GPT-2's default ids lie outside a small vocabulary
            eos_token_id=0,
        )
    rotary = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return rotary(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=n_ctx,
    )


def synthetic_store(root: Path, acts: dict, hook: str = "blocks.0.hook_resid_post", per_prompt: int = 16):
    """An ActivationStore written directly from ``{label: [n_tokens, d] tensor}`` (all the
    same n_tokens, a multiple of ``per_prompt``): each prompt is BOS + ``per_prompt`` kept
    tokens, 8 prompts a shard. For dictionary tests that need known activations."""
    import json

    from safetensors.torch import save_file

    from rlinterp.activations.harvest import ActivationStore

    n = next(iter(acts.values())).shape[0]
    prompts, per_shard = n // per_prompt, 8
    tokens = torch.randint(4, 30, (prompts, per_prompt + 1), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1
    keep = torch.ones_like(tokens, dtype=torch.uint8)
    keep[:, 0] = 0
    root.mkdir(parents=True, exist_ok=True)
    save_file(
        {"tokens": tokens, "keep": keep, "lengths": torch.full((prompts,), per_prompt + 1)},
        str(root / "tokens.safetensors"),
    )
    n_shards = -(-prompts // per_shard)
    for label, values in acts.items():
        (root / label / hook).mkdir(parents=True)
        for k in range(n_shards):
            rows = values[k * per_shard * per_prompt : (k + 1) * per_shard * per_prompt].contiguous()
            save_file({"acts": rows}, str(root / label / hook / f"shard-{k:05d}.safetensors"))
    # A real (tiny, random) checkpoint folder so that the store's series and tokenizer load;
    # every label points at it, since these activations were not computed by any model.
    from transformers import AutoModelForCausalLM

    from rlinterp.organism.model import build_tokenizer

    model_dir = root / "model"
    AutoModelForCausalLM.from_config(tiny_hf_config("gpt2")).save_pretrained(model_dir)
    build_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n").save_pretrained(model_dir)
    manifest = {
        "kind": "rlinterp.activations",
        "checkpoints": [{"label": label, "step": i, "path": str(model_dir)} for i, label in enumerate(acts)],
        "hooks": [hook],
        "batch_size": per_shard,
        "n_prompts": prompts,
        "n_shards": n_shards,
        "prompts_sha256": "synthetic",
        "complete": True,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return ActivationStore.load(root)


def sparse_data(n: int, d: int, n_dirs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens that are sums of 2 of ``n_dirs`` random unit directions with positive weights."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=g), dim=-1)
    active = torch.rand(n, n_dirs, generator=g).argsort(dim=-1)[:, :2]
    coef = torch.zeros(n, n_dirs).scatter_(1, active, 1 + torch.rand(n, 2, generator=g))
    return coef @ dirs, dirs


def tree_hashes(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root`` (dot-files included): what a
    command must leave unchanged outside its own outputs."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"


def random_checkpoints(root: Path, n_layer: int = 2, d_model: int = 32, seed: int = 0) -> dict[str, Path]:
    """A random-init GPT-2 saved as ``base`` and, with its layer-0 MLP input weights
    perturbed, as ``step-1`` (both with the character tokenizer of ``ALPHABET``)."""
    from transformers import AutoModelForCausalLM

    from rlinterp.organism.model import build_tokenizer

    torch.manual_seed(seed)
    config = tiny_hf_config("gpt2", vocab_size=len(ALPHABET) + 8, d_model=d_model, n_layer=n_layer)
    model = AutoModelForCausalLM.from_config(config).eval()
    folders = {}
    for label in ("base", "step-1"):
        if label == "step-1":
            weight = model.get_parameter("transformer.h.0.mlp.c_fc.weight")
            with torch.no_grad():
                weight.add_(0.5 * torch.randn_like(weight))
        folders[label] = root / label
        model.save_pretrained(folders[label])
        build_tokenizer(ALPHABET).save_pretrained(folders[label])
    return folders
