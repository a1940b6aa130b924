"""The result of a circuits run: its tables, and the summary and verdict derived from them.

The verdict per checkpoint compares the *carriers* (the fewest components, ranked by
checkpoint -> base recovery, whose joint patch recovers ``coverage`` of the metric change)
with the components the base already used for the behaviour: those carrying at least ``used_share`` of it by
within-base patching, or of its direct logit attribution without corrupted prompts (see
``CircuitsResult.base_usage``). ``enhanced`` when at least ``enhanced_overlap`` of the
carriers were already used, else ``new``; ``no change`` when the metric moved less than
``min_change``; ``unclear`` when single components move the metric both ways far more
than it moved in total (``cancellation``). Residual-stream sites are measured but never
carriers: they are sums of the components.

Everything here reads tables only (no model), so summaries are testable on hand-built
frames and a finished run directory can be reopened with ``CircuitsResult.load``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import rundir
from .config import CircuitsConfig as CircuitsConfig

TABLES = ("metric", "within", "dla", "cross", "agreement", "concentration", "attention")
ENTRIES = (*(f"{name}.parquet" for name in TABLES), "summary.json", "report.html")
"""Everything a circuits run writes besides its manifest."""


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
        meta = rundir.read_finished(root, rundir.CIRCUITS, "run `rlinterp circuits` again")
        return cls(
            **{name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES},
            metric_name=meta["metric"]["name"],
            metric_description=meta["metric"]["description"],
            config=CircuitsConfig(**meta["config"]),
        )


def _top(frame: pd.DataFrame, k: int) -> list[list[Any]]:
    return [[str(c), float(v)] for c, v in zip(frame["component"][:k], frame["recovery"][:k], strict=True)]
