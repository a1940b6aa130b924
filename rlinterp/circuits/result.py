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

The **sub-component verdict** looks inside the carrier MLPs (``neurons``): each carrier
MLP's own carriers are the fewest of its neurons whose joint patch recovers ``coverage`` of
the whole block's patch. A carrier neuron is *new* when the base did not use it for the
behaviour (its base effect under ``used_share`` of the change) or RL rewired it (input or
output weights turned past ``tracking.lineage.MOVED_BELOW``); a carrier head or other
non-MLP component is new when the base did not use it (as above). ``new_share`` is the
carriers' recovery-weighted share of new sub-components (within an MLP, weighted by neuron
attribution); ``subcomponent_verdict`` is ``new`` when ``1 - new_share`` falls under
``enhanced_overlap``, else ``enhanced`` (``no change`` and ``unclear`` as above). A change
RL confined to new neurons of a block the base already used thus reads ``enhanced`` at the
component and ``new`` below it.

Everything here reads tables only (no model), so summaries are testable on hand-built
frames and a finished run directory can be reopened with ``CircuitsResult.load``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import rundir
from ..tracking.lineage import MOVED_BELOW
from .config import CircuitsConfig as CircuitsConfig

TABLES = (
    "metric",
    "within",
    "dla",
    "cross",
    "agreement",
    "concentration",
    "attention",
    "neurons",
    "neuron_concentration",
)
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
    "steps[].neuron_carriers": "per carrier MLP, its fewest neurons whose joint patch recovers `coverage` "
    "of the block's patch: ['L0.mlp/17', ...]",
    "steps[].new_share": "recovery-weighted share of the carriers' sub-components (neurons of carrier MLPs, "
    "other carriers whole) that are new: unused by the base for the behaviour, or rewired; null "
    "without neurons measured",
    "steps[].subcomponent_verdict": "'new' when 1 - new_share < enhanced_overlap, else 'enhanced' "
    "('no change' and 'unclear' as verdict); null without neurons measured",
    "timeline": "first RL step with each verdict ('enhanced', 'new'), and with each sub-component verdict "
    "('subcomponent_enhanced', 'subcomponent_new'); null if none",
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
    neurons: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per (label, step, layer, neuron) of each carrier MLP: ``attribution`` (checkpoint ->
    base, mean over prompts), ``rank`` (by attribution towards the block's effect),
    ``base_usage`` (mean effect in the base), ``cos_in``, ``cos_out`` (base vs checkpoint
    weights)."""
    neuron_concentration: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Joint patches of each carrier MLP's top-k neurons: (label, step, layer, k) -> recovery
    (of ``block_effect``, the exact effect of patching every neuron of the block)."""
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
        k = fewest(curve, cfg.coverage)
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
            **self._subcomponents(label, to_base, carriers, set(used), change, verdict),
        }

    def _subcomponents(
        self,
        label: str,
        to_base: pd.DataFrame,
        carriers: list[str],
        used: set[str],
        change: float,
        verdict: str,
    ) -> dict[str, Any]:
        """The sub-component fields of ``steps()`` (see the module docstring)."""
        rows = self.neurons[self.neurons["label"] == label] if len(self.neurons) else self.neurons
        if rows.empty:
            # None, not NaN: a step's fields compare equal read back, and summary.json stays JSON
            return {"neuron_carriers": [], "new_share": None, "subcomponent_verdict": None}
        recovery = to_base.set_index("component")["recovery"].abs()
        named, weighted, total = [], 0.0, 0.0
        for component in carriers:
            weight = float(recovery.get(component, 0.0))
            layer = mlp_layer(component)
            block = rows[rows["layer"] == layer] if layer is not None else rows.iloc[:0]
            if block.empty:
                new = 0.0 if component in used else 1.0
            else:
                curves = self.neuron_concentration
                curve = curves[(curves["label"] == label) & (curves["layer"] == layer)].sort_values("k")
                top = block.sort_values("rank").head(fewest(curve, self.config.coverage))
                named += [f"{component}/{int(n)}" for n in top["neuron"]]
                unused = top["base_usage"].abs() < self.config.used_share * abs(change)
                rewired = top[["cos_in", "cos_out"]].min(axis=1) < MOVED_BELOW
                share = top["attribution"].abs()
                new = float(share[unused | rewired].sum() / max(float(share.sum()), 1e-12))
            weighted, total = weighted + weight * new, total + weight
        if total <= 0:  # no carrier recovers anything: no share to judge by
            return {"neuron_carriers": named, "new_share": None, "subcomponent_verdict": None}
        new_share = weighted / total
        sub = verdict
        if verdict in ("enhanced", "new"):
            sub = "new" if 1 - new_share < self.config.enhanced_overlap else "enhanced"
        return {"neuron_carriers": named, "new_share": new_share, "subcomponent_verdict": sub}

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
                **{
                    verdict: next((s["step"] for s in steps if s["verdict"] == verdict), None)
                    for verdict in ("enhanced", "new")
                },
                **{
                    f"subcomponent_{verdict}": next(
                        (s["step"] for s in steps if s["subcomponent_verdict"] == verdict), None
                    )
                    for verdict in ("enhanced", "new")
                },
            },
            "agreement": agreement,
        }

    @classmethod
    def load(cls, root: str | Path) -> CircuitsResult:
        """Read a finished ``run_circuits`` output directory."""
        root = Path(root)
        meta = rundir.read_finished(root, rundir.CIRCUITS, "run `rlinterp circuits` again")
        return cls(
            **{name: _read(root / f"{name}.parquet") for name in TABLES},
            metric_name=meta["metric"]["name"],
            metric_description=meta["metric"]["description"],
            config=CircuitsConfig(**meta["config"]),
        )


def fewest(curve: pd.DataFrame, coverage: float) -> int:
    """The smallest ``k`` of a joint-patch curve (``k``, ``recovery`` rows) whose recovery
    reaches ``coverage``; the largest ``k`` measured when none does (0 for no rows)."""
    reached = curve[curve["recovery"] >= coverage]
    if len(reached):
        return int(reached["k"].min())
    return int(curve["k"].max()) if len(curve) else 0


def mlp_layer(component: str) -> int | None:
    """The block of an ``L{l}.mlp`` component name, else None."""
    head, _, kind = component.partition(".")
    return int(head[1:]) if kind == "mlp" and head.startswith("L") else None


def _read(path: Path) -> pd.DataFrame:
    """A table of a finished run; runs from before a table existed lack it (empty)."""
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def _top(frame: pd.DataFrame, k: int) -> list[list[Any]]:
    return [[str(c), float(v)] for c, v in zip(frame["component"][:k], frame["recovery"][:k], strict=True)]
