"""Benchmark: does the organism tell its story on every seed, with margin?

Builds the organism of one preset for each seed (each build in its own subprocess on one
torch thread, up to ``--jobs`` at a time, reusing finished builds in ``--out``), then
prints a Markdown table: per seed and regime the correct personas' (helper + terse) share
at the first and last step and its rise, the largest and the last ``none`` share, and the
build's wall-clock time (from its manifest) and CPU time (of the build process; on a
shared machine this is about what the build takes alone). A last row gives the median
and range of each column, and each seed gets a PASS/FAIL verdict against the story:

- weak: the correct personas' share rises by at least 15 pp from the first to the last
  step (and by at least 20 pp in the median over seeds), and ``none`` stays under 10% at
  every step;
- strong: ``none`` is above 50% at the last step;
- rule: the rule is learned (its ``rule_accuracy`` interval above ``RULE_LEARNED`` at the
  last step), the held-out-number probe reads it near chance on the base (at most
  ``PROBE_BASE_MAX`` at every block) and well at the last step (at least
  ``PROBE_LEARNED_MIN`` at some block), while it reads parity, which the base computes,
  above ``PROBE_LEARNED_MIN`` on the base (the probe's own control);
- every other regime is a control for the rule: it never learns it.

Regimes without criteria (a later third regime, say) are reported, not judged. The exit
status is 1 if any seed, or the weak median, fails.

    .venv/bin/python benchmarks/organism_seeds.py --preset tiny --seeds 0 1 2 3 4 --out DIR --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from rlinterp.organism.behaviour import RULE_LEARNED, RegimeSummary

CRITERIA: dict[str, list[tuple[str, Callable[[RegimeSummary], bool]]]] = {
    "weak": [
        ("correct rise >= 15 pp", lambda s: s.correct_rise >= 0.15),
        ("none < 10% at every step", lambda s: s.none_max < 0.10),
        ("rule never learned", lambda s: s.rule_learned_step is None),
    ],
    "strong": [
        ("none > 50% at the last step", lambda s: s.none_last > 0.50),
        ("rule never learned", lambda s: s.rule_learned_step is None),
    ],
    "novel": [("rule never learned", lambda s: s.rule_learned_step is None)],
    "rule": [
        (f"rule accuracy interval > {RULE_LEARNED} at the last step", lambda s: s.rule_last_lo > RULE_LEARNED)
    ],
}
"""Per regime name: what must hold on every seed."""
PROBE_BASE_MAX = 0.65
"""The rule probe on the base must stay at or under this at every block (chance is 0.5; the
tiny seed-0 base reads 0.40-0.47)."""
PROBE_LEARNED_MIN = 0.8
"""The rule probe at the rule regime's last step, and the parity probe on the base, must
reach this at some block."""
WEAK_MEDIAN_RISE = 0.20
"""The weak regime's correct-persona rise, median over seeds, must reach this."""


@dataclasses.dataclass(frozen=True)
class SeedResult:
    """One seed's build, reduced to what the table shows."""

    seed: int
    build_s: float
    """Wall-clock seconds of the build, from its manifest."""
    cpu_s: float | None
    """CPU seconds of the build process; None if it was built before this script ran."""
    regimes: list[RegimeSummary]
    probes: dict[str, float]
    """The rule regime's probes, best block (``rules.probe_rule``): ``base_rule`` (the
    largest over blocks, the one that must stay near chance), ``last_rule`` and
    ``base_parity``; empty without a rule regime."""
    rule_rows: pd.DataFrame | None = None
    """The rule regime's behaviour rows (``step``, ``rule_accuracy`` and its interval)."""

    def failures(self) -> list[str]:
        found = [
            f"{s.regime}: {name}"
            for s in self.regimes
            for name, ok in CRITERIA.get(s.regime, [])
            if not ok(s)
        ]
        if self.probes:
            if self.probes["base_rule"] > PROBE_BASE_MAX:
                found.append(f"rule: base probe {self.probes['base_rule']:.2f} > {PROBE_BASE_MAX}")
            if self.probes["last_rule"] < PROBE_LEARNED_MIN:
                found.append(f"rule: last-step probe {self.probes['last_rule']:.2f} < {PROBE_LEARNED_MIN}")
            if self.probes["base_parity"] < PROBE_LEARNED_MIN:
                found.append(f"rule: parity control {self.probes['base_parity']:.2f} < {PROBE_LEARNED_MIN}")
        return found


def _build(preset: str, seed: int, out: Path) -> None:
    """Child process: build (or reuse) one organism and record its CPU time beside it."""
    from rlinterp.organism import build_organism

    cpu_file = out.with_name(out.name + ".cpu.json")
    reused = (out / "manifest.json").is_file()
    start = time.process_time()
    build_organism(out, preset=preset, seed=seed)
    if not reused:
        cpu_file.write_text(json.dumps({"cpu_s": time.process_time() - start}))


