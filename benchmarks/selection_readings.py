"""Benchmark: candidate definitions of the selection-versus-novelty index, graded on the failure
classes of issue 24 (planted series of ``tests/selection/planted_series.py``: tiny random-init
GPT-2, Llama and Qwen2 models, two blocks).

Classes (each a one-step series against its base): ``new@L`` (a function of two random
projections planted in block ``L``: novelty), ``context@1`` (the base's persona direction
pushed up on one persona's tokens and down on the other's, mean shift cancelling:
selection), ``neuron@0`` (the block-0 neuron a small base SAE covers worst, amplified x4:
selection), ``head@1`` (one head of block 1 amplified x2: selection), ``null`` (a copy).

Readings, each at every block's output (``L0``, ``L1``):

- ``dict_mean``: the old index, ``||mean eps||^2 / ||mean delta||^2`` through a base SAE of
  that hook (``selection.explanation.dictionary_share``);
- ``dict_token``: the same per token (``token_residual_share``);
- ``resid``: held-out share of the per-token change a ridge read-out of the base's residual
  stream at the hook cannot predict;
- ``all``: the same from every base activation at and before the hook (embeddings, head
  outputs, MLP neurons, residual streams): the candidate the issue names;
- ``local``: the chosen read-out's base-only share (``unexplained_base``: each block's local
  change from its own heads and neurons);
- ``index``: the chosen reading, ``local`` over the seed control's (``novelty``).

Prints a Markdown table (class x reading: mean and range over families and seeds, at the
block each class edits and at the other), the index per case with its interval, side and
component, and writes every value to ``--out``.

    .venv/bin/python benchmarks/selection_readings.py --seeds 0 1 --out DIR
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlinterp.activations.harvest import ActivationStore, HarvestConfig, harvest  # noqa: E402
from rlinterp.dictionaries.sae import SAETrainConfig, train_sae  # noqa: E402
from rlinterp.models.series import ModelSeries  # noqa: E402
from rlinterp.selection.explanation import dictionary_share, step_parts  # noqa: E402
from rlinterp.selection.index import IndexConfig, novelty_index  # noqa: E402
from rlinterp.selection.personas import prompt_index  # noqa: E402
from rlinterp.selection.readout import ReadoutConfig, readout_parts  # noqa: E402
from rlinterp.selection.ridge import heldout_residuals  # noqa: E402
from tests.selection import planted_series as ps  # noqa: E402

N_LAYER = 2
READINGS = ("dict_mean", "dict_token", "resid", "all", "local", "index")
EXPECTED = {"new@0": "novelty", "new@1": "novelty", "context@1": "selection", "neuron@0": "selection"}
EXPECTED |= {"head@1": "selection", "null": "selection"}


@torch.no_grad()
def cumulative(store: ActivationStore, series: ModelSeries, layer: int, label: str) -> dict[str, float]:
    """``resid`` and ``all``: held-out unexplained shares of the change at ``layer``'s output."""
    base, model = series.load(series.base), series.load(next(c for c in series if c.label == label))
    names = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{i}.{h}"
        for i in range(layer + 1)
        for h in ("attn.hook_z", "mlp.hook_post", "hook_resid_post")
    ]
    post = f"blocks.{layer}.hook_resid_post"
    feats, resid, delta = [], [], []
    for batch in store.token_batches():
        _, cache = base.run_with_cache(batch.tokens, names_filter=names)
        _, own = model.run_with_cache(batch.tokens, names_filter=[post])
        keep = batch.keep
        feats.append(torch.cat([cache[n][keep].reshape(int(keep.sum()), -1) for n in names], 1))
        resid.append(cache[post][keep])
        delta.append(own[post][keep] - cache[post][keep])
    target = torch.cat(delta).double()
    total = float(target.pow(2).sum())
    if total == 0:
        return {"resid": 0.0, "all": 0.0}
    fold = prompt_index(store) % 5
    ridge = ReadoutConfig().ridge
    return {
        "resid": float(heldout_residuals(torch.cat(resid), target, fold, ridge).sum()) / total,
        "all": float(heldout_residuals(torch.cat(feats), target, fold, ridge).sum()) / total,
    }


