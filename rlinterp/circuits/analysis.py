"""Circuit diffs: which components carry what RL changed, step by step.

``run_circuits(series, metric, prompts, out)`` is what ``rlinterp circuits`` calls. For a
behaviour metric (``metrics``) and every model of the series it measures, per component
(``patching``):

- **within-model patching** (when the prompts have corrupted versions): each model's
  corrupted run with one component's term taken from its clean run, exact on the first
  ``exact_prompts`` prompts and by attribution patching on all of them; this says which
  components a model uses for the behaviour (for the base: the circuit it already had);
- **direct logit attribution** of each component to the metric on the clean prompts;
- **cross-model patching** between the base and each checkpoint on the clean prompts:
  checkpoint -> base (*sufficiency*: fraction of the checkpoint's metric change that one
  component recovers) and base -> checkpoint (*necessity*: fraction the checkpoint loses
  without it), exact and by attribution;
- **agreement** of attribution patching (``attribution_steps``-point integrated gradients,
  one component or one site at a time, or the plain gradient estimate at 1 step) with
  exact patching, per setting: rank correlation over components on the exact prompts;
- **concentration**: the fewest top components (ranked by sufficiency) whose *joint*
  checkpoint -> base patch recovers ``coverage`` of the change;
- **attention-pattern change** of every head (total variation between base and checkpoint
  patterns; the key token a head gained most at the answer position).

The tables, summary and verdict are ``circuits_result.CircuitsResult``.

Memory is bounded by one batch of activations: prompts are processed ``batch_size`` at a
time and only per-prompt, per-component scalars are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from ..core import rundir
from ..core.artifacts import (
    config_sha256,
    environment_versions,
    tokenizer_sha256,
    weights_sha256,
    write_json,
    write_parquet,
)
from ..errors import RlinterpError
from ..models.checkpoint import Checkpoint
from ..models.series import ModelSeries
from ..models.stacking import per_pass
from .attention import attention_change
from .metrics import BehaviourMetric, BehaviourPrompts, EncodedPrompts, MetricBatch
from .neurons import carrier_neurons
from .patching import (
    Component,
    Terms,
    attribution,
    check_same_architecture,
    components,
    direct_logit_attribution,
    patched_logits,
    patched_logits_each,
    residual_components,
    run_terms,
)
from .result import ENTRIES, TABLES, CircuitsConfig, CircuitsResult, fewest

log = logging.getLogger(__name__)
# -- measuring --------------------------------------------------------------------------


@dataclass
class _Context:
    series: ModelSeries
    metric: BehaviourMetric
    prompts: EncodedPrompts
    config: CircuitsConfig
    usage: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per MLP block: each neuron's mean effect on the metric in the base (computed once)."""

    @property
    def n_exact(self) -> int:
        n = len(self.prompts)
        return n if self.config.exact_prompts is None else min(n, self.config.exact_prompts)

    def batches(self, exact_only: bool = False) -> Iterator[list[int]]:
        n = self.n_exact if exact_only else len(self.prompts)
        size = self.config.batch_size
        for start in range(0, n, size):
            yield list(range(start, min(start + size, n)))

    def blocks(self, tokens: torch.Tensor, model: TransformerBridge) -> int:
        """Patches (or interpolation points) run together in one stacked pass over
        ``tokens`` (``models.stacking``): as many as the stack's size allows."""
        return per_pass(tokens, model.cfg)

    def device(self, batch: MetricBatch) -> MetricBatch:
        return MetricBatch(
            tokens=batch.tokens.to(self.series.device),
            lengths=batch.lengths,
            positive=batch.positive,
            negative=batch.negative,
        )

    def score(self, logits: torch.Tensor, batch: MetricBatch) -> torch.Tensor:
        return self.metric(logits, batch).float().cpu()

    def neuron_batches(self, exact_only: bool, corrupted: bool = False) -> Iterator[MetricBatch]:
        """The prompts' batches on the series' device (``neurons.carrier_neurons``)."""
        for idx in self.batches(exact_only=exact_only):
            yield self.device(self.prompts.batch(idx, corrupted=corrupted))


