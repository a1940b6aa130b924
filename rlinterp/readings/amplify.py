"""Amplified sampling: what the RL change does to behaviour, exaggerated.

For a checkpoint ``c`` of a series and a factor ``alpha``, the amplified model has every
parameter ``base + alpha * (c - base)``: alpha 0 is the base, 1 the checkpoint, 2 and 4
push twice and four times as far along the RL update (0.5 half way). A LoRA adapter
checkpoint is read as its merged model (``models.adapters.merged_model``), so its
amplified model is the base plus ``alpha`` times the adapter's update ``s * B A``: the
adapter scaled. Each amplified model answers the prompts through the on-policy sampler
(``activations.onpolicy.sample``), and every answer is scored by the base model: the
per-token log-probability of what it wrote, under the base (how unlike the base's own
writing the exaggerated behaviour is). On the organism the answers are its behaviour
questions, and each (checkpoint, alpha) gets the behaviour table's columns (persona
shares, ``none``, reward under the regime's reward; ``organism.behaviour.score_answers``).

Invariants:
- parameters are interpolated with ``torch.lerp`` in float64 and cast back to the series'
  dtype, so alpha 0 gives the base's parameters and alpha 1 the checkpoint's, bit for bit;
  with the sampler's common random numbers (every generation batch seeded from the seed
  alone), alpha 0's answers are the base's and alpha 1's the checkpoint's, exactly;
- ``preflight`` checks every (checkpoint, alpha, parameter) for NaN/Inf in the load dtype
  before anything is sampled, and names the first that fails;
- alpha 0 is the base whichever checkpoint is amplified: its answers are drawn once per call
  and shared by every checkpoint's rows;
- memory: the base's parameters, one checkpoint's and the working model;
- resumable: each checkpoint's answers are written to ``<out>/<label>.parquet`` once all its
  alphas are done and reused when the fingerprint (config, prompts, weights) matches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..activations.onpolicy import sample
from ..core import rundir
from ..core.artifacts import environment_versions, weights_sha256, write_parquet
from ..errors import RlinterpError
from ..models.adapters import is_adapter, merged_model
from ..models.series import Checkpoint, ModelSeries
from ..organism.behaviour import score_answers
from ..organism.layout import Organism
from ..organism.model import AnswerBatch, Rollout
from ..organism.personas import TURN_END
from ..organism.rl import world_task
from .config import AmplifyConfig as AmplifyConfig

KIND = rundir.Kind("rlinterp.amplified", "amplified sampling")
SAMPLE_COLUMNS = ["label", "step", "alpha", "prompt_index", "sample", "prompt", "response", "n_tokens"]
SAMPLE_COLUMNS += ["stopped", "base_logprob", "base_logprob_mean", "response_ids", "base_token_logprobs"]
"""``samples.parquet``: checkpoint label and step, alpha, the on-policy sampler's columns
(``activations.onpolicy.SAMPLE_COLUMNS`` less ``retokenized_exact``), the answer's summed and
per-token mean log-prob under the base, and the per-token log-probs themselves."""
TABLE_COLUMNS = ["label", "step", "alpha", "n_answers", "base_logprob_mean", "answer_tokens", "stopped"]
"""``table.parquet``, one row per (checkpoint, alpha): answers, their mean per-token log-prob
under the base, mean length in tokens, share that stopped at a stop token; on the organism
also the behaviour table's columns (``reward``, ``accuracy``, ``share_*``, ``answer_length``,
``rule_accuracy``)."""


@dataclass(frozen=True)
class AmplifiedSamples:
    """The answers of every amplified model, and their summary per (checkpoint, alpha)."""

    samples: pd.DataFrame
    """One row per answer (``SAMPLE_COLUMNS``)."""
    table: pd.DataFrame
    """One row per (checkpoint, alpha) (``TABLE_COLUMNS``, plus behaviour columns on the organism)."""

    @classmethod
    def load(cls, root: str | Path) -> AmplifiedSamples:
        root = Path(root)
        rundir.read_finished(root, KIND, "run the amplified sampling again")
        return cls(pd.read_parquet(root / "samples.parquet"), pd.read_parquet(root / "table.parquet"))


def _parameters(model: PreTrainedModel) -> dict[str, Tensor]:
    """Every parameter once (tied ones under their first name), copied to the CPU as stored."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


