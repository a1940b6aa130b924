"""Benchmark: circuit diffs on a built organism, and attribution patching against exact.

For every regime in the organism's manifest and every organism metric (``answer``,
``persona``, ``shortcut``), runs ``run_circuits`` once per attribution estimator
(``--estimators``: ``1`` step, or ``STEPS:component`` / ``STEPS:site``; default 1, 2:site and
``CircuitsConfig``'s default), each into its own folder of
``--out`` (a finished run of the same inputs is read back, not recomputed), then prints
Markdown tables:

- agreement: per regime, metric and setting (``to_base``: checkpoint -> base, ``to_checkpoint``:
  base -> checkpoint, ``within``: clean -> corrupted inside each model), the lowest Spearman
  rank correlation over steps between attribution and exact patching, with its step, for
  each estimator, and the lowest over everything;
- per regime and metric (``--verdicts``, default the weak regime's ``persona`` and the strong
  regime's ``shortcut``), per step: the metric change, the top components by checkpoint ->
  base recovery, the carriers and their joint recovery, the components the base already
  used, and the verdict.

    PYTHONPATH=. .venv/bin/python benchmarks/circuits_organism.py --organism DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from rlinterp import CircuitsConfig, CircuitsResult, ModelSeries, run_circuits
from rlinterp.circuits.organism_metrics import METRICS, organism_behaviour


def markdown(rows: list[dict[str, object]]) -> str:
    """A Markdown table of ``rows`` (columns: the first row's keys)."""
    columns = list(rows[0])
    lines = [columns, ["---"] * len(columns), *([str(row[c]) for c in columns] for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def run_all(organism: Path, out: Path, estimators: list[str]) -> pd.DataFrame:
    """Every (regime, metric, estimator) circuits run; their agreement tables, concatenated.
    An estimator is ``1`` or ``STEPS:INTERPOLATION`` (``2:component``, ``2:site``)."""
    regimes = sorted(json.loads((organism / "manifest.json").read_text())["regimes"])
    frames = []
    for regime in regimes:
        series = ModelSeries.from_spec([organism], regime=regime)
        for name in METRICS:
            metric, prompts = organism_behaviour(organism, name)
            for estimator in estimators:
                steps, _, path = estimator.partition(":")
                path = path or "component"
                config = CircuitsConfig(attribution_steps=int(steps), attribution_interpolation=path)
                start = time.perf_counter()
                result = run_circuits(series, metric, prompts, out / f"{regime}-{name}-{estimator}", config)
                seconds = time.perf_counter() - start
                row = {"regime": regime, "metric": name, "steps": estimator, "seconds": seconds}
                frames.append(result.agreement.assign(**row))
    return pd.concat(frames, ignore_index=True)


def agreement_table(agreement: pd.DataFrame) -> str:
    """Lowest Spearman over steps per regime, metric and setting, one column per
    estimator: ``rho (step)``."""
    rows = []
    for (regime, metric, setting), group in agreement.groupby(["regime", "metric", "setting"], sort=True):
        row = {"regime": regime, "metric": metric, "setting": setting}
        for n, by_steps in group.groupby("steps"):
            worst = by_steps.loc[by_steps["spearman"].idxmin()]
            row[str(n)] = f"{worst['spearman']:.2f} (step {int(worst['step'])})"
        rows.append(row)
    lowest = agreement.groupby("steps")["spearman"].min()
    footer = ", ".join(f"{n}: {v:.2f}" for n, v in lowest.items())
    return markdown(rows) + f"\n\nlowest over everything: {footer}\n"


def verdict_table(result: CircuitsResult) -> str:
    """Per step: change, top components (recovery), carriers, joint recovery, base_used,
    overlap and verdict."""
    rows = []
    for step in result.steps():
        rows.append(
            {
                "step": step["step"],
                "change": f"{step['change']:+.2f}",
                "top components (recovery)": ", ".join(
                    f"{c} {r:.2f}" for c, r in step["top_sufficiency"][:3]
                ),
                "carriers (joint recovery)": f"{', '.join(step['carriers'])} ({step['joint_recovery']:.2f})",
                "base used": ", ".join(step["base_used"]),
                "overlap": f"{step['overlap']:.2f}",
                "verdict": step["verdict"],
            }
        )
    return markdown(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organism", type=Path, required=True, help="a built organism folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the circuits runs")
    default = f"{CircuitsConfig.attribution_steps}:{CircuitsConfig.attribution_interpolation}"
    parser.add_argument(
        "--estimators", nargs="+", default=["1", "2:site", default], help="1 or STEPS:component|site"
    )
    parser.add_argument("--verdicts", nargs="+", default=["weak:persona", "strong:shortcut"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    agreement = run_all(args.organism, args.out, args.estimators)
    agreement.to_csv(args.out / "agreement.csv", index=False)
    print("## Attribution vs exact patching: lowest Spearman over steps\n")  # noqa: T201
    print(agreement_table(agreement))  # noqa: T201
    runs = agreement.drop_duplicates(["regime", "metric", "steps"])
    seconds = runs.groupby("steps")["seconds"].sum()
    print("seconds per estimator (all runs, 0 if reused):", seconds.round(1).to_dict(), "\n")  # noqa: T201
    shown = args.estimators[-1]
    for pair in args.verdicts:
        regime, metric = pair.split(":")
        result = CircuitsResult.load(args.out / f"{regime}-{metric}-{shown}")
        print(f"## {regime} regime, metric {metric} (attribution {shown})\n")  # noqa: T201
        print(verdict_table(result), "\n")  # noqa: T201


if __name__ == "__main__":
    main()