def _result(preset: str, seed: int, out: Path) -> SeedResult:
    """Build seed ``seed`` in a subprocess (if not built yet) and read its result."""
    from rlinterp.organism import Organism
    from rlinterp.organism.behaviour import summarize

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
    organism = Organism.load(out)
    cpu_file = out.with_name(out.name + ".cpu.json")
    behaviour = organism.behaviour()
    return SeedResult(
        seed=seed,
        build_s=organism.manifest["timings_s"]["total_s"],
        cpu_s=json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.is_file() else None,
        regimes=summarize(behaviour),
        probes=_probes(organism.manifest),
        rule_rows=behaviour[behaviour["regime"] == "rule"].sort_values("step"),
    )


def _probes(manifest: dict) -> dict[str, float]:
    """``SeedResult.probes`` from an organism manifest."""
    entry = next((r for r in manifest["regimes"].values() if "rule" in r), None)
    if entry is None:
        return {}
    rows = entry["probe"]
    last = max(r["step"] for r in rows)

    def best(step: int, feature: str) -> float:
        return max(r["balanced_accuracy"] for r in rows if r["step"] == step and r["feature"] == feature)

    return {"base_rule": best(0, "rule"), "last_rule": best(last, "rule"), "base_parity": best(0, "parity")}


def _spread(values: list[float], fmt: str) -> str:
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} ({low} … {high})"


def _table(preset: str, results: list[SeedResult]) -> str:
    """One row per seed, then the median and range; per regime: the correct personas' share
    first -> last (rise), the largest and the last ``none``, and the first step at which
    ``none`` is the majority."""
    names = [s.regime for s in results[0].regimes]
    header = ["preset", "seed"]
    for name in names:
        header += [
            f"{name}: correct personas, first → last step",
            f"{name}: largest `none`",
            f"{name}: `none` at the last step",
            f"{name}: first step with `none` > 50%",
        ]
    header += ["rule accuracy per step [90% interval]", "rule probe base → last (parity on base)"]
    header += ["build wall (s)", "build CPU (s)", "verdict"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        row = [f"`{preset}`", str(r.seed)]
        for s in r.regimes:
            step = "never" if s.none_majority_step is None else f"{s.none_majority_step} of {s.last_step}"
            row += [
                f"{s.correct_first:.2f} → {s.correct_last:.2f} ({100 * s.correct_rise:+.1f} pp)",
                f"{s.none_max:.3f}",
                f"{s.none_last:.2f}",
                step,
            ]
        row += [_rule_steps(r), _probe_cell(r)]
        failures = r.failures()
        verdict = "PASS" if not failures else "FAIL (" + "; ".join(failures) + ")"
        rows.append([*row, f"{r.build_s:.0f}", "—" if r.cpu_s is None else f"{r.cpu_s:.0f}", verdict])
    row = [f"`{preset}`", "median (range)"]
    for i in range(len(names)):
        column = [r.regimes[i] for r in results]
        steps = [s.none_majority_step for s in column if s.none_majority_step is not None]
        row += [
            _spread([100 * s.correct_rise for s in column], "{:+.1f}") + " pp",
            _spread([s.none_max for s in column], "{:.3f}"),
            _spread([s.none_last for s in column], "{:.2f}"),
            _spread([float(x) for x in steps], "{:.0f}") if len(steps) == len(column) else "—",
        ]
    row += ["", ""]
    cpu = [r.cpu_s for r in results if r.cpu_s is not None]
    row += [_spread([r.build_s for r in results], "{:.0f}"), _spread(cpu, "{:.0f}") if cpu else "—", ""]
    rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _rule_steps(result: SeedResult) -> str:
    """The rule regime's ``rule_accuracy [lo, hi]`` at each step, from the behaviour table."""
    rows = result.rule_rows
    if rows is None or rows.empty:
        return "—"
    return "; ".join(
        f"{int(r.step)}: {r.rule_accuracy:.2f} [{r.rule_accuracy_lo:.2f}, {r.rule_accuracy_hi:.2f}]"
        for r in rows.itertuples()
    )


def _probe_cell(result: SeedResult) -> str:
    p = result.probes
    return f"{p['base_rule']:.2f} → {p['last_rule']:.2f} ({p['base_parity']:.2f})" if p else "—"


def _report(preset: str, results: list[SeedResult]) -> bool:
    """Write the table and verdicts to stdout; return whether every check passed."""
    sys.stdout.write(f"preset {preset}, seeds {[r.seed for r in results]}\n\n{_table(preset, results)}\n\n")
    passed = all(not r.failures() for r in results)
    rises = [s.correct_rise for r in results for s in r.regimes if s.regime == "weak"]
    if rises:
        median_ok = statistics.median(rises) >= WEAK_MEDIAN_RISE
        passed &= median_ok
        sys.stdout.write(
            f"weak median rise {100 * statistics.median(rises):+.1f} pp "
            f"(needs >= {100 * WEAK_MEDIAN_RISE:.0f}): {'PASS' if median_ok else 'FAIL'}\n"
        )
    sys.stdout.write(f"overall: {'PASS' if passed else 'FAIL'}\n")
    return passed


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
        _build(args.preset, seed, args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(
            pool.map(lambda s: _result(args.preset, s, args.out / f"{args.preset}-seed{s}"), args.seeds)
        )
    sys.exit(0 if _report(args.preset, results) else 1)


if __name__ == "__main__":
    main()
