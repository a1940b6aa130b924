"""A finished (or partly finished) ``rlinterp run`` directory, read back as one object.

``RunResult.load(path)`` reads every table the stages wrote; it is what the report, the
paper figures and notebooks work from, so none of them needs a model. A table a stage
has not written is empty, and whatever reads it shows an empty state instead.

``summary()`` is the headline table: one row per (series, step) with the KL, the
activation change at the deepest hook, the base SAE's FVU, and the headline columns of the
later stages (``HEADLINES``, in order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.artifacts import read_json_object
from ..dictionaries.cards import FeatureCard
from ..diff.analysis import SeriesDiff
from ..errors import RlinterpError
from ..selection.report import step_side
from ..tracking.lineage import CHANGES
from .verdict import verdict_lines


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


@dataclass(frozen=True)
class RunResult:
    """The tables of one run directory."""

    root: Path
    config: dict[str, Any]
    diffs: dict[str, SeriesDiff]
    """Series name -> its diff tables, in run order."""
    behaviour: pd.DataFrame
    """The organism's behaviour table (empty for checkpoint series)."""
    fvu_drift: pd.DataFrame
    latent_steps: pd.DataFrame
    contexts: pd.DataFrame
    decoder_tokens: pd.DataFrame
    dictionary_info: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tables of later stages, ``<stage>/<name>`` -> frame (every Parquet file of a stage
    folder other than ``diff`` and ``dictionaries``)."""

    @classmethod
    def load(cls, root: str | Path) -> RunResult:
        root = Path(root)
        claim = root / ".run.json"
        if not claim.is_file() and not (root / "manifest.json").is_file():
            raise RlinterpError(f"{root} is not an rlinterp run directory; run `rlinterp run` first")
        remedy = "run `rlinterp run` again into a new directory"
        claimed = read_json_object(claim if claim.is_file() else root / "manifest.json", remedy)
        config = claimed.get("config", {})
        diff_root = root / "diff"
        diffs = {
            name: SeriesDiff.load(diff_root / name)
            for name in claimed.get("series", [])
            if (diff_root / name / "manifest.json").is_file()
        }
        behaviour = pd.DataFrame()
        organism = claimed.get("organism")
        if organism and (Path(organism) / "behaviour.parquet").is_file():
            behaviour = pd.read_parquet(Path(organism) / "behaviour.parquet")
        dictionaries = root / "dictionaries"
        info = dictionaries / "info.json"
        later = {
            f"{p.parent.name}/{p.stem}": pd.read_parquet(p)
            for p in sorted(root.glob("*/*.parquet"))
            if p.parent.name not in ("diff", "dictionaries")
        }
        return cls(
            root=root,
            config=config,
            diffs=diffs,
            behaviour=behaviour,
            fvu_drift=_read(dictionaries / "fvu_drift.parquet"),
            latent_steps=_read(dictionaries / "latent_steps.parquet"),
            contexts=_read(dictionaries / "contexts.parquet"),
            decoder_tokens=_read(dictionaries / "decoder_tokens.parquet"),
            dictionary_info=read_json_object(info, remedy) if info.is_file() else {},
            tables=later,
        )

    @property
    def series(self) -> list[str]:
        return list(self.diffs)

    def summary(self) -> pd.DataFrame:
        """One row per (series, step): ``kl_mean``, ``activation_change`` (deepest hook),
        ``fvu`` of the base SAE, and the later stages' headline columns (``HEADLINES``)."""
        rows = []
        for name, diff in self.diffs.items():
            for row in diff.summary():
                rows.append(
                    {
                        "series": name,
                        "step": row["step"],
                        "kl_mean": row["kl_mean"],
                        "activation_change": row["activation_rel_diff_norm"],
                    }
                )
        frame = pd.DataFrame(rows, columns=["series", "step", "kl_mean", "activation_change"])
        if not self.fvu_drift.empty:
            fvu = self.fvu_drift[["series", "step", "fvu"]]
            frame = frame.merge(fvu, on=["series", "step"], how="left")
        for headline in HEADLINES:
            columns = headline(self)
            if not columns.empty:  # a stage that has not run adds no column
                frame = frame.merge(columns, on=["series", "step"], how="left")
        return frame

    def in_run_order(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame``'s rows by ``series`` in the run's order (each series' rows keep theirs;
        a series the run does not list comes last): every table and figure of a run shows
        the regimes in one order."""
        if frame.empty or "series" not in frame:
            return frame
        rank = frame["series"].map({name: i for i, name in enumerate(self.series)}).fillna(len(self.series))
        return frame.iloc[rank.to_numpy().argsort(kind="stable")]

    def latent_table(self) -> pd.DataFrame:
        """One row per latent: base firing rate, and per series the firing rate and mean
        activation at its last step with the change from the base; the top promoted token.
        Sorted by the largest absolute change in mean activation."""
        steps = self.latent_steps
        if steps.empty:
            return pd.DataFrame()
        base = steps[steps["step"] == 0].drop_duplicates("latent").set_index("latent")
        table = pd.DataFrame({"latent": base.index, "base_firing": base["firing_rate"].to_numpy()})
        score = pd.Series(0.0, index=base.index)
        for name, group in self.in_run_order(steps).groupby("series", sort=False):
            last = group[group["step"] == group["step"].max()].set_index("latent")
            change = last["mean_activation"] - base["mean_activation"]
            table[f"{name}_firing"] = last["firing_rate"].to_numpy()
            table[f"{name}_change"] = change.to_numpy()
            score = score.combine(change.abs(), max)
        promoted = self.decoder_tokens[
            (self.decoder_tokens["direction"] == "promoted") & (self.decoder_tokens["rank"] == 0)
        ].set_index("latent")["token"]
        table["promotes"] = table["latent"].map(lambda j: repr(promoted.get(j, "")))
        table["score"] = score.to_numpy()
        return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def card(self, latent: int) -> FeatureCard:
        """The feature card of ``latent`` (renders in Jupyter)."""
        if self.latent_steps.empty:
            raise RlinterpError(f"{self.root} has no dictionaries yet; run the dictionaries stage")
        lineage = self.tables.get("tracking/lineage")
        if lineage is not None and "latent" in lineage:
            lineage = _lineage_by_step(self.in_run_order(lineage[lineage["latent"] == latent]))
        contexts = self.in_run_order(self.contexts[self.contexts["latent"] == latent])
        if "series" in contexts:  # the base's contexts first, then each series'
            contexts = contexts.iloc[(contexts["series"] != "base").to_numpy().argsort(kind="stable")]
        return FeatureCard(
            latent=latent,
            activity=self.in_run_order(self.latent_steps[self.latent_steps["latent"] == latent]),
            contexts=contexts,
            decoder=self.decoder_tokens[self.decoder_tokens["latent"] == latent],
            lineage=lineage,
        )

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def _repr_html_(self) -> str:
        from ..core.report import esc, table

        return (
            f"<p><b>rlinterp run</b> {esc(self.root)} — report: "
            f"<a href='{esc(self.report_path)}'>{esc(self.report_path)}</a></p>" + table(self.summary())
        )


def tracking_headline(run: RunResult) -> pd.DataFrame:
    """``changed_latents``: tracked latents in a changing lineage class at each step, on the
    on-policy source where it was measured (what the checkpoint writes), else the first."""
    summary = run.tables.get("tracking/summary", pd.DataFrame())
    if summary.empty:
        return summary
    preferred = "on-policy" if "on-policy" in set(summary["source"]) else summary["source"].iloc[0]
    rows = summary[summary["source"] == preferred]
    changed = rows[[f"n_{c}" for c in CHANGES if f"n_{c}" in rows]].sum(axis=1)
    return pd.DataFrame({"series": rows["series"], "step": rows["step"], "changed_latents": changed})


def index_headline(run: RunResult) -> pd.DataFrame:
    """``index``: the selection-versus-novelty index (0 selection, 1 novelty) per step, with
    ``index_side`` (selection, novelty or undecided, ``selection.report.step_side``) and
    ``index_layer`` (the block it names) where the index read every block."""
    index = run.tables.get("selection/index", pd.DataFrame())
    if index.empty:
        return index
    headline = index[["series", "step", "index"]].assign(
        index_side=[step_side(row) for _, row in index.iterrows()]
    )
    return headline.assign(index_layer=index["layer"]) if "layer" in index else headline


def circuits_headline(run: RunResult) -> pd.DataFrame:
    """``circuits_<metric>``: the circuits verdict per metric (enhanced, new, unclear, no change)."""
    steps = run.tables.get("circuits/steps", pd.DataFrame())
    if steps.empty:
        return steps
    wide = steps.pivot_table(index=["series", "step"], columns="metric", values="verdict", aggfunc="first")
    return wide.rename(columns=lambda m: f"circuits_{m}").reset_index().rename_axis(columns=None)


def fidelity_headline(run: RunResult) -> pd.DataFrame:
    """``early_aoc`` (early answering: 1 when the answer needs all of the reasoning) and
    ``proxy_gold_gap`` (the optimised reward minus the gold one) per step, of the series the
    fidelity stage measured."""
    steps = run.tables.get("fidelity/steps", pd.DataFrame())
    shown = {c: n for c, n in (("early_aoc", "early_aoc"), ("gap", "proxy_gold_gap")) if c in steps}
    return steps[["series", "step", *shown]].rename(columns=shown) if shown else pd.DataFrame()


HEADLINES: tuple[Callable[[RunResult], pd.DataFrame], ...] = (
    tracking_headline,
    index_headline,
    circuits_headline,
    fidelity_headline,
)
"""The later stages' headline columns of ``RunResult.summary()``, in order: each returns
``series, step`` plus its columns (empty when its stage has not run)."""


def _lineage_by_step(rows: pd.DataFrame) -> pd.DataFrame:
    """One latent's lineage rows as one row per (series, source) and a class per step."""
    if rows.empty or "series" not in rows:
        return rows
    wide = rows.pivot_table(
        index=["series", "source"], columns="step", values="class", aggfunc="first", sort=False
    )
    return wide.rename(columns=lambda step: f"step {step}").reset_index().rename_axis(columns=None)


def fidelity_lines(run: RunResult) -> list[str]:
    """The fidelity stage's reading of each series it measured (``FidelityResult.reading``:
    whether RL made the reasoning less faithful, whether and where proxy and gold diverged),
    in the run's order; none for a run whose series state no reasoning."""
    readings = run.in_run_order(run.tables.get("fidelity/readings", pd.DataFrame()))
    return [
        f"{series} (reasoning): {line}"
        for series, line in zip(readings.get("series", []), readings.get("line", []), strict=True)
    ]


def summary_text(run: RunResult) -> str:
    """The run's headline table for a terminal (one screen), and where the report is."""
    summary = run.summary()
    lines = []
    for name, group in summary.groupby("series", sort=False):
        shown = group.drop(columns=["series"])
        lines.append(f"{name}:")
        lines.append(shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
    latents = run.latent_table()
    if not latents.empty:
        top = ", ".join(
            f"{j} ({t})" for j, t in zip(latents["latent"].head(5), latents["promotes"].head(5), strict=True)
        )
        lines.append(f"latents that changed most (promoted token): {top}")
    lines += verdict_lines(run.tables, run.series)
    lines += fidelity_lines(run)
    lines.append(f"report: {run.report_path}")
    return "\n".join(lines) + "\n"
