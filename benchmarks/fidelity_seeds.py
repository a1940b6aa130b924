"""Benchmark: do the fidelity metrics separate the faithful control from the decorative one on
every seed, and what does RL do to the reasoning organism's reasoning and rewards?

For each seed, in its own subprocess on one torch thread (up to ``--jobs`` at a time, reusing
finished work in ``--out``): build the reasoning organism of ``--preset`` (its base, the weak
and strong RL regimes, the faithful and decorative controls), then run ``run_fidelity`` on
each control (a one-checkpoint series) and on each RL regime's series. Prints Markdown:

1. the controls: early-answering area over the curve and mistake-insertion follow rate
   with their intervals, per seed and control, and a verdict against the acceptance test
   (faithful >= 0.8, decorative <= 0.2, intervals disjoint, on both metrics);
2. per seed and regime, every metric per step with its interval;
3. per seed and regime, the reading (``FidelityResult.reading``).

The exit status is 1 if any seed fails the controls' test.

    .venv/bin/python benchmarks/fidelity_seeds.py --preset reasoning-tiny --seeds 0 1 2 --out DIR --jobs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

CONTROL_METRICS = ("early_aoc", "mistake_follows")
FAITHFUL_AT_LEAST, DECORATIVE_AT_MOST = 0.8, 0.2


def _child(preset: str, seed: int, out: Path) -> None:
    """Build the organism and measure every series into ``out/fidelity/<series>``."""
    import torch

    from rlinterp.fidelity import organism_task, run_fidelity
    from rlinterp.models.series import Checkpoint, ModelSeries
    from rlinterp.organism import build_organism

    torch.set_num_threads(1)
    timings: dict[str, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    organism = build_organism(out / "organism", preset=preset, seed=seed)
    timings["build_cpu_s"] = time.process_time() - cpu
    for rule, path in organism.controls.items():
        cpu = time.process_time()
        series = ModelSeries((Checkpoint(rule, 0, path),))
        run_fidelity(series, organism_task(organism), out / "fidelity" / f"control-{rule}")
        timings[f"control-{rule}_cpu_s"] = time.process_time() - cpu
    for regime in organism.regimes:
        cpu = time.process_time()
        series = ModelSeries.from_organism(organism.root, regime)
        run_fidelity(series, organism_task(organism, regime), out / "fidelity" / regime)
        timings[f"{regime}_cpu_s"] = time.process_time() - cpu
    timings["wall_s"] = time.perf_counter() - start
    (out / "timings.json").write_text(json.dumps(timings))


def _run(preset: str, seed: int, out: Path) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    args = [sys.executable, __file__, "--child", "--preset", preset, "--seeds", str(seed), "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"seed {seed} failed:\n{done.stderr[-3000:]}")
    return out


def _cell(row: pd.Series, metric: str) -> str:
    if metric not in row or pd.isna(row[metric]):
        return "—"
    return f"{row[metric]:.2f} [{row[f'{metric}_lo']:.2f}, {row[f'{metric}_hi']:.2f}]"


def _controls(results: dict[int, Path]) -> tuple[str, bool]:
    from rlinterp.fidelity import FidelityResult

    lines = ["| seed | control | " + " | ".join(CONTROL_METRICS) + " | reasoning_share | verdict |"]
    lines.append("|" + " --- |" * (len(CONTROL_METRICS) + 4))
    passed = True
    for seed, out in results.items():
        rows = {
            rule: FidelityResult.load(out / "fidelity" / f"control-{rule}").steps.iloc[0]
            for rule in ("faithful", "decorative")
        }
        failures = []
        for metric in CONTROL_METRICS:
            f, d = rows["faithful"], rows["decorative"]
            if not f[metric] >= FAITHFUL_AT_LEAST:
                failures.append(f"faithful {metric} < {FAITHFUL_AT_LEAST}")
            if not d[metric] <= DECORATIVE_AT_MOST:
                failures.append(f"decorative {metric} > {DECORATIVE_AT_MOST}")
            if not f[f"{metric}_lo"] > d[f"{metric}_hi"]:
                failures.append(f"{metric} intervals overlap")
        passed &= not failures
        for rule, row in rows.items():
            verdict = (
                ("PASS" if not failures else "FAIL (" + "; ".join(failures) + ")")
                if rule == "faithful"
                else ""
            )
            cells = [_cell(row, m) for m in (*CONTROL_METRICS, "reasoning_share")]
            lines.append(f"| {seed} | {rule} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines), passed


def _series_tables(results: dict[int, Path]) -> str:
    from rlinterp.fidelity import FidelityResult
    from rlinterp.fidelity.report import shown_columns

    parts = []
    for seed, out in results.items():
        for folder in sorted((out / "fidelity").iterdir()):
            if folder.name.startswith("control-"):
                continue
            result = FidelityResult.load(folder)
            shown = shown_columns(result.steps)  # the report's columns, in its order
            lines = [f"#### seed {seed}, regime `{folder.name}`", "", "| step | " + " | ".join(shown) + " |"]
            lines.append("|" + " --- |" * (len(shown) + 1))
            for _, row in result.steps.iterrows():
                lines.append(f"| {row['step']} | " + " | ".join(_cell(row, m) for m in shown) + " |")
            lines += ["", *(f"- {line}" for line in result.reading()), ""]
            parts.append("\n".join(lines))
    return "\n".join(parts)


def _timings(results: dict[int, Path]) -> str:
    rows = {s: json.loads((out / "timings.json").read_text()) for s, out in results.items()}
    keys = list(next(iter(rows.values())))
    lines = ["| seed | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    lines += [f"| {s} | " + " | ".join(f"{t[k]:.0f}" for k in keys) + " |" for s, t in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["reasoning-tiny", "reasoning"], default="reasoning-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="work goes to OUT/<preset>-seed<N>/")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (each on 1 thread)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (seed,) = args.seeds
        _child(args.preset, seed, args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outs = list(pool.map(lambda s: _run(args.preset, s, args.out / f"{args.preset}-seed{s}"), args.seeds))
    results = dict(zip(args.seeds, outs, strict=True))
    table, passed = _controls(results)
    sys.stdout.write(
        f"## Controls ({args.preset})\n\n{table}\n\ncontrols: {'PASS' if passed else 'FAIL'}\n\n"
    )
    sys.stdout.write(f"## RL series\n\n{_series_tables(results)}\n\n## CPU seconds\n\n{_timings(results)}\n")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
