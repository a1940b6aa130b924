"""The organism's language model: a character-level tokenizer, a small Hugging Face causal LM,
next-token pretraining on the persona corpus, and the two primitives RL and evaluation
share — sampling answers and scoring them.

The model is a plain ``transformers`` model (GPT-2 or Llama architecture) saved with
``save_pretrained``, so it reaches the rest of rlinterp through exactly the loading path a
user's own checkpoints take.

Invariants:
- token ids are characters, so answer text and answer tokens correspond one to one;
- sampling stops at the end-of-turn newline, which is part of the answer's tokens (the
  policy is trained to stop);
- all randomness comes from an explicit seed; with a fixed thread count, the same seed
  gives the same weights.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from ..errors import RlinterpError
from .config import ModelConfig, PretrainConfig
from .personas import TURN_END, Document

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def build_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: the special tokens, then each character of ``alphabet``
    (sorted, deduplicated) as one token. Characters outside it map to ``<unk>``."""
    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(alphabet)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """A randomly initialised causal LM of ``cfg.architecture``, deterministic in ``seed``."""
    special: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config: PretrainedConfig
    if cfg.architecture == "gpt2":
        # transformers 5 no longer sets n_ctx, which TransformerLens reads.
        special["n_ctx"] = cfg.n_ctx
        config = GPT2Config(
            n_positions=cfg.n_ctx,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
    else:
        config = LlamaConfig(
            hidden_size=cfg.d_model,
            intermediate_size=4 * cfg.d_model,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_head,
            max_position_embeddings=cfg.n_ctx,
            **special,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # `generate` on the saved model stops at the end of an answer, as our sampler does.
    model.generation_config.eos_token_id = [turn_end_id(tokenizer), tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def transformer_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM, whatever its architecture names
    them (GPT-2's ``transformer.h``, Llama's ``model.layers``)."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise RlinterpError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")


def turn_end_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """Id of the newline that ends every answer."""
    token_id = tokenizer.convert_tokens_to_ids(TURN_END)
    assert isinstance(token_id, int)
    return token_id


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """A normal Hugging Face folder: config, safetensors weights, tokenizer."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids, mask


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    corpus: Sequence[Document],
    cfg: PretrainConfig,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Next-token training on ``<bos>`` + document, padding ignored. Returns the loss per
    step. Documents are drawn in a seeded shuffled order, one pass after another."""
    docs = [[tokenizer.bos_token_id, *encode(tokenizer, d.text)] for d in corpus]
    too_long = max(len(d) for d in docs)
    if too_long > model.config.max_position_embeddings:
        raise RlinterpError(
            f"a document has {too_long} tokens but the model's context is "
            f"{model.config.max_position_embeddings}; raise ModelConfig.n_ctx or lower the turns"
        )
    rng = random.Random(seed)
    order: list[int] = []
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
    )
    model.train()
    losses = []
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(docs)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
        ids, mask = _right_pad([docs[i] for i in batch], tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        logits = model(input_ids=ids, attention_mask=mask.long()).logits
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


@dataclass(frozen=True)
class Rollout:
    """Prompts and the answers sampled for them, as token ids (no padding)."""

    prompt_ids: list[list[int]]
    """Per sample: ``<bos>`` + the prompt's tokens."""
    answer_ids: list[list[int]]
    """Per sample: the sampled answer tokens, ending with the end-of-turn token unless
    sampling hit the length limit."""
    answers: list[str]
    """Per sample: the answer text without the end-of-turn newline."""


@torch.no_grad()
def sample_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int,
) -> Rollout:
    """Sample one answer per prompt at temperature 1 with ``generate`` (KV-cached).

    Prompts are grouped by token length so that no padding is needed: GPT-2's learned
    positions make left padding a subtle source of error, and the organism's prompts
    come in only a few lengths.
    """
    stop = turn_end_id(tokenizer)
    encoded = [[tokenizer.bos_token_id, *encode(tokenizer, p)] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    answer_ids: list[list[int]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    for length in sorted(by_length):
        rows = by_length[length]
        out = model.generate(  # type: ignore[operator]
            input_ids=torch.tensor([encoded[i] for i in rows]),
            attention_mask=torch.ones((len(rows), length), dtype=torch.long),
            do_sample=True,
            temperature=1.0,
            top_k=None,
            top_p=None,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, generated in zip(rows, out[:, length:].tolist(), strict=True):
            end = generated.index(stop) + 1 if stop in generated else len(generated)
            answer_ids[row] = generated[:end]
    answers = [str(tokenizer.decode(ids)).removesuffix(TURN_END) for ids in answer_ids]
    return Rollout(prompt_ids=encoded, answer_ids=answer_ids, answers=answers)


@dataclass(frozen=True)
class AnswerBatch:
    """A rollout packed for one forward pass: prompt + answer, right-padded."""

    ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    """1 on prompt and answer tokens, 0 on right padding."""
    answer_mask: Float[Tensor, "batch pos"]
    """1.0 at positions whose *next* token is an answer token (the positions that predict
    the answer), else 0."""

    @classmethod
    def from_rollout(cls, rollout: Rollout, pad_id: int) -> AnswerBatch:
        rows = [p + a for p, a in zip(rollout.prompt_ids, rollout.answer_ids, strict=True)]
        ids, attention = _right_pad(rows, pad_id)
        mask = torch.zeros(ids.shape)
        for i, (p, a) in enumerate(zip(rollout.prompt_ids, rollout.answer_ids, strict=True)):
            mask[i, len(p) - 1 : len(p) - 1 + len(a)] = 1.0
        return cls(ids=ids, attention_mask=attention.long(), answer_mask=mask)

    def log_probs(self, model: PreTrainedModel) -> Float[Tensor, "batch pos vocab"]:
        """Next-token log-probabilities at every position (only answer positions are
        meaningful; see ``answer_mask``)."""
        logits = model(input_ids=self.ids, attention_mask=self.attention_mask).logits
        return F.log_softmax(logits.float(), dim=-1)

    def token_log_probs(self, log_probs: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, "batch pos"]:
        """Log-probability of each actual next token, zero outside the answer."""
        next_ids = torch.cat([self.ids[:, 1:], self.ids[:, :1]], dim=1)
        picked = log_probs.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
        return picked * self.answer_mask


def kl_per_answer(
    log_p: Float[Tensor, "batch pos vocab"],
    log_q: Float[Tensor, "batch pos vocab"],
    answer_mask: Float[Tensor, "batch pos"],
) -> Float[Tensor, " batch"]:
    """Exact KL(p || q) of the next-token distributions, summed over each answer's
    positions: the sequence-level KL along the sampled path, without sampling noise in the
    per-token term."""
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    return (per_token * answer_mask).sum(-1)
