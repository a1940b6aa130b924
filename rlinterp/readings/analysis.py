"""The four readings of one checkpoint series, written to one directory: what
``rlinterp readings`` and the ``readings`` stage of ``rlinterp run`` call.

``run_readings(series, prompts, out)``:

1. **amplified sampling** (``amplify``): every amplified model answers (the organism's
   behaviour questions, with the behaviour columns; else the prompts' distinct prompt
   parts, at most ``max_prompts``), into ``amplified/``;
2. the series' activations on ``prompts`` (``store``, or a harvest into ``activations/``);
3. **principal components** of the per-token differences per checkpoint and hook (``pca``),
   per-label projections when the prompts carry ``cfg.label``;
4. **patchscope and lens readings** (``patchscope``) of each mean difference and of the
   first ``read_components`` components, patched into the base at the hook they were read;
5. **topics of the changed tokens** (``topics``).

Layout (``TABLES`` names the tables and their schemas): ``amplified/`` (its own artifact,
with ``samples.parquet``), ``amplified.parquet``, ``pca.parquet``,
``pca_projections.parquet``, ``pca_components.safetensors`` (``<label>/<hook>`` -> ``[k,
d]``), ``patchscope.parquet``, ``topics.parquet``, ``topic_positions.parquet``, and
``manifest.json`` last (then ``report.html``, which ``rlinterp readings`` renders from
them). The directory is claimed through ``rundir`` (kind ``rlinterp.readings``);
``amplified/`` and ``activations/`` resume by themselves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file
from torch import Tensor

from ..activations.harvest import ActivationStore, HarvestConfig, fingerprint, harvest
from ..activations.onpolicy import prompt_texts
from ..activations.prompts import PromptSet
from ..core import rundir
from ..core.artifacts import environment_versions, write_parquet, write_safetensors
from ..errors import RlinterpError
from ..models.series import ModelSeries
from ..organism.layout import Organism
from . import amplify as amplify_module
from . import patchscope as patchscope_module
from . import pca as pca_module
from . import topics as topics_module
from .amplify import AmplifiedSamples, amplify
from .config import READINGS as READINGS
from .config import Reading as Reading
from .config import ReadingsConfig as ReadingsConfig
from .patchscope import patchscope
from .pca import difference_pca
from .topics import changed_token_topics

log = logging.getLogger(__name__)

KIND = rundir.Kind("rlinterp.readings", "readings")
TABLES = {
    "amplified": amplify_module.TABLE_COLUMNS,
    "pca": pca_module.TABLE_COLUMNS,
    "pca_projections": pca_module.PROJECTION_COLUMNS,
    "patchscope": ["label", "step", *patchscope_module.TABLE_COLUMNS],
    "topics": topics_module.TOPIC_COLUMNS,
    "topic_positions": topics_module.POSITION_COLUMNS,
}
"""The tables of a readings directory (``<name>.parquet``) and their columns; each column is
documented beside its module's ``*_COLUMNS``. ``patchscope.direction`` is ``mean`` (the mean
difference) or ``pc<i>`` (principal component i), read per ``label`` and ``step``."""
ENTRIES = {*(f"{name}.parquet" for name in TABLES), "pca_components.safetensors", "amplified", "activations"}
ENTRIES.add("report.html")  # ``rlinterp readings`` writes it after the tables


@dataclass(frozen=True)
class ReadingsResult:
    """The tables of a readings directory (empty for readings not computed)."""

    root: Path
    tables: dict[str, pd.DataFrame]
    """``TABLES`` name -> table."""
    components: dict[str, Tensor]
    """``<label>/<hook>`` -> principal components ``[k, d]``."""

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> ReadingsResult:
        root = Path(root)
        rundir.read_finished(root, KIND, "run `rlinterp readings` again")
        path = root / "pca_components.safetensors"
        return cls(
            root,
            {name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES},
            dict(load_file(path)) if path.is_file() else {},
        )

    def amplified_samples(self) -> AmplifiedSamples:
        """The amplified models' answers (one row per answer)."""
        return AmplifiedSamples.load(self.root / "amplified")


