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
- **concentration**: the fewest top components (ranked by sufficiency) whose *joint*
  checkpoint -> base patch recovers ``coverage`` of the change;
- **attention-pattern change** of every head (total variation between base and checkpoint
  patterns; the key token a head gained most at the answer position).

The verdict per checkpoint compares the carriers (that fewest set) with the components the
base already used for the behaviour: those carrying at least ``used_share`` of it by
within-base patching, or of its direct logit attribution without corrupted prompts (see
``CircuitsResult.base_usage``). ``enhanced`` when at least ``enhanced_overlap`` of the
carriers were already used, else ``new``; ``no change`` when the metric moved less than
``min_change``; ``unclear`` when single components move the metric both ways far more
than it moved in total (``cancellation``). Residual-stream sites are measured but never
carriers: they are sums of the components.

Memory is bounded by one batch of activations: prompts are processed ``batch_size`` at a
time and only per-prompt, per-component scalars are kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from .artifacts import environment_versions, write_json, write_parquet
from .attention_change import attention_change
from .errors import RlinterpError
from .metrics import BehaviourMetric, BehaviourPrompts, EncodedPrompts, MetricBatch
from .patching import (
    Component,
    Terms,
    attribution,
    check_same_architecture,
    components,
    direct_logit_attribution,
    patched_logits,
    residual_components,
    run_terms,
)
from .series import Checkpoint, ModelSeries

log = logging.getLogger(__name__)
KIND = "rlinterp.circuits"
TABLES = ("metric", "within", "dla", "cross", "agreement", "concentration", "attention")


