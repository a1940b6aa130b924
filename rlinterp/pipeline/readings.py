"""The ``readings`` stage of ``rlinterp run``: the four readings that need no dictionary
(``readings.analysis.run_readings``) per series, on the diff stage's activations, and their
report section with the regimes side by side.

Layout: ``readings/<series>/`` (one readings directory per series, resumable by itself) and
the tables the report reads, each with a ``series`` column, written when every series is
done: ``readings/<table>.parquet`` for every table of ``readings.analysis.TABLES``, and
``readings/skipped.json``.

Cost on the default budget (``ReadingsSection``'s defaults), measured on the tiny organism
(three series, 2 cores under load): see the README's timing table.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeAlias

import pandas as pd
import plotly.graph_objects as go

from ..activations.onpolicy import SamplingConfig
from ..core.page import empty, esc, table
from ..readings.amplify import AmplifyConfig
from ..readings.analysis import TABLES, ReadingsConfig
from ..readings.figures import amplified_figure, patchscope_figure, pca_figure, topics_figure
from ..readings.patchscope import unknown_text
from ..readings.topics import TopicsConfig
from .figures import register_figure
from .report import Content, Section, _skipped, register_section
from .result import RunResult

if TYPE_CHECKING:
    from .config import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadingsSection(ReadingsConfig):
    """Readings without a dictionary (``rlinterp readings``): amplified sampling, principal
    components of the activation differences with their patchscope and lens readings, and
    topics of the changed tokens, per series."""

    amplify: AmplifyConfig = field(
        default_factory=lambda: AmplifyConfig(
            checkpoints="last", sampling=SamplingConfig(samples_per_prompt=1)
        )
    )
    """Amplified sampling. The last checkpoint, one answer per question: each amplified
    checkpoint samples every alpha (about 2 CPU-s per alpha for 256 answers of the organism),
    the last shows where RL went, and the default organism asks 128 questions;
    ``rlinterp readings`` amplifies every step with four answers each."""
    topics: TopicsConfig = field(default_factory=lambda: TopicsConfig(checkpoints="last"))
    """Topics of the last checkpoint's changed tokens (each checkpoint costs a forward pass over
    the prompts, like the diff stage's KL pass)."""
    enabled: bool = True
    """Run the readings stage."""


def readings_stage(ctx: RunContext) -> None:
    """``run_readings`` per series into ``readings/<series>/``, on ``diff/<series>/activations``."""
    from ..activations.harvest import ActivationStore
    from ..organism import Organism
    from ..readings.analysis import run_readings
    from .stages import _finish, _plain

    section = ctx.config.section("readings")
    if not section.enabled:
        return
    assert ctx.prompts is not None
    cfg = _plain(ReadingsConfig, section)
    organism = Organism.load(ctx.organism_root) if ctx.organism_root is not None else None
    out = ctx.stage_dir("readings")
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    skipped = {}
    for name, series in ctx.series.items():
        chosen = cfg
        unknown = (
            unknown_text(series.tokenizer(), cfg.patchscope.prompt) if "patchscope" in cfg.readings else []
        )
        if unknown:  # the other readings still run
            chosen = dataclasses.replace(cfg, readings=tuple(r for r in cfg.readings if r != "patchscope"))
            skipped[name] = (
                f"patchscope: the prompt has text the tokenizer does not know ({unknown}); "
                "set readings.patchscope.prompt"
            )
        log.info("readings %s: %s", name, ", ".join(chosen.readings))
        store = ActivationStore.load(ctx.stage_dir("diff") / name / "activations")
        regime = name if organism is not None else None
        result = run_readings(series, ctx.prompts, out / name, chosen, organism, regime, store)
        for table_name, frame in result.tables.items():
            tables[table_name].append(frame.assign(series=name))
    _finish(out, tables, skipped)


# -- the report section ----------------------------------------------------------------------


