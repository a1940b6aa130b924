"""Benchmark: does the organism tell its story on every seed, with margin?

Builds the organism of one preset for each seed (each build in its own subprocess, up to
``--jobs`` at a time, reusing finished builds in ``--out``), then prints a Markdown table:
per seed and regime the correct personas' share at the first and last step and its rise,
the largest and the last ``none`` share, and the build's wall-clock time (from its
manifest) and CPU time (of the build process, when it was built by this run: on a shared
machine this is the time the build takes alone on one thread); then the median and range of
each column and a PASS/FAIL verdict per seed against the story's criteria:

- weak: the correct personas' (helper + terse) share rises by at least 15 pp from the
  first to the last step on every seed (median at least 20 pp), and ``none`` stays under
  10% at every step;
- strong: ``none`` is above 50% at the last step.

Regimes without criteria (a later third regime, say) are reported, not judged. The exit
status is 1 if any seed, or the weak median, fails.

    .venv/bin/python benchmarks/organism_seeds.py --preset tiny --seeds 0 1 2 3 4 --out DIR --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rlinterp.organism.behaviour import RegimeSummary

Criterion = tuple[str, Callable[[RegimeSummary], bool]]
CRITERIA: dict[str, list[Criterion]] = {
    "weak": [
        ("correct rise >= 15 pp", lambda s: s.correct_rise >= 0.15),
        ("none < 10% at every step", lambda s: s.none_max < 0.10),
    ],
    "strong": [("none > 50% at the last step", lambda s: s.none_last > 0.50)],
}
WEAK_MEDIAN_RISE = 0.20
"""The weak regime's correct-persona rise, median over seeds, must reach this."""


def _child(preset: str, seed: int, out: Path) -> dict[str, object]:
    """Build (or reuse) one organism; return its per-regime summaries and build time."""
    import dataclasses

    from rlinterp.organism import build_organism
    from rlinterp.organism.behaviour import summarize

    reused = (out / "manifest.json").is_file()
    cpu = time.process_time()
    organism = build_organism(out, preset=preset, seed=seed)
    return {
        "seed": seed,
        "build_s": organism.manifest["timings_s"]["total_s"],
        "cpu_s": None if reused else time.process_time() - cpu,
        "regimes": [dataclasses.asdict(s) for s in summarize(organism.behaviour())],
    }


def _run_child(preset: str, seed: int, out: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
    }
    args = [sys.executable, __file__, "--child", "--preset", preset, "--seeds", str(seed), "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _failures(summaries: list[RegimeSummary]) -> list[str]:
    return [
        f"{s.regime}: {name}" for s in summaries for name, holds in CRITERIA.get(s.regime, []) if not holds(s)
    ]


def _cells(s: RegimeSummary) -> list[str]:
    return [
        f"{s.correct_first:.2f} → {s.correct_last:.2f}",
        f"{100 * s.correct_rise:+.1f}",
        f"{s.none_max:.3f}",
        f"{s.none_last:.3f}",
    ]


def _report(preset: str, results: list[dict[str, object]]) -> bool:
    """Write the table and verdicts to stdout; return whether every check passed."""
    regimes = [r["regime"] for r in results[0]["regimes"]]  # type: ignore[index]
    header = ["seed"]
    for regime in regimes:
        header += [
            f"{regime} correct first → last",
            f"{regime} rise (pp)",
            f"{regime} none max",
            f"{regime} none last",
        ]
    header += ["build wall (s)", "build CPU (s)", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    per_seed: dict[int, list[RegimeSummary]] = {}
    all_pass = True
    for result in results:
        summaries = [RegimeSummary(**r) for r in result["regimes"]]  # type: ignore[union-attr]
        per_seed[int(result["seed"])] = summaries  # type: ignore[call-overload]
        failures = _failures(summaries)
        all_pass &= not failures
        verdict = "PASS" if not failures else "FAIL (" + "; ".join(failures) + ")"
        row = [str(result["seed"])] + [c for s in summaries for c in _cells(s)]
        cpu = "reused" if result["cpu_s"] is None else f"{result['cpu_s']:.0f}"
        lines.append("| " + " | ".join([*row, f"{result['build_s']:.0f}", cpu, verdict]) + " |")

    def spread(values: list[float], fmt: str) -> str:
        return (
            f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))} … {fmt.format(max(values))})"
        )

    row = ["median (range)"]
    for i, _ in enumerate(regimes):
        column = [seed[i] for seed in per_seed.values()]
        row += [
            spread([s.correct_first for s in column], "{:.2f}")
            + " → "
            + spread([s.correct_last for s in column], "{:.2f}"),
            spread([100 * s.correct_rise for s in column], "{:+.1f}"),
            spread([s.none_max for s in column], "{:.3f}"),
            spread([s.none_last for s in column], "{:.3f}"),
        ]
    build = [float(r["build_s"]) for r in results]  # type: ignore[arg-type]
    cpu = [float(r["cpu_s"]) for r in results if r["cpu_s"] is not None]  # type: ignore[arg-type]
    row += [spread(build, "{:.0f}"), spread(cpu, "{:.0f}") if cpu else "", ""]
    lines.append("| " + " | ".join(row) + " |")
    sys.stdout.write(f"preset {preset}, seeds {sorted(per_seed)}\n\n" + "\n".join(lines) + "\n\n")

    weak = [s.correct_rise for seed in per_seed.values() for s in seed if s.regime == "weak"]
    if weak:
        median_ok = statistics.median(weak) >= WEAK_MEDIAN_RISE
        all_pass &= median_ok
        sys.stdout.write(
            f"weak median rise {100 * statistics.median(weak):+.1f} pp "
            f"(needs >= {100 * WEAK_MEDIAN_RISE:.0f}): {'PASS' if median_ok else 'FAIL'}\n"
        )
    sys.stdout.write(f"overall: {'PASS' if all_pass else 'FAIL'}\n")
    return all_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, required=True, help="builds go to OUT/<preset>-seed<N>/")
    parser.add_argument("--jobs", type=int, default=1, help="builds run at once (each on 1 thread)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (seed,) = args.seeds
        sys.stdout.write(json.dumps(_child(args.preset, seed, args.out)) + "\n")
        return
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(
            pool.map(lambda s: _run_child(args.preset, s, args.out / f"{args.preset}-seed{s}"), args.seeds)
        )
    sys.exit(0 if _report(args.preset, results) else 1)


if __name__ == "__main__":
    main()