def run_readings(
    series: ModelSeries,
    prompts: PromptSet,
    out: str | os.PathLike[str],
    cfg: ReadingsConfig | None = None,
    organism: Organism | None = None,
    regime: str | None = None,
    store: ActivationStore | None = None,
    *,
    force: bool = False,
) -> ReadingsResult:
    """Compute ``cfg.readings`` for ``series`` into ``out`` (see the module docstring). The
    activations are ``store`` when given (it must hold this series' checkpoints, e.g. the diff
    stage's store), else harvested from ``prompts``."""
    cfg = cfg or ReadingsConfig()
    if (organism is None) != (regime is None):
        raise RlinterpError("give both the organism and its regime, or neither")
    if len(series) < 2:
        raise RlinterpError("the readings need a base and at least one RL checkpoint")
    if store is not None and store.labels != [c.label for c in series]:
        raise RlinterpError(f"the store holds {store.labels}, not this series' {[c.label for c in series]}")
    out = Path(out)
    harvest_cfg = HarvestConfig(batch_size=cfg.batch_size, response_only=prompts.response_starts is not None)
    inputs = {
        "config": asdict(cfg),
        "activations": store.fingerprint if store is not None else fingerprint(series, prompts, harvest_cfg),
        "labels": prompts.labels.get(cfg.label) if cfg.label else None,
        "regime": regime,
    }
    claimed = rundir.claim(out, KIND, inputs, ENTRIES, resumable=("amplified", "activations"), force=force)
    if claimed.state == "finished":
        log.info("reusing the finished readings in %s", out)
        return ReadingsResult.load(out)
    tables = {name: pd.DataFrame(columns=columns) for name, columns in TABLES.items()}
    if "amplify" in cfg.readings:
        asked = (
            organism.question_prompts() if organism is not None else prompt_texts(prompts)[: cfg.max_prompts]
        )
        tables["amplified"] = amplify(series, asked, out / "amplified", cfg.amplify, organism, regime).table
    if store is None:
        store = harvest(series, prompts, out / "activations", harvest_cfg)
    components = _from_store(series, prompts, store, cfg, tables)
    for name, table in tables.items():
        write_parquet(out / f"{name}.parquet", table)
    write_safetensors(out / "pca_components.safetensors", components)
    rundir.finish(
        out,
        KIND,
        {"config": asdict(cfg), "checkpoints": series.describe(), "versions": environment_versions()},
    )
    return ReadingsResult.load(out)


def _from_store(
    series: ModelSeries,
    prompts: PromptSet,
    store: ActivationStore,
    cfg: ReadingsConfig,
    tables: dict[str, pd.DataFrame],
) -> dict[str, Tensor]:
    """The readings of the activations (pca, patchscope, topics) into ``tables``; returns the
    principal components by ``<label>/<hook>``."""
    components = {}
    if "pca" in cfg.readings:
        labels = prompts.labels.get(cfg.label) if cfg.label else None
        pca = difference_pca(store, cfg.n_components, labels)
        tables["pca"], tables["pca_projections"] = pca.table, pca.projections
        components = {f"{label}/{hook}": value for (label, hook), value in pca.components.items()}
        if "patchscope" in cfg.readings:
            tables["patchscope"] = _read_directions(series, pca, cfg)
    if "topics" in cfg.readings:
        found = changed_token_topics(series, store, cfg.topics)
        tables["topics"], tables["topic_positions"] = found.topics, found.positions
    return components


def _read_directions(series: ModelSeries, pca: pca_module.DifferencePCA, cfg: ReadingsConfig) -> pd.DataFrame:
    """Patchscope and lens readings, in the base, of every mean difference and the first
    ``read_components`` components, at the hook each was read at."""
    base = series.load(series.base)
    steps = {c.label: c.step for c in series}
    frames = []
    for (label, hook), components in pca.components.items():
        directions = {"mean": pca.mean_diffs[(label, hook)]}
        directions |= {f"pc{i}": components[i] for i in range(min(cfg.read_components, len(components)))}
        directions = {name: v for name, v in directions.items() if float(v.norm()) > 0}
        if directions:
            frames.append(
                patchscope(base, directions, hook, cfg.patchscope).assign(label=label, step=steps[label])
            )
    columns = TABLES["patchscope"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
