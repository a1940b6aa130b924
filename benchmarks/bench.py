"""Benchmark: rlinterp against the tools researchers would use instead, in one run.

Runs every lane with one torch thread and a fixed seed (on the GPU in bfloat16 when there
is one, see ``_measure.DEVICE``; the machine record names the card), contenders interleaved (A B A B)
after a warm-up, each measured run in a forked child (see ``_measure``), and writes
``bench.json`` (settings, machine, FLOP formulas, calibration, every lane's medians and
spreads, targets) and ``bench.html`` (a plotly figure of medians and spreads) into
``--out``:

- calibration: matmul GFLOP/s at each lane's shapes (``calibration``);
- Lane A: dictionary training, rlinterp vs SAELens' trainer vs a plain PyTorch TopK loop,
  plus the diff-SAE and crosscoder (``lane_dictionaries``);
- Lane B: harvesting a checkpoint series at a short and a long context, rlinterp vs
  TransformerLens loops and forward-only floors (``lane_harvest``);
- Lane C: a sweep of dictionaries on one pass over the activations vs separate runs;
- scaling: rlinterp's harvest and diff on 1x/4x/16x the prompts and 2/4/8 checkpoints;
- CLI: ``import rlinterp``, ``rlinterp --help``, an argument error and ``--print-config`` in
  fresh interpreters, median of 5 (``lane_cli``), against the full library import.

    make bench        # or: .venv/bin/python benchmarks/bench.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402  # after the environment above

THREADS = 1
SEED = 0
TARGETS = {
    "A": "rlinterp >= 1.0x SAELens' trainer and >= 0.9x the plain loop at equal explained variance; "
    "eta >= 0.5 for the dense SAE",
    "B": ">= 0.9x the plain transformers forward at both contexts (median of 5 interleaved repeats); "
    "switching <= 10% of per-checkpoint time at 100 tokens; a harvest's peak memory flat in prompt "
    "count and at most one model's weights plus one batch",
    "C": "K dictionaries on one stream cost <= 1.3x one dictionary's pass",
    "cli": "--help, --print-config and argument errors answer in < 1 s wall (median of 5)",
}


def _lane(runs: dict[str, list[dict]], flops: dict[str, float], calibrated_gflops: float) -> dict[str, Any]:
    from _measure import summarise

    return {
        name: summarise(samples, flops.get(name), calibrated_gflops * 1e9) for name, samples in runs.items()
    }


def _ratio(lane: dict[str, Any], a: str, b: str, key: str = "tokens_per_s") -> float:
    return lane[a][key]["median"] / lane[b][key]["median"]


def dictionaries(root: Path, quick: bool, repeats: int, calibration: dict, peers: Path) -> tuple[dict, dict]:
    import lane_dictionaries as ld
    from _measure import interleave

    sizes = ld.QUICK if quick else ld.DEFAULT
    data = ld.prepare(root / "dictionaries", sizes)
    sae = 12.0 * sizes.d_in * sizes.d_sae
    flops = {"rlinterp": sae, "saelens": sae, "plain": sae, "diff-sae": sae, "crosscoder": 2 * sae,
             "dictionary-learning": sae}  # fmt: skip
    contenders, peer = ld.lane_a(data, sizes, peers, install=not quick)
    a = _lane(interleave(contenders, repeats), flops, calibration["A"]["gflops"])
    a["ratios"] = ld.lane_a_ratios(a)
    a["dictionary_learning"] = peer
    a["sizes"] = {"d_in": sizes.d_in, "d_sae": sizes.d_sae, "k": sizes.k, "batch": sizes.batch,
                  "steps": sizes.steps, "tensor_tokens": len(data.base), "lr": ld.LR}  # fmt: skip
    c_flops = 12.0 * sizes.d_in * sizes.sweep_d_sae
    c_runs = interleave(ld.lane_c(data, sizes), repeats)
    c = _lane(c_runs, dict.fromkeys(c_runs, c_flops), calibration["C"]["gflops"])
    c["ratios"] = {
        "joint / one (seconds)": _ratio(c, "joint", "one", "seconds"),
        "joint / separate (seconds)": _ratio(c, "joint", "separate", "seconds"),
    }
    c["max_explained_variance_difference_joint_vs_separate"] = max(
        abs(c["joint"][key] - c["separate"][key])
        for key in c["joint"]
        if key.startswith("explained_variance")
    )
    c["sizes"] = {"d_in": sizes.d_in, "d_sae": sizes.sweep_d_sae, "ks": list(sizes.sweep_ks),
                  "batch": sizes.sweep_batch, "steps": sizes.sweep_steps}  # fmt: skip
    return a, c


def harvesting(root: Path, quick: bool, repeats: int, calibration: dict) -> tuple[dict, dict]:
    import lane_harvest as lh
    from _measure import interleave, run_forked, summarise

    sizes = lh.QUICK if quick else lh.DEFAULT
    b: dict[str, Any] = {}
    for name, (length, n_prompts, batch) in (("short", sizes.short), ("long", sizes.long)):
        folders = lh.models(root / name, sizes, sizes.checkpoints - 1, n_positions=max(128, length))
        shape = lh.shape(folders, length, n_prompts, batch, sizes.n_layer)
        lh.set_reference(shape, Path(tempfile.mkdtemp(dir=root)))
        flops = lh.forward_flops_per_token(folders[0], length)
        # no warm-up round: set_reference ran the shape, and each run loads its models afresh
        lane = _lane(interleave(lh.lane_b(shape), repeats, warmup=0), dict.fromkeys(lh.lane_b(shape), flops),
                     calibration[f"B-{name}"]["gflops"])  # fmt: skip
        for contender in lane.values():
            contender["seconds_per_checkpoint"] = contender["seconds"]["median"] / sizes.checkpoints
            contender["switch_fraction"] = (
                contender["switch_seconds_per_checkpoint"] / contender["seconds_per_checkpoint"]
            )
        lane["ratios"] = {
            "rlinterp / hf-forward": _ratio(lane, "rlinterp", "hf-forward"),
            "rlinterp / tl-forward": _ratio(lane, "rlinterp", "tl-forward"),
            "rlinterp / tl-tuned": _ratio(lane, "rlinterp", "tl-tuned"),
            "peak memory rlinterp / tl-tuned": _ratio(lane, "rlinterp", "tl-tuned", "peak_mib")
            if "peak_mib" in lane["rlinterp"]
            else None,
        }
        lane["sizes"] = {"context": length, "prompts": n_prompts, "batch": batch,
                         "checkpoints": sizes.checkpoints, "d_model": sizes.d_model, "n_layer": sizes.n_layer,
                         "hooks": list(shape.hooks)}  # fmt: skip
        b[name] = lane
    folders = lh.models(root / "scaling", sizes, max(sizes.scaling_checkpoints) - 1, n_positions=128)
    points = lh.scaling(folders, sizes)
    warm = next(iter(points.values()))
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        warm(Path(tmp))
    scaling: dict[str, Any] = {"runs_per_point": 1, "batch": sizes.scaling_batch, "points": {}}
    for name, contender in points.items():
        scaling["points"][name] = summarise([run_forked(contender)], None, None)
    for tool in ("harvest", "diff"):
        peaks = [scaling["points"][f"{tool} prompts={m}x"].get("peak_mib", {}).get("median") for m in (1, 16)]
        scaling[f"{tool}: peak memory 16x / 1x prompts"] = peaks[1] / peaks[0] if None not in peaks else None
    largest = scaling["points"]["harvest prompts=16x"]
    if "peak_mib" in largest:  # the bound: one model's weights plus one batch
        scaling["harvest 16x: peak - weights - batch (MiB)"] = (
            largest["peak_mib"]["median"] - largest["weights_mib"] - largest["batch_mib"]
        )
    return b, scaling


def figure(result: dict[str, Any]):
    """Medians and spreads of every lane, one panel each."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [
        ("Lane A: dictionary training (tokens/s)", result["lanes"]["A"], "tokens_per_s"),
        ("Lane B short context: seconds per checkpoint", result["lanes"]["B"]["short"], "seconds"),
        ("Lane B long context: seconds per checkpoint", result["lanes"]["B"]["long"], "seconds"),
        ("Lane B long context: peak memory (MiB)", result["lanes"]["B"]["long"], "peak_mib"),
        ("Lane C: a sweep on one stream (seconds)", result["lanes"]["C"], "seconds"),
    ]
    fig = make_subplots(
        rows=3, cols=2, subplot_titles=[p[0] for p in panels] + ["Scaling: peak memory (MiB)"]
    )
    for i, (_, lane, key) in enumerate(panels):
        row, col = divmod(i, 2)
        per_checkpoint = key == "seconds" and "sizes" in lane and "checkpoints" in lane["sizes"]
        for name, stats in lane.items():
            if not isinstance(stats, dict) or key not in stats:
                continue
            values = stats[key]["values"]
            if per_checkpoint:
                values = [v / lane["sizes"]["checkpoints"] for v in values]
            fig.add_trace(
                go.Box(y=values, name=name, boxpoints="all", showlegend=False), row=row + 1, col=col + 1
            )
    points = result["lanes"]["scaling"]["points"]
    for tool in ("harvest", "diff"):
        names = [n for n in points if n.startswith(tool)]
        fig.add_trace(
            go.Bar(x=[n.removeprefix(tool + " ") for n in names],
                   y=[points[n].get("peak_mib", {}).get("median") for n in names], name=tool),
            row=3, col=2,
        )  # fmt: skip
    machine = result["machine"]
    fig.update_layout(
        height=1100,
        title=f"rlinterp benchmarks ({'quick' if result['settings']['quick'] else 'default'} sizes, "
        f"{machine['torch_threads']} thread, load average {machine['load_average']})",
    )
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: checks the harness")
    parser.add_argument("--repeats", type=int, default=None, help="measured runs per contender (default 5)")
    parser.add_argument("--peers", type=Path, default=Path("artifacts/peers"),
                        help="where peer contenders are installed (never the venv)")  # fmt: skip
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    sys.path.insert(0, str(Path(__file__).parent))
    import calibration as cal
    import lane_cli as lc
    import lane_dictionaries as ld
    import lane_harvest as lh
    from _measure import machine

    started = time.time()
    before = machine()
    dsizes, hsizes = (ld.QUICK, lh.QUICK) if args.quick else (ld.DEFAULT, lh.DEFAULT)
    shapes = {
        "A": cal.sae_shapes(dsizes.batch, dsizes.d_in, dsizes.d_sae),
        "C": cal.sae_shapes(dsizes.sweep_batch, dsizes.d_in, dsizes.sweep_d_sae),
        "B-short": cal.forward_shapes(hsizes.short[0] * hsizes.short[2], hsizes.d_model),
        "B-long": cal.forward_shapes(hsizes.long[0] * hsizes.long[2], hsizes.d_model),
    }
    calibration = cal.calibrate(shapes)
    with tempfile.TemporaryDirectory(prefix="rlinterp-bench-") as tmp:
        root = Path(tmp)
        lane_a, lane_c = dictionaries(root, args.quick, repeats, calibration, args.peers)
        lane_b, scaling = harvesting(root, args.quick, repeats, calibration)
    cli = lc.lane_cli(5, library_repeats=repeats)
    result = {
        "settings": {
            "quick": args.quick,
            "repeats": repeats,
            "warmup": 1,
            "threads": THREADS,
            "seed": SEED,
            "interleaved": True,
            "wall_seconds": time.time() - started,
        },  # fmt: skip
        "machine": {**before, "load_average_end": machine()["load_average"]},
        "flops_per_token": cal.FLOPS,
        "calibration": calibration,
        "targets": TARGETS,
        "lanes": {"A": lane_a, "B": lane_b, "C": lane_c, "scaling": scaling, "cli": cli},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    figure(result).write_html(args.out / "bench.html", include_plotlyjs=True)
    sys.stdout.write(summary(result) + f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.html'}\n")


def summary(result: dict[str, Any]) -> str:
    """The headline numbers as text."""
    lines = []
    lanes = result["lanes"]
    shown = {"A": lanes["A"], "B short": lanes["B"]["short"], "B long": lanes["B"]["long"], "C": lanes["C"]}
    for lane_name, lane in shown.items():
        for name, stats in lane.items():
            if not isinstance(stats, dict) or "tokens_per_s" not in stats:
                continue
            ev = stats.get("explained_variance")
            peak = stats.get("peak_mib", {}).get("median")
            lines.append(
                f"{lane_name:>8} {name:>11}: {stats['tokens_per_s']['median']:9.0f} tokens/s"
                + (f", eta {stats['eta']:.2f}" if "eta" in stats else "")
                + (f", peak {peak:7.1f} MiB" if peak is not None else "")
                + (f", EV {ev:.3f}" if ev is not None else "")
                + (
                    f", max diff {stats['max_abs_diff_vs_tuned']:.1e}"
                    if "max_abs_diff_vs_tuned" in stats
                    else ""
                )
            )
        if "ratios" in lane:
            lines.append(" " * 9 + json.dumps(lane["ratios"]))
    for name, point in lanes["scaling"]["points"].items():
        peak = point.get("peak_mib", {}).get("median")
        lines.append(
            f" scaling {name:>20}: {point['seconds']['median']:6.1f} s"
            + (f", peak {peak:7.1f} MiB" if peak else "")
        )
    from lane_cli import summary as cli_summary

    return "\n".join(lines + cli_summary(lanes["cli"]))


if __name__ == "__main__":
    main()
