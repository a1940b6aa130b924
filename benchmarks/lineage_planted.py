"""Benchmark: lineage on planted series, before and after births needed support and moved
decoders could read ``new_direction`` (issue 24).

Series (``tests/selection/planted_series.py``, tiny random-init GPT-2 / Llama / Qwen2, two
blocks), each base + two steps at growing strength, tracked with ``rlinterp track`` on the
persona texts (``texts`` source) with a base SAE at the edited block's output:

- ``amplification``: a block-0 neuron x3 and x5 (selection: no birth should appear);
- ``new@0``: a function of two random projections written along a new direction ``u`` by
  block 0, at 0.4 and 0.8 of the residual's size (the latent that follows ``u`` should say
  it is new).

"Before" is the same tables classified as the lineage did before (no birth support, no
``dec_cos_nearest_base``), recomputed from the run; "after" is the run's own lineage. Per
series, arch and step: tracked and matched births, ``new_direction`` / ``rotated`` /
``repurposed`` counts, and the class of the stage-wise latent whose decoder is closest to
``u`` (new computation only). Prints a Markdown table; writes JSON to ``--out``.

    .venv/bin/python benchmarks/lineage_planted.py --seeds 0 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rlinterp.activations.harvest import HarvestConfig, harvest  # noqa: E402
from rlinterp.dictionaries.sae import SAETrainConfig, TrainedSAE, train_sae  # noqa: E402
from rlinterp.dictionaries.stagewise import StagewiseConfig  # noqa: E402
from rlinterp.models.series import ModelSeries  # noqa: E402
from rlinterp.tracking.analysis import TrackConfig, discount_self_moves, run_track  # noqa: E402
from rlinterp.tracking.lineage import lineage_table  # noqa: E402
from tests.selection import planted_series as ps  # noqa: E402

N_LAYER = 2


def series_edits(name: str, seed: int) -> list[list[ps.Edit]]:
    if name == "amplification":
        return [[ps.amplify_neuron(0, 7 + seed, 3.0)], [ps.amplify_neuron(0, 7 + seed, 5.0)]]
    return [[ps.new_computation(0, 0.4, seed)], [ps.new_computation(0, 0.8, seed)]]


def planted_direction(base: Any, calib: Any, seed: int) -> torch.Tensor:
    """``u`` of ``new_computation(0)``: the write of the rewired neurons."""
    import copy

    model = copy.deepcopy(base)
    ps.new_computation(0, 0.4, seed)(model, calib)
    return torch.nn.functional.normalize(ps.neuron_writes(model, 0)[0], dim=0)


def run_case(arch: str, seed: int, name: str, root: Path) -> list[dict[str, Any]]:
    texts, calib = ps.persona_texts(64, seed=seed), ps.persona_texts(24, seed=seed + 100)
    base = ps.base_model(arch, N_LAYER, seed)
    series = ModelSeries.from_paths(ps.build_series(root / "models", base, series_edits(name, seed), calib))
    hook = "blocks.0.hook_resid_post"
    store = harvest(series, texts, root / "store", HarvestConfig(hooks=(hook,), response_only=True))
    sae_dir = root / "sae"
    train_sae(store, "base", hook, sae_dir, SAETrainConfig(d_sae=32, k=4, n_tokens=60_000, lr=1e-2))
    cfg = TrackConfig(
        sources=("texts",), independent_tokens=30_000, stagewise=StagewiseConfig(n_tokens=10_000)
    )
    result = run_track(series, texts, sae_dir, root / "track", cfg)
    stagewise = result.stagewise.drop(columns=["dec_cos_nearest_base"])
    before = lineage_table(result.trajectories, discount_self_moves(stagewise))
    after = result.lineage
    u = planted_direction(base, calib, seed) if name != "amplification" else None
    rows = []
    for step in (1, 2):
        row: dict[str, Any] = {"arch": arch, "seed": seed, "series": name, "step": step}
        for when, table in (("before", before), ("after", after[after["evidence"] == "tracked"])):
            at = table[table["step"] == step]["class"].value_counts()
            for cls in ("born", "new_direction", "rotated", "repurposed", "amplified"):
                row[f"{when}_{cls}"] = int(at.get(cls, 0))
        matched = after[(after["evidence"] == "matched") & (after["step"] == step) & after["latent"].isna()]
        row["after_matched_born"] = int((matched["class"] == "born").sum())
        row["before_matched_born"] = len(matched)  # every unmatched latent was a birth before
        if u is not None:
            decoder = TrainedSAE.load(
                root / "track" / "stagewise" / "texts" / f"step-{step}"
            ).sae.W_dec.detach()
            cosine = torch.nn.functional.normalize(decoder, dim=-1) @ u
            latent = int(cosine.abs().argmax())
            pick = (after["evidence"] == "tracked") & (after["step"] == step) & (after["latent"] == latent)
            old = (before["step"] == step) & (before["latent"] == latent)
            row |= {
                "u_latent": latent,
                "u_cosine": float(cosine.abs().max()),
                "u_before": str(before.loc[old, "class"].iloc[0]),
                "u_after": str(after.loc[pick, "class"].iloc[0]),
            }
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = "| series | arch | seed | step | tracked born before → after | matched born before → after "
    header += (
        "| new_direction / rotated / repurposed after (before) | latent nearest u: cos, before → after |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        u = f"{r['u_cosine']:.2f}, {r['u_before']} → {r['u_after']}" if "u_latent" in r else "—"
        lines.append(
            f"| {r['series']} | {r['arch']} | {r['seed']} | {r['step']} | "
            f"{r['before_born']} → {r['after_born']} | "
            f"{r['before_matched_born']} → {r['after_matched_born']} | {r['after_new_direction']} / "
            f"{r['after_rotated']} / {r['after_repurposed']} ({r['before_new_direction']} / "
            f"{r['before_rotated']} / {r['before_repurposed']}) | {u} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--archs", nargs="+", default=list(ps.ARCHS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for arch in args.archs:
        for seed in args.seeds:
            for name in ("amplification", "new@0"):
                rows += run_case(arch, seed, name, args.out / f"{arch}-{seed}-{name}")
                sys.stdout.write(f"{rows[-1]}\n")
                sys.stdout.flush()
    (args.out / "lineage_planted.json").write_text(json.dumps(rows, indent=1))
    sys.stdout.write("\n" + markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