def run_circuits(
    series: ModelSeries,
    metric: BehaviourMetric,
    prompts: BehaviourPrompts,
    out: str | Path | None = None,
    config: CircuitsConfig | None = None,
    *,
    force: bool = False,
) -> CircuitsResult:
    """Measure every component of every model of ``series`` for ``metric`` on ``prompts``
    (see the module docstring); write tables, summary and manifest to ``out`` (the report
    is drawn by the command: ``report.write_circuits_report``).

    ``out`` must be absent, empty or a circuits run (see ``rundir``): a finished run of the
    same inputs is read back, not recomputed; one of other inputs is refused naming what
    changed, or (``force``) computed again."""
    config = config or CircuitsConfig()
    if len(series) < 2:
        raise RlinterpError("circuits needs a base and at least one RL checkpoint")
    series.validate()
    encoded = prompts.encode(series.tokenizer())  # targets and prompts checked before the claim
    if out is not None:
        inputs = fingerprint(series, metric, prompts, config)
        if rundir.claim(out, rundir.CIRCUITS, inputs, ENTRIES, force=force).state == "finished":
            return CircuitsResult.load(out)
    ctx = _Context(series, metric, encoded, config)
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for checkpoint in series:
        log.info("circuits: %s", checkpoint.label)
        for name, frame in _measure_checkpoint(ctx, checkpoint).items():
            tables[name].append(frame)
    result = CircuitsResult(
        **{
            name: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            for name, frames in tables.items()
        },
        metric_name=metric.name,
        metric_description=metric.description,
        config=config,
    )
    if out is not None:
        write_circuits(result, Path(out), series, len(prompts))
    return result


def _measure_checkpoint(ctx: _Context, checkpoint: Checkpoint) -> dict[str, pd.DataFrame]:
    base = ctx.series.load(ctx.series.base)
    model = ctx.series.load(checkpoint)
    check_same_architecture(base, model)
    meta = {"label": checkpoint.label, "step": checkpoint.step}
    frames: dict[str, pd.DataFrame] = {}
    frames["metric"] = pd.DataFrame([{**meta, **_metric_means(ctx, model)}])
    within_comps = components(model, cross_model=False)
    frames["dla"] = _dla(ctx, model, within_comps).assign(**meta)
    agreement = []
    if ctx.prompts.corrupted is not None:
        comps = within_comps + residual_components(model)
        patched = _patch_setting(ctx, model, model, comps, "within")
        frames["within"] = _component_frame(comps, patched, ctx.n_exact).assign(**meta)
        agreement.append({**meta, "setting": "within", **_agreement(patched, comps, ctx.n_exact)})
    if checkpoint.label != ctx.series.base.label:
        cross_comps = components(model)
        comps = cross_comps + residual_components(model)
        parts = []
        for direction, receiver, donor in (("to_base", base, model), ("to_checkpoint", model, base)):
            patched = _patch_setting(ctx, receiver, donor, comps, "cross")
            parts.append(_component_frame(comps, patched, ctx.n_exact).assign(direction=direction, **meta))
            agreement.append({**meta, "setting": direction, **_agreement(patched, comps, ctx.n_exact)})
        frames["cross"] = pd.concat(parts, ignore_index=True)
        ranked = parts[0][parts[0]["kind"] != "resid"].sort_values("recovery", ascending=False)
        order = ranked["component"].tolist()
        frames["concentration"] = _concentration(ctx, base, model, cross_comps, order).assign(**meta)
        if ctx.config.neurons:
            carriers = order[: fewest(frames["concentration"], ctx.config.coverage)]
            corrupted = ctx.prompts.corrupted is not None
            args = (ctx.neuron_batches, ctx.metric, ctx.config, ctx.usage, corrupted)
            found = carrier_neurons(base, model, carriers, *args)
            frames |= {name: frame.assign(**meta) for name, frame in found.items()}
        batches = (ctx.device(ctx.prompts.batch(idx)) for idx in ctx.batches())
        frames["attention"] = attention_change(base, model, batches, ctx.series.tokenizer()).assign(**meta)
    if agreement:
        frames["agreement"] = pd.DataFrame(agreement).assign(
            attribution_steps=ctx.config.attribution_steps,
            attribution_interpolation=ctx.config.attribution_interpolation,
        )
    return frames


@torch.no_grad()
def _metric_means(ctx: _Context, model: TransformerBridge) -> dict[str, float]:
    values: dict[str, list[torch.Tensor]] = {"clean": [], "corrupted": []}
    for idx in ctx.batches():
        for which in ("clean", "corrupted") if ctx.prompts.corrupted is not None else ("clean",):
            batch = ctx.device(ctx.prompts.batch(idx, corrupted=which == "corrupted"))
            values[which].append(ctx.score(model(batch.tokens), batch))
    clean = torch.cat(values["clean"])
    row = {"metric": clean.mean().item(), "metric_exact": clean[: ctx.n_exact].mean().item()}
    row["metric_corrupted"] = torch.cat(values["corrupted"]).mean().item() if values["corrupted"] else np.nan
    return row