def _last(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each series' last step."""
    last = frame.groupby("series", sort=False)["step"].transform("max")
    return frame[frame["step"] == last]


def _side(frame: pd.DataFrame, columns: list[str]) -> str:
    blocks = [
        f"<div><h3>{esc(name)}</h3>{table(rows, [c for c in columns if c in rows])}</div>"
        for name, rows in frame.groupby("series", sort=False)
    ]
    return f"<div class='side'>{''.join(blocks)}</div>"


def _joined(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """List-valued columns as text (tokens shown with ``repr``, so spaces and newlines show)."""
    shown = frame.copy()
    for column in columns:
        shown[column] = shown[column].map(lambda items: " ".join(repr(str(i)) for i in items))
    return shown


Part: TypeAlias = str | go.Figure


def readings_section(run: RunResult) -> Content:
    found = {name: run.tables.get(f"readings/{name}", pd.DataFrame()) for name in TABLES}
    if all(frame.empty for frame in found.values()):
        return Content((empty("The readings have not run (stage 'readings')."), _skipped(run, "readings")))
    parts: list[Part] = [_skipped(run, "readings")]
    parts += _amplified_parts(found["amplified"])
    parts += _pca_parts(found["pca"], found["patchscope"])
    parts += _topics_parts(found["topics"])
    return Content(tuple(parts))


def _amplified_parts(amplified: pd.DataFrame) -> list[Part]:
    if amplified.empty:
        return [empty("No amplified sampling.")]
    columns = ["label", "alpha", "reward", "accuracy", "share_none", "base_logprob_mean", "answer_tokens"]
    return [
        "<h3>Amplified sampling</h3><p>Each RL checkpoint's change from the base multiplied by alpha "
        "(0 is the base, 1 the checkpoint) and sampled with the same random numbers; the answers' "
        "log-prob per token under the base says how far from the base's writing they went.</p>",
        amplified_figure(amplified),
        _side(amplified, columns),
    ]


def _pca_parts(pca: pd.DataFrame, patchscope: pd.DataFrame) -> list[Part]:
    if pca.empty:
        return [empty("No principal components of the differences.")]
    parts: list[Part] = [
        "<h3>Principal components of the activation differences</h3><p>Per hook, the share of "
        "the per-token differences' variance along each component at the last step, and its cosine "
        "with the mean difference.</p>",
        pca_figure(pca),
        _side(_last(pca), ["hook", "component", "explained", "cumulative", "cos_mean_diff"]),
    ]
    if not patchscope.empty:
        shown = _joined(
            _last(patchscope[patchscope["scale"] == patchscope["scale"].min()]), ["top_tokens", "lens"]
        )
        parts += [
            "<p>Patchscope: each direction, scaled to a typical activation, replaces the residual at "
            "the last token of an identity prompt in the base; top next tokens, greedy continuation, "
            "and the lens (the direction through W_U) beside them (smallest scale shown).</p>",
            patchscope_figure(patchscope),
            _side(shown, ["hook", "direction", "top_tokens", "continuation", "lens"]),
        ]
    return parts


def _topics_parts(topics: pd.DataFrame) -> list[Part]:
    if topics.empty:
        return [empty("No topics of the changed tokens.")]
    shown = _joined(_last(topics), ["top_promoted", "top_context", "examples"])
    return [
        "<h3>Topics of the changed tokens</h3><p>The positions whose next-token distribution moved "
        "most (KL), grouped by a non-negative factorisation of their context and promoted tokens.</p>",
        topics_figure(topics),
        _side(shown, ["topic", "share", "top_promoted", "top_context", "examples"]),
    ]


Figure = Literal["amplified", "pca", "patchscope", "topics"]


def readings_figure(run: RunResult, which: Figure) -> go.Figure:
    """The report's figure of one reading, from the run's tables."""
    draw = {
        "amplified": amplified_figure,
        "pca": pca_figure,
        "patchscope": patchscope_figure,
        "topics": topics_figure,
    }
    return draw[which](run.tables.get(f"readings/{which}", pd.DataFrame(columns=["series", "step"])))


register_section(Section("readings", "Readings without a dictionary", readings_section), after="outputs")
for _name in ("amplified", "pca", "patchscope", "topics"):
    register_figure(f"readings_{_name}", partial(readings_figure, which=_name))