def _load(checkpoint: Checkpoint, series: ModelSeries) -> PreTrainedModel:
    """The checkpoint as a plain ``transformers`` model in the series' dtype (an adapter merged
    into the base), on the series' device."""
    if is_adapter(checkpoint.path):
        return merged_model(series.base.path, checkpoint.path, series.load_dtype, series.device)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=series.load_dtype)
    return model.to(series.device).eval()  # type: ignore[arg-type]


def amplified(base: Tensor, post: Tensor, alpha: float) -> Tensor:
    """``base + alpha * (post - base)`` in float64 (``torch.lerp``: exact at alpha 0, the base,
    and 1, the checkpoint; a large alpha overflows only when cast back)."""
    return torch.lerp(base.double(), post.double(), alpha)


def _check_finite(
    base: dict[str, Tensor], post: dict[str, Tensor], alphas: Sequence[float], dtype: torch.dtype, label: str
) -> None:
    for alpha in alphas:
        for name, value in base.items():
            moved = amplified(value, post[name], alpha)
            if not torch.isfinite(moved.to(dtype)).all():
                largest = moved.abs().max().item()
                raise RlinterpError(
                    f"alpha {alpha:g} makes parameter {name} of {label} non-finite in "
                    f"{str(dtype).removeprefix('torch.')} (largest magnitude {largest:.3g}); "
                    "leave that alpha out or load the series in float32"
                )


def preflight(series: ModelSeries, alphas: Sequence[float], checkpoints: Sequence[Checkpoint]) -> None:
    """Raise ``RlinterpError`` naming the alpha, parameter and checkpoint if any amplified
    model of ``checkpoints`` would hold a NaN or Inf weight in the series' dtype."""
    base = _parameters(_load(series.base, series))
    for checkpoint in checkpoints:
        post = _parameters(_load(checkpoint, series))
        if post.keys() != base.keys():
            raise RlinterpError(
                f"{checkpoint.label} has other parameters than the base; it cannot be amplified"
            )
        _check_finite(base, post, alphas, series.load_dtype, checkpoint.label)


def amplified_models(
    series: ModelSeries, checkpoint: Checkpoint, alphas: Sequence[float]
) -> Iterator[tuple[float, PreTrainedModel]]:
    """``(alpha, model)`` for each alpha: one working model whose parameters are set to the
    amplified ones in turn (the same object each time: use it before the next)."""
    model = _load(series.base, series)
    base = _parameters(model)
    post = _parameters(_load(checkpoint, series))
    parameters = dict(model.named_parameters())
    for alpha in alphas:
        with torch.no_grad():
            for name, value in base.items():
                parameters[name].copy_(amplified(value, post[name], alpha).to(parameters[name].dtype))
        yield alpha, model


@torch.no_grad()
def base_log_probs(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, answers: pd.DataFrame, batch_size: int
) -> list[list[float]]:
    """Per answer (rows of a sampler table): the log-prob under ``base`` of each answer token
    given the prompt (BOS prepended) and the answer before it."""
    assert tokenizer.bos_token_id is not None  # the sampler checked
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id)
    out: list[list[float]] = []
    for start in range(0, len(answers), batch_size):
        chunk = answers.iloc[start : start + batch_size]
        prompts = [
            [tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]]
            for p in chunk["prompt"]
        ]
        ids = [list(map(int, a)) for a in chunk["response_ids"]]
        batch = AnswerBatch.from_rollout(Rollout(prompts, ids, list(chunk["response"])), pad)
        picked = batch.token_log_probs(batch.log_probs(base))
        out += [
            picked[i, len(p) - 1 : len(p) - 1 + len(a)].tolist()
            for i, (p, a) in enumerate(zip(prompts, ids, strict=True))
        ]
    return out


def _amplify_checkpoint(
    series: ModelSeries,
    checkpoint: Checkpoint,
    prompts: list[str],
    cfg: AmplifyConfig,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    base_answers: pd.DataFrame | None,
) -> pd.DataFrame:
    """Every alpha's answers for ``checkpoint`` (alpha 0's are ``base_answers`` when given)."""
    frames = []
    for alpha, model in amplified_models(series, checkpoint, cfg.alphas):
        if alpha == 0 and base_answers is not None:  # the base, whichever checkpoint: drawn once
            frames.append(base_answers.assign(label=checkpoint.label, step=checkpoint.step))
            continue
        answers = sample(model, tokenizer, prompts, cfg.sampling)
        scores = base_log_probs(base, tokenizer, answers, cfg.sampling.batch_size)
        answers["base_token_logprobs"] = scores
        answers["base_logprob"] = [sum(s) for s in scores]
        answers["base_logprob_mean"] = [sum(s) / len(s) if s else math.nan for s in scores]
        frames.append(answers.assign(label=checkpoint.label, step=checkpoint.step, alpha=alpha))
    return pd.concat(frames, ignore_index=True)[SAMPLE_COLUMNS]