def _dla(ctx: _Context, model: TransformerBridge, comps: tuple[Component, ...]) -> pd.DataFrame:
    parts = []
    for idx in ctx.batches():
        batch = ctx.device(ctx.prompts.batch(idx))
        parts.append(direct_logit_attribution(model, batch.tokens, comps, partial(ctx.metric, batch=batch)))
    values = torch.cat(parts).mean(0)
    return pd.DataFrame({"component": [c.name for c in comps], "dla": values.numpy()})


class _Patched(NamedTuple):
    attribution: torch.Tensor
    """Per prompt (all prompts) and component: the attribution-patching estimate."""
    exact: torch.Tensor
    """Per prompt (the exact prompts) and component: the exact effect."""
    gap: torch.Tensor
    """Per prompt (all prompts): metric of the donor run minus that of the receiver run."""


def _patch_setting(
    ctx: _Context,
    receiver: TransformerBridge,
    donor: TransformerBridge,
    comps: tuple[Component, ...],
    setting: str,
) -> _Patched:
    """Effects of patching each component from ``donor`` into ``receiver``. ``within``: the
    receiver runs the corrupted prompts and the donor (the same model) the clean ones;
    ``cross``: both run the clean prompts. Attribution first (all prompts), then exact
    patching (exact prompts) of all components or of the top ``exact_components``."""
    attributions, gaps = [], []
    for batch, receiver_tokens, donor_terms in _runs(ctx, donor, setting, exact_only=False):
        metric = partial(ctx.metric, batch=batch)  # clean targets score corrupted runs too
        steps, path = ctx.config.attribution_steps, ctx.config.attribution_interpolation
        blocks = ctx.blocks(receiver_tokens, receiver)
        found = attribution(receiver, receiver_tokens, donor_terms, comps, metric, steps, path, blocks)
        attributions.append(found.float().cpu())
        with torch.no_grad():
            gaps.append(ctx.score(donor_terms.logits, batch) - ctx.score(receiver(receiver_tokens), batch))
    estimate = torch.cat(attributions)
    chosen = list(range(len(comps)))
    if ctx.config.exact_components is not None:  # residual sites are few: always measured
        ranked = estimate.mean(0).abs().argsort(descending=True).tolist()
        additive = [i for i in ranked if comps[i].kind != "resid"][: ctx.config.exact_components]
        chosen = sorted(additive + [i for i, c in enumerate(comps) if c.kind == "resid"])
    exacts = []
    for batch, receiver_tokens, donor_terms in _runs(ctx, donor, setting, exact_only=True):
        with torch.no_grad():
            own = ctx.score(receiver(receiver_tokens), batch)
            effects = torch.full((len(own), len(comps)), float("nan"))
            size = ctx.blocks(receiver_tokens, receiver)
            for start in range(0, len(chosen), size):
                group = chosen[start : start + size]
                patched = patched_logits_each(
                    receiver, receiver_tokens, donor_terms, [[comps[i]] for i in group]
                )
                for i, logits in zip(group, patched, strict=True):
                    effects[:, i] = ctx.score(logits, batch) - own
        exacts.append(effects)
    return _Patched(estimate, torch.cat(exacts), torch.cat(gaps))


def _runs(
    ctx: _Context, donor: TransformerBridge, setting: str, exact_only: bool
) -> Iterator[tuple[MetricBatch, torch.Tensor, Terms]]:
    """Per batch: the clean batch, the receiver's tokens, and the donor's terms."""
    for idx in ctx.batches(exact_only=exact_only):
        batch = ctx.device(ctx.prompts.batch(idx))
        receiver_batch = ctx.device(ctx.prompts.batch(idx, corrupted=True)) if setting == "within" else batch
        yield batch, receiver_batch.tokens, run_terms(donor, batch.tokens, batch.lengths)


def _component_frame(comps: tuple[Component, ...], patched: _Patched, n_exact: int) -> pd.DataFrame:
    """Mean effects per component; ``recovery`` divides the exact effect by the gap on the
    exact prompts, ``attribution_recovery`` the attribution by the gap on all prompts."""
    exact = patched.exact.mean(0).numpy()  # NaN for components not exact-patched
    estimate = patched.attribution.mean(0).numpy()
    gap_exact, gap_all = patched.gap[:n_exact].mean().item(), patched.gap.mean().item()
    return pd.DataFrame(
        {
            "component": [c.name for c in comps],
            "kind": [c.kind for c in comps],
            "layer": [c.layer if c.layer is not None else -1 for c in comps],
            "head": [c.head if c.head is not None else -1 for c in comps],
            "attribution": estimate,
            "exact": exact,
            "recovery": exact / gap_exact if abs(gap_exact) > 1e-12 else np.nan,
            "attribution_recovery": estimate / gap_all if abs(gap_all) > 1e-12 else np.nan,
            "gap": gap_exact,
        }
    )


