"""``run_fidelity``: reasoning fidelity, reward overfitting and drift of every checkpoint of a
series, measured on the checkpoint's own samples.

For each checkpoint (base first): sample ``cfg.sampling.samples_per_prompt`` answers to every
prompt (``activations.onpolicy.sample``, the same random numbers at every checkpoint), then
per sample the reasoning metrics (``metrics``), the reasoning-mediated share on pairs of
samples (``patching``), KL to the base and the base's likelihood (``drift``), the persona
shift, and the proxy and gold rewards and undesired behaviours (``task``). ``result``
aggregates the samples into one row per step with bootstrap intervals over prompts.

Layout of ``out/`` (claimed through ``core.rundir``; resumes checkpoint by checkpoint):

- ``<label>/samples.parquet``: one row per sample (``onpolicy.SAMPLE_COLUMNS``, then
  ``metrics.REASONING_COLUMNS``, ``drift.DRIFT_COLUMNS``, ``shift_<persona>``);
  ``<label>/patching.parquet`` (``patching.PAIR_COLUMNS``); ``<label>/done.json`` last;
- ``calibration.parquet``: the base log-likelihood of a second draw of the base's samples
  (what *new* is measured against);
- ``personas/``: the activation store of the persona texts on the base (persona directions);
- the result's tables and ``summary.json`` (``FidelityResult.save``), then ``manifest.json``.

A metric that cannot be computed is skipped with its reason in ``summary["skipped"]``
(answers without reasoning, no gold answers, no persona texts, no token-aligned pairs);
samples a metric cannot read are counted in ``summary["left_out"]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..activations.harvest import HarvestConfig, harvest
from ..activations.onpolicy import sample
from ..activations.prompts import PromptSet
from ..core import rundir
from ..core.artifacts import environment_versions, sha256_file, write_json, write_parquet
from ..models.series import Checkpoint, ModelSeries
from ..selection.personas import MIN_TEXTS_PER_PERSONA, persona_directions
from .config import REASONING_METRICS, FidelityConfig
from .drift import new_threshold, persona_projection, sequence_stats
from .metrics import reasoning_rows
from .patching import PAIR_COLUMNS, contexts, pair_up, patch_pairs
from .result import TABLES, FidelityResult, aggregate
from .task import FidelityTask

log = logging.getLogger(__name__)
KIND = rundir.FIDELITY
DONE = "done.json"


def skipped_metrics(task: FidelityTask, cfg: FidelityConfig) -> dict[str, str]:
    """Metric -> why it is skipped, for the metrics asked for that this task cannot give."""
    skipped: dict[str, str] = {}
    for metric in cfg.metrics:
        if metric in REASONING_METRICS and task.format is None:
            skipped[metric] = task.no_reasoning
        elif metric == "filler" and task.gold is None:
            skipped[metric] = "no gold answers: accuracy with and without the reasoning needs them"
        elif metric == "persona" and not task.persona_texts:
            skipped[metric] = "no persona texts: the persona directions are fitted on them"
        elif metric == "persona":
            counts = Counter(str(t["persona"]) for t in task.persona_texts)
            if len(counts) < 2 or min(counts.values()) < MIN_TEXTS_PER_PERSONA:
                skipped[metric] = (
                    f"too few persona texts ({dict(counts)}): directions need two personas with at "
                    f"least {MIN_TEXTS_PER_PERSONA} texts each"
                )
    if "rewards" in cfg.metrics and task.gold is None and task.verifier is None:
        skipped["gold"] = (
            "no gold answers or verifier: gold reward, Goodhart onset and the gold fit need them"
        )
    if "rewards" in cfg.metrics and task.proxy is None and task.gold is None:
        skipped["proxy"] = "no reward script and no gold answers: there is no proxy reward to read"
    return skipped


def run_fidelity(
    series: ModelSeries,
    task: FidelityTask,
    out: str | Path,
    cfg: FidelityConfig | None = None,
    *,
    force: bool = False,
) -> FidelityResult:
    """Measure every checkpoint of ``series`` on ``task`` into ``out`` (module docstring)."""
    cfg = cfg or FidelityConfig()
    out = Path(out)
    series.validate()
    task = _subset(task, cfg.max_prompts)
    tokenizer = series.tokenizer()
    PromptSet(texts=task.prompts).check_vocabulary(tokenizer)  # before the claim: one line
    skipped = skipped_metrics(task, cfg)
    for metric, reason in skipped.items():
        log.info("fidelity: %s skipped: %s", metric, reason)
    labels = [c.label for c in series]
    entries = [*labels, "calibration.parquet", "personas", *TABLES, "summary.json", "report.html"]
    fingerprint = _fingerprint(series, task, cfg)
    claimed = rundir.claim(
        out, KIND, fingerprint, entries, resumable=[*labels, "calibration.parquet", "personas"], force=force
    )
    if claimed.state == "finished":
        return FidelityResult.load(out)
    base = _hf(series, series.base)
    threshold = _calibration(base, tokenizer, task, cfg, out) if cfg.wants("drift") else float("nan")
    hook, directions, personas = _personas(series, task, cfg, out, skipped)
    samples, pairs = {}, {}
    for checkpoint in series:
        samples[checkpoint.label], pairs[checkpoint.label] = _checkpoint(
            series,
            checkpoint,
            base,
            tokenizer,
            task,
            cfg,
            out / checkpoint.label,
            skipped,
            (hook, directions),
        )
    result = aggregate(series, task, samples, pairs, cfg, skipped, threshold, personas)
    result.save(out)
    rundir.finish(
        out,
        KIND,
        {
            "checkpoints": series.describe(),
            "config": _config_json(cfg),
            "n_prompts": len(task.prompts),
            "persona_hook": hook,
            "timings_s": {c.label: json.loads((out / c.label / DONE).read_text()) for c in series},
            "versions": environment_versions(),
        },
    )
    return result


def _subset(task: FidelityTask, max_prompts: int | None) -> FidelityTask:
    n = len(task.prompts)
    if max_prompts is None or max_prompts >= n:
        return task
    return task.select(sorted({round(i * (n - 1) / (max_prompts - 1)) for i in range(max_prompts)}))


def _config_json(cfg: FidelityConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _fingerprint(series: ModelSeries, task: FidelityTask, cfg: FidelityConfig) -> dict[str, Any]:
    fmt = task.format
    described = (
        None
        if fmt is None
        else {f.name: getattr(fmt, f.name) for f in dataclasses.fields(fmt) if f.name != "extract"}
    )
    return {
        "config": _config_json(cfg),
        "prompts_sha256": rundir.digest(list(task.prompts)),
        "gold_sha256": None if task.gold is None else rundir.digest(list(task.gold)),
        "format": described,
        "extractor": None
        if fmt is None or fmt.extract is None
        else getattr(fmt.extract, "__qualname__", "callable"),
        "scoring": task.scoring,
        "persona_texts_sha256": rundir.digest([dict(t) for t in task.persona_texts]),
        **{f"weights of {c.label}": _weights(c.path) for c in series},
    }


def _weights(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _hf(series: ModelSeries, checkpoint: Checkpoint) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=series.load_dtype).eval()
    return model.to(series.device)


def _calibration(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: FidelityTask,
    cfg: FidelityConfig,
    out: Path,
) -> float:
    """The base log-likelihood below which a sample is new, from a second draw of the base's
    samples (another seed than the analysed samples)."""
    path = out / "calibration.parquet"
    if not path.is_file():
        draw = dataclasses.replace(cfg.sampling, seed=cfg.sampling.seed + 1)
        table = sample(base, tokenizer, list(task.prompts), draw)
        stats = sequence_stats(base, base, tokenizer, task.prompts, table, cfg.batch_size)
        write_parquet(path, pd.DataFrame({"base_logprob": stats["base_logprob"]}))
    return new_threshold(pd.read_parquet(path)["base_logprob"].to_numpy(), cfg.new_quantile)


def _personas(
    series: ModelSeries, task: FidelityTask, cfg: FidelityConfig, out: Path, skipped: dict[str, str]
) -> tuple[str | None, torch.Tensor | None, list[str]]:
    """The persona directions of the base at the persona hook, fitted on the task's persona
    texts (None when the persona shift is not measured)."""
    if not cfg.wants("persona") or "persona" in skipped:
        return None, None, []
    n_layers = int(series.load(series.base).cfg.n_layers)
    hook = cfg.persona_hook or f"blocks.{n_layers - 1}.hook_resid_post"
    rows: list[dict[str, object]] = [
        {"prompt": t["prompt"], "response": t["answer"], "persona": t["persona"]} for t in task.persona_texts
    ]
    texts = PromptSet.from_records(rows, source="persona texts")
    base_only = dataclasses.replace(series, checkpoints=(series.base,))
    store = harvest(base_only, texts, out / "personas", HarvestConfig(hooks=(hook,), response_only=True))
    found = persona_directions(store, texts.labels["persona"], hooks=[hook])
    return hook, found.directions[hook], list(found.split.personas)


def _checkpoint(
    series: ModelSeries,
    checkpoint: Checkpoint,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: FidelityTask,
    cfg: FidelityConfig,
    folder: Path,
    skipped: dict[str, str],
    persona: tuple[str | None, torch.Tensor | None],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The checkpoint's sample table and patched pairs, reused when finished."""
    if (folder / DONE).is_file():
        return pd.read_parquet(folder / "samples.parquet"), pd.read_parquet(folder / "patching.parquet")
    log.info("fidelity: %s", checkpoint.label)
    started, cpu = time.perf_counter(), time.process_time()
    policy = base if checkpoint.label == series.base.label else _hf(series, checkpoint)
    table = sample(policy, tokenizer, list(task.prompts), cfg.sampling)
    parts = [table]
    if task.format is not None and any(cfg.wants(m) and m not in skipped for m in REASONING_METRICS):
        parts.append(reasoning_rows(policy, tokenizer, task, table, cfg))
    if cfg.wants("drift"):
        parts.append(sequence_stats(policy, base, tokenizer, task.prompts, table, cfg.batch_size))
    hook, directions = persona
    if hook is not None and directions is not None:
        base_hooked = series.load(series.base)
        projected = persona_projection(
            base_hooked,
            series.load(checkpoint),
            tokenizer,
            task.prompts,
            table,
            hook,
            directions,
            cfg.batch_size,
        )
        parts.append(
            pd.DataFrame(projected.numpy(), columns=[f"shift_{i}" for i in range(projected.shape[1])])
        )
    frame = pd.concat(parts, axis=1)
    pairs = pd.DataFrame(columns=PAIR_COLUMNS)
    if (
        task.format is not None
        and cfg.wants("patching")
        and "patching" not in skipped
        and "forced_full" in frame
    ):
        found = contexts(
            tokenizer,
            task.format,
            [task.prompts[i] for i in frame["prompt_index"]],
            list(frame["response"]),
            list(frame["prompt_index"]),
            # a missing answer is None; pandas may have stored it as NaN
            [None if pd.isna(answer) else answer for answer in frame["forced_full"]],
        )
        chosen = pair_up(found, cfg.max_pairs, cfg.seed)
        if chosen:
            pairs = patch_pairs(series.load(checkpoint), chosen, cfg.batch_size)
    write_parquet(folder / "samples.parquet", _storable(frame))
    write_parquet(folder / "patching.parquet", pairs)
    timing = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
    write_json(folder / DONE, {"label": checkpoint.label, "step": checkpoint.step, **timing})
    if policy is not base:
        del policy
    return pd.read_parquet(folder / "samples.parquet"), pairs


def _storable(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns of mixed None/str stay strings; list columns stay lists."""
    out = frame.copy()
    for column in (
        "answer",
        "template",
        "forced_full",
        "mistake_value",
        "mistake_edit",
        "mistake_answer",
        "mistake_original",
        "filler_answer",
        "left_out",
    ):
        if column in out:
            out[column] = out[column].astype("string")
    if "early_same" in out:
        out["early_same"] = [None if v is None else [bool(x) for x in v] for v in out["early_same"]]
    return out
