"""On-policy tokens: every checkpoint answers the prompts itself, and the base model and that
checkpoint are both run on what it wrote.

Fixed prompts show how a checkpoint *reads* text the base model would write; what RL made
a checkpoint *do* shows on the tokens it writes itself. For each checkpoint ``c`` of a
series, ``sample`` draws ``samples_per_prompt`` answers to every prompt with
``transformers``' ``generate`` (temperature and length from ``SamplingConfig``); the
``prompt + answer`` texts become a ``PromptSet`` split at the answer, which ``harvest``
runs through the models ``[base, c]`` keeping only the answer tokens. So each checkpoint
gets its own activation store, in the usual shard layout, where the base and the
checkpoint are compared token by token on what the checkpoint actually says.

Layout of ``out/`` (``harvest_on_policy``):

- ``<label>/samples.parquet``: one row per sample (see ``SAMPLE_COLUMNS``), the answers'
  text and token ids, kept for the report;
- ``<label>/store/``: the activation store of ``[base, <label>]`` (``[base]`` for the base);
- ``manifest.json``: sampling config, prompts, checkpoints; written last.

Invariants:
- sampling is seeded per generation batch from ``seed`` alone, not from the checkpoint, so
  every checkpoint draws with the same random numbers (common random numbers) and
  differences between checkpoints come from the weights;
- memory is bounded by one generation batch (``batch_size`` prompts) and one harvest batch;
- prompts are grouped by token length before batching, so no prompt is padded (left
  padding shifts GPT-2's learned positions);
- a checkpoint whose samples and store are finished is reused; samples are reused only if
  the sampling fingerprint (config, prompts, weights) matches, and the store resumes shard
  by shard (``harvest``);
- a sample's text re-tokenized in the harvest may differ from the ids the model sampled
  (tokenizers that merge across the prompt/answer boundary); ``retokenized_exact`` says
  for each sample whether it round-trips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.artifacts import environment_versions, read_json_object, sha256_file, write_json, write_parquet
from ..core.reproducibility import stream_seed
from ..errors import RlinterpError
from ..models.series import Checkpoint, ModelSeries
from .config import SamplingConfig as SamplingConfig
from .harvest import ActivationStore, HarvestConfig, harvest
from .prompts import PromptSet

KIND = "rlinterp.onpolicy"
SAMPLE_COLUMNS = [
    "prompt_index",
    "sample",
    "prompt",
    "response",
    "response_ids",
    "n_tokens",
    "stopped",
    "retokenized_exact",
]
"""``samples.parquet``: the prompt's index in ``prompt_texts(prompts)``, the sample's number
for that prompt, the prompt and answer text, the sampled answer token ids (stop token
included), their count, whether sampling stopped at a stop token (else it hit
``max_new_tokens``), and whether the text re-tokenizes to the sampled ids."""


def prompt_texts(prompts: PromptSet) -> list[str]:
    """The prompt part of every text (up to its response split, or all of it), without
    duplicates, in first-seen order: what a checkpoint is asked to answer. (The organism's
    persona texts answer each question once per persona; sampling asks it once.)"""
    starts = prompts.response_starts or (None,) * len(prompts)
    heads = [
        text if start is None else text[:start] for text, start in zip(prompts.texts, starts, strict=True)
    ]
    return list(dict.fromkeys(heads))


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    *,
    greedy: bool = False,
) -> pd.DataFrame:
    """``cfg.samples_per_prompt`` answers to each of ``prompts`` (BOS prepended), as a table
    with ``SAMPLE_COLUMNS``, ordered by prompt then sample. ``greedy``: take the most likely
    token at every step instead (``temperature`` and more than one sample per prompt then add
    nothing): the forced answers of ``rlinterp.fidelity``."""
    if tokenizer.bos_token_id is None:
        raise RlinterpError("the tokenizer has no BOS token; rlinterp prepends one to every prompt")
    stops = _stop_ids(model, tokenizer)
    encoded = [[tokenizer.bos_token_id, *_encode(tokenizer, p)] for p in prompts]
    jobs = [(i, s) for i in range(len(prompts)) for s in range(cfg.samples_per_prompt)]
    by_length: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for job in jobs:
        by_length[len(encoded[job[0]])].append(job)
    device = next(model.parameters()).device
    context = _context_length(model)
    too_long = [i for i, ids in enumerate(encoded) if context is not None and len(ids) >= context]
    if too_long:
        raise RlinterpError(
            f"prompts {too_long[:5]} have {len(encoded[too_long[0]])}+ tokens, leaving no room to answer "
            f"in the model's context of {context}; shorten them"
        )
    rows: list[dict[str, Any]] = []
    batch_index = 0
    for length in sorted(by_length):
        group = by_length[length]
        # prompt and answer must fit the model's context (learned positions end there)
        budget = cfg.max_new_tokens if context is None else min(cfg.max_new_tokens, context - length)
        for start in range(0, len(group), cfg.batch_size):
            chunk = group[start : start + cfg.batch_size]
            torch.manual_seed(stream_seed(cfg.seed, "on-policy", str(batch_index)))
            batch_index += 1
            out = model.generate(  # type: ignore[operator]
                input_ids=torch.tensor([encoded[i] for i, _ in chunk], device=device),
                attention_mask=torch.ones((len(chunk), length), dtype=torch.long, device=device),
                do_sample=not greedy,
                temperature=None if greedy else cfg.temperature,
                top_k=None,
                top_p=None,
                max_new_tokens=budget,
                eos_token_id=sorted(stops) or None,
                pad_token_id=_pad_id(tokenizer, stops),
            )
            for (i, s), generated in zip(chunk, out[:, length:].tolist(), strict=True):
                rows.append(_sample_row(tokenizer, prompts[i], i, s, generated, stops))
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    return frame.sort_values(["prompt_index", "sample"], ignore_index=True)


def _context_length(model: PreTrainedModel) -> int | None:
    """The most positions ``model`` can read (GPT-2's ``n_positions``, Llama's
    ``max_position_embeddings``), or None when its config does not say."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _pad_id(tokenizer: PreTrainedTokenizerBase, stops: set[int]) -> int:
    """The tokenizer's pad id, else a stop token (padding only fills finished rows)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(stops) if stops else int(tokenizer.bos_token_id or 0)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids sampling stops at: the model's generation config (the organism stops at the
    end-of-turn newline) and the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _sample_row(
    tokenizer: PreTrainedTokenizerBase, prompt: str, i: int, s: int, generated: list[int], stops: set[int]
) -> dict[str, Any]:
    end = next((n + 1 for n, t in enumerate(generated) if t in stops), None)
    ids = generated[: end or len(generated)]
    response = str(tokenizer.decode(ids, skip_special_tokens=True))
    special = set(tokenizer.all_special_ids)
    return {
        "prompt_index": i,
        "sample": s,
        "prompt": prompt,
        "response": response,
        "response_ids": ids,
        "n_tokens": len(ids),
        "stopped": end is not None,
        "retokenized_exact": _encode(tokenizer, response) == [t for t in ids if t not in special],
    }


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def samples_prompt_set(samples: pd.DataFrame) -> PromptSet:
    """The samples as prompt + answer texts split at the answer (for ``harvest``). Empty
    answers (the model stopped at once, or wrote only special tokens) have no tokens to
    compare and are left out here; ``samples.parquet`` keeps them."""
    answered = samples[samples["response"].str.len() > 0]
    if answered.empty:
        raise RlinterpError(
            f"all {len(samples)} sampled answers are empty (the model stops at once); "
            "raise max_new_tokens or check the model's stop tokens"
        )
    texts = tuple(p + r for p, r in zip(answered["prompt"], answered["response"], strict=True))
    return PromptSet(
        texts,
        response_starts=tuple(len(p) for p in answered["prompt"]),
        labels={"prompt_index": tuple(str(i) for i in answered["prompt_index"])},
    )


@dataclass(frozen=True)
class OnPolicyStores:
    """Per checkpoint label: its samples and the store of [base, that checkpoint] on them."""

    root: Path
    stores: dict[str, ActivationStore]
    samples: dict[str, pd.DataFrame]

    @classmethod
    def load(cls, root: str | Path) -> OnPolicyStores:
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise RlinterpError(f"{root} holds no finished on-policy harvest (no manifest.json)")
        manifest = read_json_object(path, "harvest it again into a new directory")
        if manifest.get("kind") != KIND:
            raise RlinterpError(f"{path} is not an on-policy harvest manifest")
        labels = [c["label"] for c in manifest["checkpoints"]]
        return cls(
            root,
            {label: ActivationStore.load(root / label / "store") for label in labels},
            {label: pd.read_parquet(root / label / "samples.parquet") for label in labels},
        )


def harvest_on_policy(
    series: ModelSeries,
    prompts: PromptSet,
    out: str | Path,
    sampling: SamplingConfig | None = None,
    harvest_cfg: HarvestConfig | None = None,
) -> OnPolicyStores:
    """Sample every checkpoint of ``series`` on ``prompts`` and harvest ``[base, checkpoint]``
    on its answers (answer tokens only), into ``out`` (see the module docstring); resumes."""
    sampling = sampling or SamplingConfig()
    harvest_cfg = dataclasses.replace(harvest_cfg or HarvestConfig(), response_only=True)
    out = Path(out)
    series.validate()
    asked = prompt_texts(prompts)
    previous = out / "manifest.json"
    if previous.is_file():  # never take over another artifact's manifest
        try:
            kind = json.loads(previous.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != KIND:
            raise RlinterpError(
                f"{out} holds something other than an on-policy harvest; choose another --out"
            )
    previous.unlink(missing_ok=True)  # unfinished until rewritten at the end
    tokenizer = series.tokenizer()
    series.hook_map()  # found once: the sub-series below inherit it with the loaded models
    stores, samples = {}, {}
    for checkpoint in series:
        folder = out / checkpoint.label
        samples[checkpoint.label] = _samples(checkpoint, series, tokenizer, asked, sampling, folder)
        pair = (series.base,) if checkpoint.label == series.base.label else (series.base, checkpoint)
        # The sub-series shares the parent's loaded models, so the base is loaded once.
        sub = dataclasses.replace(series, checkpoints=pair)
        stores[checkpoint.label] = harvest(
            sub, samples_prompt_set(samples[checkpoint.label]), folder / "store", harvest_cfg
        )
    write_json(
        out / "manifest.json",
        {
            "kind": KIND,
            "checkpoints": series.describe(),
            "sampling": asdict(sampling),
            "n_prompts": len(asked),
            "prompts_sha256": hashlib.sha256(json.dumps(asked).encode()).hexdigest(),
            "harvest": asdict(harvest_cfg),
            "versions": environment_versions(),
        },
    )
    return OnPolicyStores(out, stores, samples)


def _samples(
    checkpoint: Checkpoint,
    series: ModelSeries,
    tokenizer: PreTrainedTokenizerBase,
    asked: list[str],
    cfg: SamplingConfig,
    folder: Path,
) -> pd.DataFrame:
    """The checkpoint's samples: reused from ``folder`` when the fingerprint matches."""
    fingerprint = {
        "sampling": asdict(cfg),
        "prompts_sha256": hashlib.sha256(json.dumps(asked).encode()).hexdigest(),
        "weights_sha256": _weights_digest(checkpoint.path),
        "dtype": str(series.dtype),
    }
    done = folder / "sampling.json"
    if done.is_file() and (folder / "samples.parquet").is_file():
        if read_json_object(done, f"delete {folder} to sample this checkpoint again") == fingerprint:
            return pd.read_parquet(folder / "samples.parquet")
        raise RlinterpError(
            f"{folder} holds samples drawn with another sampling config, prompt set or checkpoint; "
            "choose another output directory"
        )
    # The series' own model: the one the harvest then runs (loaded once for both).
    table = sample(series.model(checkpoint), tokenizer, asked, cfg)
    write_parquet(folder / "samples.parquet", table)
    write_json(done, fingerprint)  # after the samples: its presence means they are complete
    return pd.read_parquet(folder / "samples.parquet")  # the same types as a resumed run


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