def summarize(
    samples: pd.DataFrame, organism: Organism | None = None, regime: str | None = None
) -> pd.DataFrame:
    """``TABLE_COLUMNS`` per (checkpoint, alpha) of ``samples``; with an organism and its
    regime, the behaviour columns too (the prompts must be the organism's questions)."""
    questions = organism.eval_questions() if organism is not None else None
    reward = organism.regime_config(regime) if organism is not None and regime is not None else None
    task = None if organism is None else world_task(organism.reasoning, organism.max_operand)
    rows = []
    for (label, step, alpha), group in samples.groupby(["label", "step", "alpha"], sort=False):
        tokens = group["n_tokens"].sum()
        row: dict[str, Any] = {
            "label": label,
            "step": step,
            "alpha": alpha,
            "n_answers": len(group),
            "base_logprob_mean": group["base_logprob"].sum() / tokens if tokens else math.nan,
            "answer_tokens": group["n_tokens"].mean(),
            "stopped": group["stopped"].mean(),
        }
        if questions is not None and reward is not None:
            asked = [questions[i] for i in group["prompt_index"]]
            # the sampler's text ends with the stop token; the organism's answers do not
            ends = zip(group["response"], group["stopped"], strict=True)
            answers = [text.removesuffix(TURN_END) if stopped else text for text, stopped in ends]
            row |= score_answers(asked, answers, reward, task)
        rows.append(row)
    return pd.DataFrame(rows)


def amplify(
    series: ModelSeries,
    prompts: Sequence[str],
    out: str | Path,
    cfg: AmplifyConfig | None = None,
    organism: Organism | None = None,
    regime: str | None = None,
    *,
    force: bool = False,
) -> AmplifiedSamples:
    """Sample every amplified model of ``series`` (its RL checkpoints, or the last, times
    ``cfg.alphas``) on ``prompts`` into ``out`` (see the module docstring); resumes. With
    ``organism`` and ``regime``, ``prompts`` should be ``organism.question_prompts()``
    and the table gets the behaviour columns."""
    cfg = cfg or AmplifyConfig()
    if (organism is None) != (regime is None):
        raise RlinterpError("give both the organism and its regime (for the behaviour columns), or neither")
    if organism is not None and list(prompts) != organism.question_prompts():
        raise RlinterpError(
            "on the organism, amplified models answer its behaviour questions (question_prompts())"
        )
    rest = series.checkpoints[1:]
    if not rest:
        raise RlinterpError("the series has no RL checkpoint to amplify")
    chosen = rest[-1:] if cfg.checkpoints == "last" else rest
    series.validate()
    out = Path(out)
    fingerprint = {
        "config": asdict(cfg),
        "prompts": list(prompts),
        "dtype": str(series.load_dtype),
        **{f"weights of {c.label}": weights_sha256(c.path) for c in (series.base, *chosen)},
        "regime": regime,
    }
    entries = {f"{c.label}.parquet" for c in chosen} | {"samples.parquet", "table.parquet"}
    claimed = rundir.claim(out, KIND, fingerprint, entries, resumable=entries, force=force)
    if claimed.manifest is not None:
        return AmplifiedSamples.load(out)
    todo = [c for c in chosen if not (out / f"{c.label}.parquet").is_file()]
    if todo:
        preflight(series, cfg.alphas, todo)
        tokenizer = series.tokenizer()
        base = _load(series.base, series)
        base_answers = None
        for checkpoint in todo:
            answers = _amplify_checkpoint(
                series, checkpoint, list(prompts), cfg, base, tokenizer, base_answers
            )
            write_parquet(out / f"{checkpoint.label}.parquet", answers)
            base_answers = answers[answers["alpha"] == 0]
    samples = pd.concat([pd.read_parquet(out / f"{c.label}.parquet") for c in chosen], ignore_index=True)
    result = AmplifiedSamples(samples, summarize(samples, organism, regime))
    write_parquet(out / "samples.parquet", result.samples)
    write_parquet(out / "table.parquet", result.table)
    rundir.finish(
        out,
        KIND,
        {"config": asdict(cfg), "checkpoints": series.describe(), "versions": environment_versions()},
    )
    return result