@dataclass(frozen=True)
class CircuitsConfig:
    """How ``run_circuits`` measures."""

    batch_size: int = 16
    """Prompts per forward pass; bounds memory."""
    exact_prompts: int | None = 64
    """Prompts (the first ones) on which exact patching runs; ``None``: all. Attribution
    patching runs on all prompts and is compared with exact patching on these."""
    exact_components: int | None = None
    """Exact-patch only this many components per setting, those with the largest
    |attribution| (``None``: all; residual-stream sites are always measured). For large
    models, where one forward pass per component is the cost; the others get NaN exact
    effects and stay out of the agreement."""
    coverage: float = 0.8
    """Fraction of the metric change that the carriers must recover jointly."""
    enhanced_overlap: float = 0.5
    """Share of carriers already used by the base at or above which the verdict is
    ``enhanced``."""
    used_share: float = 0.1
    """A component counts as used by the base for the behaviour when its share of the
    base's behaviour (see ``CircuitsResult.base_usage``) is at least this."""
    min_change: float = 0.05
    """Smallest |metric change| (metric units) that gets a verdict."""
    max_cancellation: float = 5.0
    """Largest ``cancellation`` (sum of |single-component effects| over |change|) that gets
    a verdict: beyond it components push the metric both ways far more than it moved, the
    ratios are unstable, and the verdict is ``unclear``."""
    top_k: int = 5
    """Components listed per step in the summary and report."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"CircuitsConfig.batch_size must be positive, got {self.batch_size}")
        if self.exact_prompts is not None and self.exact_prompts <= 0:
            raise ValueError("CircuitsConfig.exact_prompts must be positive or None")
        if self.exact_components is not None and self.exact_components <= 0:
            raise ValueError("CircuitsConfig.exact_components must be positive or None")
        if not 0 < self.coverage <= 1 or not 0 <= self.enhanced_overlap <= 1:
            raise ValueError("CircuitsConfig.coverage must be in (0, 1], enhanced_overlap in [0, 1]")


SUMMARY_SCHEMA = {
    "metric": "name and description of the behaviour metric",
    "steps[].label / step": "checkpoint label and RL step",
    "steps[].metric_base / metric_checkpoint": "mean metric of base and checkpoint (exact-patching prompts)",
    "steps[].change": "metric_checkpoint - metric_base",
    "steps[].top_sufficiency": "top components by checkpoint->base recovery: [[name, recovery], ...]",
    "steps[].top_necessity": "top components by base->checkpoint loss: [[name, fraction], ...]",
    "steps[].carriers": "fewest top components whose joint checkpoint->base patch recovers `coverage`",
    "steps[].joint_recovery": "recovery of the carriers patched together",
    "steps[].base_used": "components whose share of the base's behaviour is at least `used_share`",
    "steps[].overlap": "share of carriers in base_used",
    "steps[].chance_overlap": "overlap expected of random carriers: len(base_used) / n_components",
    "steps[].cancellation": "sum of |single-component checkpoint->base effects| / |change| (1: additive)",
    "steps[].verdict": "'enhanced', 'new', 'unclear' (cancellation > max_cancellation) or 'no change'",
    "timeline": "first RL step with each verdict ('enhanced', 'new'); null if none",
    "agreement": "attribution vs exact patching per (label, setting): Spearman and Pearson over "
    "components, and top3_overlap, the share of the 3 largest |exact| effects among the 3 largest "
    "|attribution| estimates",
}


@dataclass(frozen=True)
class CircuitsResult:
    """Every table of a circuits run (the Parquet files ``run_circuits`` writes)."""

    metric: pd.DataFrame
    """One row per checkpoint: mean metric on clean (and corrupted) prompts."""
    within: pd.DataFrame
    """Within-model patching: (label, step, component) -> attribution, exact, recovery."""
    dla: pd.DataFrame
    """Direct logit attribution: (label, step, component) -> dla."""
    cross: pd.DataFrame
    """Cross-model patching: (label, step, direction, component) -> attribution, exact,
    recovery; direction ``to_base`` (sufficiency) or ``to_checkpoint`` (necessity)."""
    agreement: pd.DataFrame
    """Attribution vs exact patching: (label, step, setting) -> spearman, pearson."""
    concentration: pd.DataFrame
    """Joint patching of the top-k components: (label, step, k) -> recovery."""
    attention: pd.DataFrame
    """Per (label, step, head): tv_mean, tv_last, gained_token, gained_share."""
    metric_name: str = ""
    metric_description: str = ""
    config: CircuitsConfig = CircuitsConfig()

    def steps(self) -> list[dict[str, Any]]:
        """The per-checkpoint summary rows (``SUMMARY_SCHEMA``)."""
        return [self._step(label) for label in self.cross["label"].unique()]

    def _step(self, label: str) -> dict[str, Any]:
        cfg = self.config
        rows = self.cross[(self.cross["label"] == label) & (self.cross["kind"] != "resid")]
        to_base = rows[rows["direction"] == "to_base"].sort_values("recovery", ascending=False)
        to_ckpt = rows[rows["direction"] == "to_checkpoint"].sort_values("recovery", ascending=False)
        metric = self.metric.set_index("label")
        base = self.base_label
        change = float(metric.loc[label, "metric_exact"] - metric.loc[base, "metric_exact"])
        curve = self.concentration[self.concentration["label"] == label].sort_values("k")
        reached = curve[curve["recovery"] >= cfg.coverage]
        k = int(reached["k"].iloc[0]) if len(reached) else len(curve)
        carriers = to_base["component"].tolist()[:k]
        usage = self.base_usage()
        used = usage[usage >= cfg.used_share].index.tolist()
        overlap = len(set(carriers) & set(used)) / max(len(carriers), 1)
        cancellation = float(to_base["exact"].abs().sum()) / max(abs(change), 1e-12)
        if abs(change) < cfg.min_change:
            verdict = "no change"
        elif cancellation > cfg.max_cancellation:
            verdict = "unclear"
        else:
            verdict = "enhanced" if overlap >= cfg.enhanced_overlap else "new"
        return {
            "label": label,
            "step": int(rows["step"].iloc[0]),
            "metric_base": float(metric.loc[base, "metric_exact"]),
            "metric_checkpoint": float(metric.loc[label, "metric_exact"]),
            "change": change,
            "top_sufficiency": _top(to_base, cfg.top_k),
            "top_necessity": _top(to_ckpt, cfg.top_k),
            "carriers": carriers,
            "joint_recovery": float(curve["recovery"].iloc[k - 1]) if len(curve) else float("nan"),
            "base_used": used,
            "overlap": overlap,
            "chance_overlap": len(used) / max(len(to_base), 1),
            "cancellation": cancellation,
            "verdict": verdict,
        }

    @property
    def base_label(self) -> str:
        """Label of the base model (the first row of every table)."""
        return str(self.metric["label"].iloc[0])

    def base_usage(self) -> pd.Series:
        """Per component, its share of the base's behaviour, largest first: |recovery| of
        within-base clean -> corrupted patching, or without corrupted prompts its share of
        the total |direct logit attribution|."""
        within = self.within[self.within["label"] == self.base_label] if len(self.within) else self.within
        if len(within):
            share = within[within["kind"] != "resid"].set_index("component")["recovery"].abs()
        else:
            dla = self.dla[self.dla["label"] == self.base_label].set_index("component")["dla"].abs()
            share = dla / max(float(dla.sum()), 1e-12)
        return share.sort_values(ascending=False)

    def summary(self) -> dict[str, Any]:
        agreement = self.agreement.to_dict(orient="records")
        steps = self.steps()
        return {
            "schema": SUMMARY_SCHEMA,
            "metric": {"name": self.metric_name, "description": self.metric_description},
            "config": asdict(self.config),
            "steps": steps,
            "timeline": {
                verdict: next((s["step"] for s in steps if s["verdict"] == verdict), None)
                for verdict in ("enhanced", "new")
            },
            "agreement": agreement,
        }

    @classmethod
    def load(cls, root: str | Path) -> CircuitsResult:
        """Read a finished ``run_circuits`` output directory."""
        root = Path(root)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise RlinterpError(f"{root} is not a finished circuits run (no manifest.json); run it again")
        meta = json.loads(manifest.read_text())
        return cls(
            **{name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES},
            metric_name=meta["metric"]["name"],
            metric_description=meta["metric"]["description"],
            config=CircuitsConfig(**meta["config"]),
        )


def _top(frame: pd.DataFrame, k: int) -> list[list[Any]]:
    return [[str(c), float(v)] for c, v in zip(frame["component"][:k], frame["recovery"][:k], strict=True)]


# -- measuring --------------------------------------------------------------------------


@dataclass
class _Context:
    series: ModelSeries
    metric: BehaviourMetric
    prompts: EncodedPrompts
    config: CircuitsConfig

    @property
    def n_exact(self) -> int:
        n = len(self.prompts)
        return n if self.config.exact_prompts is None else min(n, self.config.exact_prompts)

    def batches(self, exact_only: bool = False) -> Iterator[list[int]]:
        n = self.n_exact if exact_only else len(self.prompts)
        size = self.config.batch_size
        for start in range(0, n, size):
            yield list(range(start, min(start + size, n)))

    def device(self, batch: MetricBatch) -> MetricBatch:
        return MetricBatch(
            tokens=batch.tokens.to(self.series.device),
            lengths=batch.lengths,
            positive=batch.positive,
            negative=batch.negative,
        )

    def score(self, logits: torch.Tensor, batch: MetricBatch) -> torch.Tensor:
        return self.metric(logits, batch).float().cpu()


def run_circuits(
    series: ModelSeries,
    metric: BehaviourMetric,
    prompts: BehaviourPrompts,
    out: str | Path | None = None,
    config: CircuitsConfig | None = None,
) -> CircuitsResult:
    """Measure every component of every model of ``series`` for ``metric`` on ``prompts``
    (see the module docstring); write tables, summary, report and manifest to ``out``."""
    config = config or CircuitsConfig()
    if len(series) < 2:
        raise RlinterpError("circuits needs a base and at least one RL checkpoint")
    if out is not None:
        _prepare_out(Path(out))
    series.validate()
    ctx = _Context(series, metric, prompts.encode(series.tokenizer()), config)
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
        batches = (ctx.device(ctx.prompts.batch(idx)) for idx in ctx.batches())
        frames["attention"] = attention_change(base, model, batches, ctx.series.tokenizer()).assign(**meta)
    if agreement:
        frames["agreement"] = pd.DataFrame(agreement)
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
        attributions.append(attribution(receiver, receiver_tokens, donor_terms, comps, metric).float().cpu())
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
            for i in chosen:
                patched = patched_logits(receiver, receiver_tokens, donor_terms, [comps[i]])
                effects[:, i] = ctx.score(patched, batch) - own
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


def _prepare_out(out: Path) -> None:
    """``out`` must be absent, empty, or an earlier circuits run (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise RlinterpError(f"{out} is a file; give a directory for the circuits output")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / "manifest.json"
        kind = json.loads(manifest.read_text()).get("kind") if manifest.is_file() else None
        if kind != KIND:
            raise RlinterpError(
                f"{out} is not empty and not a circuits run; choose an empty or new directory"
            )
        manifest.unlink()  # unfinished until rewritten at the end


def write_circuits(result: CircuitsResult, out: Path, series: ModelSeries, n_prompts: int) -> None:
    """Tables, ``summary.json``, ``report.html``, then ``manifest.json`` (finished marker)."""
    from .circuits_report import write_circuits_report

    for name in TABLES:
        write_parquet(out / f"{name}.parquet", getattr(result, name))
    write_json(out / "summary.json", result.summary())
    write_circuits_report(result, out / "report.html")
    write_json(
        out / "manifest.json",
        {
            "kind": KIND,
            "checkpoints": series.describe(),
            "metric": {"name": result.metric_name, "description": result.metric_description},
            "config": asdict(result.config),
            "n_prompts": n_prompts,
            "versions": environment_versions(),
        },
    )