def read_class(arch: str, seed: int, name: str, root: Path) -> list[dict[str, Any]]:
    texts, calib = ps.persona_texts(48, seed=seed), ps.persona_texts(24, seed=seed + 100)
    base = ps.base_model(arch, N_LAYER, seed)
    folders = ps.build_series(root / "base-only", base, [], calib)
    series = ModelSeries.from_paths(folders)
    hooks = tuple(f"blocks.{i}.hook_resid_post" for i in range(N_LAYER))
    config = HarvestConfig(hooks=hooks, response_only=True)
    base_store = harvest(series, texts, root / "base-store", config)
    saes = {
        hook: train_sae(
            base_store, "base", hook, root / f"sae-{i}", SAETrainConfig(d_sae=16, k=2, n_tokens=20_000)
        ).sae
        for i, hook in enumerate(hooks)
    }
    if name == "null":
        edits: list[ps.Edit] = []
    elif name.startswith("new@"):
        edits = [ps.new_computation(int(name[-1]), 0.5, seed)]
    elif name == "context@1":
        edits = [ps.reweight_context(1, 0.5)]
    elif name == "neuron@0":
        writes = torch.nn.functional.normalize(ps.neuron_writes(base, 0), dim=-1)
        decoder = torch.nn.functional.normalize(saes[hooks[0]].W_dec.detach(), dim=-1)
        edits = [ps.amplify_neuron(0, int((writes @ decoder.T).abs().max(1).values.argmin()), 4.0)]
    else:
        edits = [ps.amplify_head(1, seed % 4, 2.0)]
    series = ModelSeries.from_paths(ps.build_series(root / "series", base, [edits], calib))
    store = harvest(series, texts, root / "store", config)
    index = novelty_index(readout_parts(series, store, ReadoutConfig()), IndexConfig(n_bootstrap=200))
    rows = []
    for layer, hook in enumerate(hooks):
        explained = dictionary_share([[step_parts(store, hook, saes[hook], lab) for lab in store.labels]])
        block = index.layers[(index.layers["step"] == 1) & (index.layers["layer"] == layer)].iloc[0]
        rows.append(
            {
                "arch": arch,
                "seed": seed,
                "class": name,
                "layer": layer,
                "dict_mean": float(explained["dictionary_share"].iloc[1]),
                "dict_token": float(explained["token_residual_share"].iloc[1]),
                **cumulative(store, series, layer, "step-1"),
                "local": float(block["unexplained_base"]),
                "index": float(block["novelty"]),
                "index_lo": float(block["novelty_lo"]),
                "index_hi": float(block["novelty_hi"]),
                "component": str(block["component"]),
                "index_side": str(block["side"]),
                "step_side": str(index.table.set_index("step").loc[1, "side"]),
                "step_layer": int(index.table.set_index("step").loc[1, "layer"]),
            }
        )
    return rows


def edited_layer(name: str) -> int:
    return 0 if name == "null" else int(name[-1])


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| class (expected) | block | " + " | ".join(READINGS) + " | index verdicts (step side, block) |",
        "|" + "---|" * (len(READINGS) + 3),
    ]
    for name, expected in EXPECTED.items():
        mine = [r for r in rows if r["class"] == name]
        if not mine:
            continue
        for where in ("edited", "other"):
            at = [r for r in mine if (r["layer"] == edited_layer(name)) == (where == "edited")]
            cells = []
            for reading in READINGS:
                values = np.array([r[reading] for r in at])
                cells.append(f"{values.mean():.2f} ({values.min():.2f}-{values.max():.2f})")
            verdicts = sorted({f"{r['step_side']} @{r['step_layer']}" for r in at})
            layer = edited_layer(name) if where == "edited" else 1 - edited_layer(name)
            lines.append(
                f"| {name} ({expected}) | {layer} | " + " | ".join(cells) + f" | {', '.join(verdicts)} |"
            )
    return "\n".join(lines)


def intervals(rows: list[dict[str, Any]]) -> str:
    """Per class, family and seed: the index at each block with its interval, side and the
    component it comes from, and the step's side and block."""
    lines = ["| class (expected) | arch | seed | block 0 | block 1 | step |", "|" + "---|" * 6]
    for name, expected in EXPECTED.items():
        for arch in dict.fromkeys(r["arch"] for r in rows):
            for seed in sorted({r["seed"] for r in rows}):
                mine = sorted(
                    (r for r in rows if (r["class"], r["arch"], r["seed"]) == (name, arch, seed)),
                    key=lambda r: r["layer"],
                )
                if not mine:
                    continue
                cells = [
                    f"{r['index']:.2f} [{r['index_lo']:.2f}, {r['index_hi']:.2f}] {r['index_side']} "
                    f"({r['component']})"
                    for r in mine
                ]
                step = f"{mine[0]['step_side']} @{mine[0]['step_layer']}"
                lines.append(
                    f"| {name} ({expected}) | {arch} | {seed} | " + " | ".join(cells) + f" | {step} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--archs", nargs="+", default=list(ps.ARCHS))
    parser.add_argument("--classes", nargs="+", default=list(EXPECTED))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    start = time.process_time()
    for arch in args.archs:
        for seed in args.seeds:
            for name in args.classes:
                rows += read_class(arch, seed, name, args.out / f"{arch}-{seed}-{name}")
                sys.stdout.write(f"{arch} seed {seed} {name}: {rows[-2:]}\n")
                sys.stdout.flush()
    (args.out / "selection_readings.json").write_text(json.dumps(rows, indent=1))
    sys.stdout.write(f"\n{table(rows)}\n\n{intervals(rows)}\n\n{time.process_time() - start:.0f} CPU-s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
