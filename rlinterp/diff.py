"""The scripted diff of a checkpoint series: weights, activations and outputs of every RL
checkpoint against the base, written as Parquet tables, a JSON summary and an HTML report.

``run_diff(series, prompts, out)`` is what ``rlinterp diff`` calls. Output layout:

- ``manifest.json``: checkpoints, prompts, hooks, versions; written last (finished marker);
- ``activations/``: the activation store (resumable, see ``harvest``);
- ``weights.parquet``: one row per (checkpoint, parameter), see ``weight_diff``;
- ``weights_by_component.parquet``: one row per (checkpoint, layer, component);
- ``activations.parquet``: one row per (checkpoint, hook), see ``activation_diff``;
- ``outputs.parquet``: one row per checkpoint (KL statistics), see ``output_diff``;
- ``lens.parquet``: activation-difference lens tokens per (checkpoint, hook);
- ``top_tokens.parquet``: the tokens that changed most, with their context;
- ``mean_diffs.safetensors``: ``"<label>/<hook>"`` -> mean difference vector;
- ``summary.json``: per checkpoint, one headline number per metric family
  (schema in ``SUMMARY_SCHEMA``);
- ``report.html``: self-contained report (plotly.js embedded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .activation_diff import diff_activations
from .artifacts import environment_versions, write_json, write_parquet, write_safetensors
from .errors import RlinterpError
from .harvest import HarvestConfig, harvest
from .output_diff import diff_outputs, difference_lens
from .prompts import PromptSet
from .series import ModelSeries
from .weight_diff import diff_weights

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = {
    "label": "checkpoint label (the base is 'base')",
    "step": "RL step",
    "weight_rel_frobenius": "||W_post - W_base|| / ||W_base|| over all parameters",
    "activation_rel_diff_norm": "rel_diff_norm at the deepest harvested hook",
    "activation_cka": "linear CKA at the deepest harvested hook",
    "kl_mean": "mean per-token KL(post || base) of the next-token distribution",
}
CONTEXT_TOKENS = 12


@dataclass(frozen=True)
class SeriesDiff:
    """Every table of a series diff (the same content as the files ``run_diff`` writes)."""

    weights: pd.DataFrame
    weights_by_component: pd.DataFrame
    activations: pd.DataFrame
    outputs: pd.DataFrame
    lens: pd.DataFrame
    top_tokens: pd.DataFrame

    def summary(self) -> list[dict[str, Any]]:
        """One headline number per metric family and checkpoint (``SUMMARY_SCHEMA``)."""
        deepest = self.activations[self.activations["hook"] == self.activations["hook"].iloc[-1]]
        rows = []
        for out in self.outputs.itertuples():
            weights = self.weights[self.weights["label"] == out.label]
            act = deepest[deepest["label"] == out.label].iloc[0]
            rows.append(
                {
                    "label": out.label,
                    "step": int(out.step),
                    "weight_rel_frobenius": float(
                        ((weights["delta_norm"] ** 2).sum() / max((weights["base_norm"] ** 2).sum(), 1e-30))
                        ** 0.5
                    ),
                    "activation_rel_diff_norm": float(act["rel_diff_norm"]),
                    "activation_cka": float(act["cka"]),
                    "kl_mean": float(out.kl_mean),
                }
            )
        return rows

    @classmethod
    def load(cls, root: str | Path) -> SeriesDiff:
        """Read a finished ``run_diff`` output directory."""
        root = Path(root)
        if not (root / "manifest.json").is_file():
            raise RlinterpError(
                f"{root} is not a finished diff (no manifest.json); run `rlinterp diff` again"
            )
        return cls(**{name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES})


TABLES = ("weights", "weights_by_component", "activations", "outputs", "lens", "top_tokens")


def run_diff(
    series: ModelSeries, prompts: PromptSet, out: str | Path, harvest_cfg: HarvestConfig | None = None
) -> SeriesDiff:
    """Diff every checkpoint of ``series`` against its base on ``prompts``; write to ``out``."""
    out = Path(out)
    (out / "manifest.json").unlink(missing_ok=True)  # unfinished until rewritten at the end
    store = harvest(series, prompts, out / "activations", harvest_cfg)

    weight_frames, component_frames = [], []
    for checkpoint in series:
        wd = diff_weights(series.base.path, checkpoint.path)
        meta = {"label": checkpoint.label, "step": checkpoint.step}
        weight_frames.append(wd.to_frame().assign(**meta))
        component_frames.append(wd.by_component().assign(**meta))
    activations = diff_activations(store)
    outputs = diff_outputs(series, store)

    tokenized = store.tokens()
    row_index = tokenized.keep.nonzero()  # store row -> (prompt, position)
    last = series.load(series.checkpoints[-1])
    lens_frames = []
    for (label, hook), vector in activations.mean_diffs.items():
        if label == series.base.label:
            continue
        model = series.load(next(c for c in series if c.label == label))
        lens_frames.append(difference_lens(vector, model.W_U, model.tokenizer).assign(label=label, hook=hook))
    tokenizer = last.tokenizer

    def context(row: int) -> tuple[int, int, str, str]:
        prompt, pos = (int(v) for v in row_index[row])
        ids = tokenized.tokens[prompt, max(1, pos - CONTEXT_TOKENS) : pos].tolist()
        return prompt, pos, tokenizer.decode(ids), tokenizer.decode([int(tokenized.tokens[prompt, pos])])

    tops = pd.concat(
        [
            activations.top_tokens.assign(source=activations.top_tokens.get("hook", pd.Series(dtype=str))),
            outputs.top_tokens.assign(source="kl"),
        ],
        ignore_index=True,
    )
    if len(tops):
        tops[["prompt", "position", "context", "token"]] = pd.DataFrame(
            [context(int(r)) for r in tops["row"]], index=tops.index
        )
    result = SeriesDiff(
        weights=pd.concat(weight_frames, ignore_index=True),
        weights_by_component=pd.concat(component_frames, ignore_index=True),
        activations=activations.table,
        outputs=outputs.table,
        lens=pd.concat(lens_frames, ignore_index=True) if lens_frames else pd.DataFrame(),
        top_tokens=tops,
    )
    for name in TABLES:
        write_parquet(out / f"{name}.parquet", getattr(result, name))
    vectors = {f"{label}/{hook}": v for (label, hook), v in activations.mean_diffs.items()}
    write_safetensors(out / "mean_diffs.safetensors", vectors)
    write_json(out / "summary.json", {"schema": SUMMARY_SCHEMA, "checkpoints": result.summary()})

    from .report import write_report

    write_report(result, out / "report.html", title=f"rlinterp diff: {len(series) - 1} checkpoints vs base")
    write_json(
        out / "manifest.json",
        {
            "kind": "rlinterp.diff",
            "checkpoints": series.describe(),
            "fidelity": series.fidelity,
            "hooks": store.hooks,
            "n_prompts": len(prompts),
            "prompts_sha256": store.manifest["prompts_sha256"],
            "versions": environment_versions(),
        },
    )
    return result