def _agreement(patched: _Patched, comps: tuple[Component, ...], n_exact: int) -> dict[str, float]:
    """Rank and linear correlation, over the additive components (residual sites left
    out: they are sums of the others), of mean attribution and mean exact effect on the
    same (exact) prompts."""
    measured = ~patched.exact.isnan().any(0)
    keep = [i for i, c in enumerate(comps) if c.kind != "resid" and bool(measured[i])]
    a = pd.Series(patched.attribution[:n_exact, keep].mean(0).numpy())
    e = pd.Series(patched.exact[:, keep].mean(0).numpy())
    exact = patched.exact
    k = min(3, len(keep))
    top = len(set(a.abs().nlargest(k).index) & set(e.abs().nlargest(k).index)) / max(k, 1)
    return {
        "spearman": float(a.rank().corr(e.rank())),
        "pearson": float(a.corr(e)),
        "top3_overlap": top,
        "n_components": len(a),
        "n_prompts": int(exact.shape[0]),
    }


@torch.no_grad()
def _concentration(
    ctx: _Context,
    base: TransformerBridge,
    model: TransformerBridge,
    comps: tuple[Component, ...],
    order: list[str],
) -> pd.DataFrame:
    """Recovery of the checkpoint's change when its top-k components (``order``) are
    patched into the base together, for growing k until ``coverage`` is reached."""
    by_name = {c.name: c for c in comps}
    batches = (ctx.device(ctx.prompts.batch(idx)) for idx in ctx.batches(exact_only=True))
    base_values = torch.cat([ctx.score(base(b.tokens), b) for b in batches])
    rows = []
    for k in range(1, len(order) + 1):
        chosen = [by_name[n] for n in order[:k]]
        patched, donor_values = [], []
        for idx in ctx.batches(exact_only=True):
            batch = ctx.device(ctx.prompts.batch(idx))
            terms = run_terms(model, batch.tokens, batch.lengths)
            patched.append(ctx.score(patched_logits(base, batch.tokens, terms, chosen), batch))
            donor_values.append(ctx.score(terms.logits, batch))
        gap = (torch.cat(donor_values) - base_values).mean().item()
        recovered = (torch.cat(patched) - base_values).mean().item()
        rows.append({"k": k, "recovery": recovered / gap if abs(gap) > 1e-12 else np.nan})
        if abs(gap) <= 1e-12 or recovered / gap >= ctx.config.coverage:
            break
    return pd.DataFrame(rows)


# -- writing ----------------------------------------------------------------------------


def fingerprint(
    series: ModelSeries, metric: BehaviourMetric, prompts: BehaviourPrompts, config: CircuitsConfig
) -> dict[str, Any]:
    """Everything that determines a circuits run (what reuse compares): checkpoints with
    their weight and config hashes, the tokenizer, the metric, the prompts and targets, the
    config and the dtype. Not the device or paths. A custom metric function is known by its
    qualified name only: change its name when you change what it computes."""
    found: dict[str, Any] = {"checkpoints": [f"{c.label} (step {c.step})" for c in series]}
    for c in series:
        found[f"weights of {c.label}"] = weights_sha256(c.path)
        found[f"config of {c.label}"] = config_sha256(c.path)
    function = metric.function
    return found | {
        "tokenizer": tokenizer_sha256(series.base.path),
        "metric": f"{metric.name} ({metric.kind})",
        "metric function": None if function is None else getattr(function, "__qualname__", repr(function)),
        "prompts": rundir.digest(asdict(prompts)),
        "dtype": str(series.dtype).removeprefix("torch."),
        **{f"config.{k}": v for k, v in asdict(config).items()},
    }


def write_circuits(result: CircuitsResult, out: Path, series: ModelSeries, n_prompts: int) -> None:
    """Tables, ``summary.json``, then ``manifest.json`` (finished marker). The report is the
    command's to draw (``report.write_circuits_report``), not the computation's."""
    for name in TABLES:
        write_parquet(out / f"{name}.parquet", getattr(result, name))
    write_json(out / "summary.json", result.summary())
    rundir.finish(  # last: marks the directory finished
        out,
        rundir.CIRCUITS,
        {
            "checkpoints": series.describe(),
            "metric": {"name": result.metric_name, "description": result.metric_description},
            "config": asdict(result.config),
            "n_prompts": n_prompts,
            "versions": environment_versions(),
        },
    )
