"""The scripted diff of a checkpoint series: weights, activations and outputs of every RL
checkpoint against the base, written as Parquet tables and a JSON summary.

``run_diff(series, prompts, out)`` is what ``rlinterp diff`` calls. Output layout:

- ``manifest.json``: checkpoints, prompts, hooks, versions and the fingerprint of the
  inputs (that of the activation store); written last: only a directory with it is a
  finished diff (see ``rundir``), whatever else it holds;
- ``activations/``: the activation store (resumable, see ``harvest``);
- ``weights.parquet``: one row per (checkpoint, parameter), see ``diff.weights``;
- ``weights_by_component.parquet``: one row per (checkpoint, layer, component);
- ``activations.parquet``: one row per (checkpoint, hook), see ``diff.activations``;
- ``outputs.parquet``: one row per checkpoint (KL statistics), see ``diff.outputs``;
- ``lens.parquet``: activation-difference lens tokens per (checkpoint, hook);
- ``top_tokens.parquet``: the tokens that changed most, with their context;
- ``mean_diffs.safetensors``: ``"<label>/<hook>"`` -> mean difference vector;
- ``summary.json``: per checkpoint, one headline number per metric family
  (schema in ``SUMMARY_SCHEMA``).

Per-checkpoint work goes through an executor (see ``executor``): the harvest (one task per
checkpoint), then the weight, activation and output diffs of each checkpoint against the
base (one task per checkpoint, ``CheckpointDiffTask``); this process only merges their
tables, so a local run and a Ray run write the same files.

Computing a diff does not draw it: ``report.write_report`` turns the returned
``SeriesDiff`` (or ``SeriesDiff.load(out)``) into ``report.html``, which ``rlinterp diff``
writes beside the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..activations.harvest import ActivationStore, HarvestConfig, fingerprint, harvest
from ..activations.prompts import PromptSet
from ..core import rundir
from ..core.artifacts import environment_versions, read_parquet, write_json, write_parquet, write_safetensors
from ..models.checkpoint import Checkpoint
from ..models.series import ModelSeries
from .activations import ActivationDiff, diff_activations, merge_activation_diffs
from .outputs import OutputDiff, diff_outputs, merge_output_diffs
from .weights import diff_weights

if TYPE_CHECKING:
    from ..models.executor import Executor

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

    def _repr_html_(self) -> str:
        from ..core.report import table

        return table(pd.DataFrame(self.summary()))

    @classmethod
    def load(cls, root: str | Path) -> SeriesDiff:
        """Read a finished ``run_diff`` output directory (an unfinished one is refused)."""
        root = Path(root)
        rundir.read_finished(root, rundir.DIFF, "run `rlinterp diff` again")
        remedy = "run `rlinterp diff` again into a new directory"
        return cls(**{name: read_parquet(root / f"{name}.parquet", remedy) for name in TABLES})


TABLES = ("weights", "weights_by_component", "activations", "outputs", "lens", "top_tokens")
STORE = "activations"
ENTRIES = (
    STORE,
    *(f"{name}.parquet" for name in TABLES),
    "mean_diffs.safetensors",
    "summary.json",
    "report.html",
)
"""Everything ``run_diff`` writes besides its manifest."""


def run_diff(
    series: ModelSeries,
    prompts: PromptSet,
    out: str | Path,
    harvest_cfg: HarvestConfig | None = None,
    *,
    force: bool = False,
    executor: Executor | None = None,
    reuse: Sequence[ActivationStore] = (),
) -> SeriesDiff:
    """Diff every checkpoint of ``series`` against its base on ``prompts``; write to ``out``.

    ``out`` must be absent, empty or a diff: a finished diff of the same inputs is read
    back, not recomputed; an interrupted one resumes its harvest; one of other inputs is
    refused naming what changed, or (``force``) computed again from scratch. ``reuse``:
    finished stores whose shards of the same checkpoints and tokens are taken, not
    recomputed (``harvest.reusable_shards``), e.g. another series' base.

    Each checkpoint is run twice: once to harvest its activations, once beside the base for
    the KL (next-token distributions are too large to store). Both are tasks of
    ``executor`` (default: this process, one checkpoint after another)."""
    from ..models.executor import LocalExecutor

    out = Path(out)
    series.validate()
    executor = executor or LocalExecutor()
    inputs = fingerprint(series, prompts, harvest_cfg)
    claimed = rundir.claim(out, rundir.DIFF, inputs, ENTRIES, resumable=(STORE,), force=force)
    if claimed.state == "finished":
        return SeriesDiff.load(out)
    store = harvest(series, prompts, out / STORE, harvest_cfg, executor=executor, reuse=reuse)
    parts = executor.map(CheckpointDiffTask(store.root), series, list(series))
    activations = merge_activation_diffs([p.activations for p in parts])
    outputs = merge_output_diffs([p.outputs for p in parts])
    result = SeriesDiff(
        weights=pd.concat([p.weights for p in parts], ignore_index=True),
        weights_by_component=pd.concat([p.weights_by_component for p in parts], ignore_index=True),
        activations=activations.table,
        outputs=outputs.table,
        lens=outputs.lens,
        top_tokens=_top_tokens_in_context(store, [activations.top_tokens, outputs.top_tokens], series),
    )
    _write(result, out, activations, series, store, len(prompts))
    return result


@dataclass(frozen=True)
class CheckpointDiff:
    """One checkpoint's diffs against the base (``SeriesDiff``'s rows for it)."""

    weights: pd.DataFrame
    """Its rows of ``weights.parquet``."""
    weights_by_component: pd.DataFrame
    """Its rows of ``weights_by_component.parquet``."""
    activations: ActivationDiff
    """Its activation diff per hook, with mean difference vectors and top tokens."""
    outputs: OutputDiff
    """Its KL row, top tokens and difference lens."""


@dataclass(frozen=True)
class CheckpointDiffTask:
    """The diffs of one checkpoint against the base, from the finished store at ``store``
    and the checkpoint folders (an executor task)."""

    store: Path

    def __call__(self, series: ModelSeries, checkpoint: Checkpoint) -> CheckpointDiff:
        store = ActivationStore.load(self.store)
        diff = diff_weights(series.base.path, checkpoint.path)
        meta = {"label": checkpoint.label, "step": checkpoint.step}
        activations = diff_activations(store, labels=[checkpoint.label])
        outputs = diff_outputs(series, store, activations.mean_diffs, checkpoints=[checkpoint])
        return CheckpointDiff(
            diff.to_frame().assign(**meta), diff.by_component().assign(**meta), activations, outputs
        )


def _top_tokens_in_context(
    store: ActivationStore, tops: list[pd.DataFrame], series: ModelSeries
) -> pd.DataFrame:
    """Top-token rows (indexed by store row) with their prompt, position, preceding text and
    token; ``source`` is the hook, or ``kl`` for output rows."""
    frames = [t.assign(source=t.get("hook", "kl")) for t in tops if len(t)]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    contexts = store.token_contexts(frame["row"].tolist(), series.tokenizer(), CONTEXT_TOKENS)
    frame[contexts.columns] = contexts.to_numpy()
    return frame


def _write(
    result: SeriesDiff,
    out: Path,
    activations: ActivationDiff,
    series: ModelSeries,
    store: ActivationStore,
    n_prompts: int,
) -> None:
    for name in TABLES:
        write_parquet(out / f"{name}.parquet", getattr(result, name))
    vectors = {f"{label}/{hook}": v for (label, hook), v in activations.mean_diffs.items()}
    write_safetensors(out / "mean_diffs.safetensors", vectors)
    write_json(out / "summary.json", {"schema": SUMMARY_SCHEMA, "checkpoints": result.summary()})
    rundir.finish(  # last: marks the directory finished
        out,
        rundir.DIFF,
        {
            "checkpoints": series.describe(),
            "fidelity": series.fidelity,
            "hooks": store.hooks,
            "n_prompts": n_prompts,
            "prompts_sha256": store.manifest["prompts_sha256"],
            "versions": environment_versions(),
        },
    )
