"""Benchmark: the selection-versus-novelty index on the organism, every regime, every block.

For each preset and seed, builds the organism (or reuses a finished one under ``--out``),
harvests each regime on the persona texts (answer tokens, as ``rlinterp selection`` does) and
reads it with ``selection.readout`` / ``selection.index`` at their defaults. Writes
``selection_organism.json`` (every row) and prints Markdown tables:

- per (preset, seed, regime, step, block): novelty with its interval, side, the base's and the
  control's unexplained shares, the local share;
- per (preset, seed, regime): the sides of the steps, the transition (step, block) and the
  CPU seconds of the reading;

and a verdict against the acceptance of issue 24: the ``weak`` regime reads selection at
every step, the planted ``novel`` regime novelty from its first step (transition there). The
exit status is 1 if any seed fails.

    .venv/bin/python benchmarks/selection_organism.py --preset tiny --seeds 0 1 2 3 4 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from rlinterp.activations.harvest import HarvestConfig, harvest  # noqa: E402
from rlinterp.activations.prompts import PromptSet  # noqa: E402
from rlinterp.models.series import ModelSeries  # noqa: E402
from rlinterp.organism import Organism, build_organism  # noqa: E402
from rlinterp.selection.index import IndexConfig, novelty_index  # noqa: E402
from rlinterp.selection.readout import ReadoutConfig, readout_parts  # noqa: E402


def read_regime(root: Path, regime: str, out: Path) -> dict[str, Any]:
    """The index of one regime: per-block rows, per-step rows, the transition, CPU seconds."""
    start = time.process_time()
    series = ModelSeries.from_organism(root, regime)
    texts = PromptSet.from_organism(root)
    store = harvest(
        series, texts, out, HarvestConfig(hooks=("blocks.0.hook_resid_post",), response_only=True)
    )
    index = novelty_index(readout_parts(series, store, ReadoutConfig()), IndexConfig())
    return {
        "layers": index.layers.drop(columns=["label", "hook"]).to_dict(orient="records"),
        "steps": index.table.drop(columns=["label", "hook"]).to_dict(orient="records"),
        "transition": index.transition,
        "cpu_s": time.process_time() - start,
    }


def verdict(regime: str, reading: dict[str, Any]) -> str:
    steps = [s for s in reading["steps"] if s["step"] != 0]
    if regime == "weak":
        bad = [s["step"] for s in steps if s["side"] != "selection"]
        return "PASS" if not bad else f"FAIL (steps {bad} not selection)"
    if regime == "novel":
        bad = [s["step"] for s in steps if s["side"] != "novelty"]
        first = steps[0]["step"]
        if bad or reading["transition"]["step"] != first:
            return f"FAIL (steps {bad} not novelty; transition {reading['transition']['step']})"
        return "PASS"
    return "—"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "default"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--regimes", nargs="+", default=["weak", "strong", "novel"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    failed = False
    for seed in args.seeds:
        root = args.out / f"{args.preset}-seed{seed}"
        if not (root / "manifest.json").is_file():
            build_organism(root, preset=args.preset, seed=seed)
        Organism.load(root)
        for regime in args.regimes:
            reading = read_regime(root, regime, args.out / "stores" / f"{args.preset}-{seed}-{regime}")
            judged = verdict(regime, reading)
            failed |= judged.startswith("FAIL")
            rows.append({"preset": args.preset, "seed": seed, "regime": regime, "verdict": judged, **reading})
            sys.stdout.write(summary_line(rows[-1]) + "\n")
            sys.stdout.flush()
    seeds = "-".join(map(str, args.seeds))
    (args.out / f"selection_organism_{args.preset}_{seeds}.json").write_text(
        json.dumps(rows, indent=1, default=str)
    )
    sys.stdout.write("\n" + layer_table(rows) + "\n\n" + step_table(rows) + "\n")
    return 1 if failed else 0


def summary_line(row: dict[str, Any]) -> str:
    sides = " ".join(f"{s['step']}:{s['side'][:3]}({s['index']:.2f})" for s in row["steps"])
    t = row["transition"]
    where = f"step {t['step']} block {t['layer']}" if t["found"] else "none"
    return (
        f"{row['preset']} seed {row['seed']} {row['regime']}: {sides}; transition {where}; "
        f"{row['cpu_s']:.0f} CPU-s; {row['verdict']}"
    )


def layer_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| preset | seed | regime | step | block | novelty [90% interval] | side "
        "| unexplained base / control | local share |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        for r in row["layers"]:
            if r["step"] == 0:
                continue
            lines.append(
                f"| {row['preset']} | {row['seed']} | {row['regime']} | {r['step']} | {r['layer']} | "
                f"{r['novelty']:.2f} [{r['novelty_lo']:.2f}, {r['novelty_hi']:.2f}] | {r['side']} | "
                f"{r['unexplained_base']:.3f} / {r['unexplained_control']:.3f} | {r['local_share']:.2f} |"
            )
    return "\n".join(lines)


def step_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | seed | regime | steps (side, index) | transition | CPU-s | verdict |",
        "|" + "---|" * 7,
    ]
    for row in rows:
        steps = ", ".join(
            f"{s['step']}: {s['side']} {s['index']:.2f} [{s['index_lo']:.2f}, {s['index_hi']:.2f}] "
            f"(block {s['layer']})"
            for s in row["steps"]
            if s["step"] != 0
        )
        t = row["transition"]
        where = (
            f"step {t['step']} ({t['step_lo']}-{t['step_hi']}), block {t['layer']}" if t["found"] else "none"
        )
        lines.append(
            f"| {row['preset']} | {row['seed']} | {row['regime']} | {steps} | {where} | {row['cpu_s']:.0f} | "
            f"{row['verdict']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
