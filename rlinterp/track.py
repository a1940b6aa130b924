"""``rlinterp track``: follow every latent of one dictionary across the RL steps of a series,
on each token source, with the controls that say what chance alone would show.

``run_track(series, prompts, dictionary, out, cfg)`` does, in named steps:

1. check the input before writing anything (a series of one checkpoint, a dictionary of
   another width or hook than the series, a zero sampling budget, texts without answers:
   one-line ``RlinterpError``\\ s);
2. build the token sources (``SOURCES``): ``prompts`` (the prompt parts, every token),
   ``texts`` (prompt + given answer, answer tokens) and ``on-policy`` (each checkpoint's
   own answers, see ``onpolicy``), each an activation store of the dictionary's hook;
3. trajectories of the dictionary on every checkpoint and source (``trajectories``);
4. for an SAE: stage-wise fine-tuning on each source (``stagewise``), and independent
   SAEs per checkpoint and source (same config, their own seeds) matched step to step
   (``matching``);
5. the lineage table, one row per (source, latent, step) with its class and evidence
   (``lineage``), and the controls beside it: the base compared with itself (every
   latent must come out stable) and a second base SAE of another seed matched to the
   first (the noise floor of births and deaths);
6. Parquet tables, ``summary.json`` (``SCHEMA``), ``report.html``, and ``manifest.json``
   last.

Layout of ``out/``: ``track.json`` (the plan: what determines the result; written first, a
rerun with another plan is refused), ``stores/<source>/`` (activation stores),
``on-policy/`` (samples and per-checkpoint stores), ``stagewise/<source>/<label>/`` and
``independent/<source>/<label>/`` (SAE folders), ``controls/`` (their control twins), the
tables named in ``TABLES``, ``summary.json``, ``report.html``, ``manifest.json``.
Every expensive piece resumes (stores shard by shard, SAEs stage by stage); tables are
recomputed from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from .artifacts import environment_versions, sha256_file, write_json, write_parquet
from .errors import RlinterpError
from .harvest import ActivationStore, HarvestConfig, harvest
from .onpolicy import SamplingConfig, harvest_on_policy, prompt_texts
from .prompts import PromptSet
from .sae import MANIFEST, SAETrainConfig, TrainedSAE, train_sae
from .series import ModelSeries
from .stagewise import Stage, StagewiseConfig, fine_tune
from .trajectories import TokenSource, TrackedDictionary, compute_trajectories

KIND = "rlinterp.track"
SourceName = Literal["prompts", "texts", "on-policy"]
SOURCES: tuple[SourceName, ...] = ("prompts", "texts", "on-policy")
TABLES = (
    "trajectories",
    "trajectory_fit",
    "logit_tokens",
    "contexts",
    "stagewise",
    "stagewise_fit",
    "matches",
    "lineage",
    "controls",
    "samples",
)
"""The Parquet tables of a track run (``<name>.parquet``)."""


@dataclass(frozen=True)
class TrackConfig:
    """What ``run_track`` measures and with which budgets (recorded in ``track.json``)."""

    sources: tuple[SourceName, ...] = SOURCES
    """Token sources to measure on (``texts`` needs prompts with answers)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How each checkpoint samples its on-policy answers."""
    batch_size: int = 32
    """Prompts per harvest batch and shard: the memory bound of harvesting."""
    stagewise: StagewiseConfig = field(default_factory=StagewiseConfig)
    """Budget of each stage-wise fine-tune."""
    independent_tokens: int | None = 100_000
    """Training tokens of each independent per-checkpoint SAE (and of the seed control);
    None: the base dictionary's own budget."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources or len(set(self.sources)) != len(self.sources):
            raise RlinterpError(
                f"sources must be distinct names from {', '.join(SOURCES)}, got {self.sources}"
            )
        if self.batch_size < 1:
            raise RlinterpError(f"batch_size must be positive, got {self.batch_size}")
        if self.independent_tokens is not None and self.independent_tokens < 1:
            raise RlinterpError(f"independent_tokens must be positive, got {self.independent_tokens}")


def check_inputs(
    series: ModelSeries, prompts: PromptSet, dictionary: TrackedDictionary, cfg: TrackConfig
) -> None:
    """Every check that needs no output: raise ``RlinterpError`` before anything is written."""
    if len(series) < 2:
        raise RlinterpError(
            f"the series has {len(series)} checkpoint; tracking needs a base and at least one RL checkpoint"
        )
    if "texts" in cfg.sources and prompts.response_starts is None:
        raise RlinterpError(
            "the 'texts' source needs prompts with answers (a .jsonl with prompt and response); "
            "drop it from --sources or give such a file"
        )
    series.validate()
    model = series.load(series.base)
    probe = torch.tensor([[model.tokenizer.bos_token_id or 0, 0]], device=model.cfg.device)
    _, cache = model.run_with_cache(probe)
    if dictionary.hook not in cache:
        raise RlinterpError(
            f"the dictionary in {dictionary.path} reads {dictionary.hook}, which the series' models do not have "
            f"(they have {model.cfg.n_layers} blocks); give a dictionary trained on this series"
        )
    width = cache[dictionary.hook].shape[-1]
    if width != dictionary.d_in:
        raise RlinterpError(
            f"the dictionary in {dictionary.path} has d_in {dictionary.d_in} but {dictionary.hook} of the series "
            f"has width {width}; it was trained on another model"
        )


@dataclass(frozen=True)
class TrackResult:
    """Every table of a track run (the same content as the files ``run_track`` writes)."""

    trajectories: pd.DataFrame
    trajectory_fit: pd.DataFrame
    logit_tokens: pd.DataFrame
    contexts: pd.DataFrame
    stagewise: pd.DataFrame
    stagewise_fit: pd.DataFrame
    matches: pd.DataFrame
    lineage: pd.DataFrame
    controls: pd.DataFrame
    samples: pd.DataFrame

    @classmethod
    def load(cls, root: str | Path) -> TrackResult:
        """Read a finished ``run_track`` output directory."""
        root = Path(root)
        if not (root / "manifest.json").is_file():
            raise RlinterpError(
                f"{root} is not a finished track run (no manifest.json); run `rlinterp track` again"
            )
        return cls(**{name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES})


def run_track(
    series: ModelSeries,
    prompts: PromptSet,
    dictionary: str | Path,
    out: str | Path,
    cfg: TrackConfig | None = None,
) -> TrackResult:
    """Track every latent of ``dictionary`` over ``series`` (see the module docstring)."""
    cfg = cfg or TrackConfig()
    out = Path(out)
    tracked = TrackedDictionary.load(dictionary)
    check_inputs(series, prompts, tracked, cfg)
    _claim(out, _plan(series, prompts, tracked, cfg))
    (out / "manifest.json").unlink(missing_ok=True)  # unfinished until rewritten at the end
    sources, samples = _sources(series, prompts, tracked.hook, out, cfg)
    trajectories = compute_trajectories(tracked, sources, series)
    raise NotImplementedError  # the rest is assembled below once matching/lineage land


def _plan(
    series: ModelSeries, prompts: PromptSet, dictionary: TrackedDictionary, cfg: TrackConfig
) -> dict[str, Any]:
    """Everything that determines a track run's result (weights by content hash)."""
    weights = sorted(dictionary.path.glob("*.safetensors"))
    return {
        "kind": KIND,
        "checkpoints": [
            {**c, "weights_sha256": _folder_digest(Path(str(c["path"])))} for c in series.describe()
        ],
        "dictionary": str(dictionary.path),
        "dictionary_sha256": [sha256_file(p) for p in weights],
        "prompts_sha256": hashlib.sha256(
            json.dumps([prompts.texts, prompts.response_starts]).encode()
        ).hexdigest(),
        "config": _jsonable(asdict(cfg)),
        "dtype": str(series.dtype),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


OWN_ENTRIES = {
    "track.json",
    "stores",
    "on-policy",
    "stagewise",
    "independent",
    "controls",
    "summary.json",
    "report.html",
    "manifest.json",
} | {f"{name}.parquet" for name in TABLES}


def _claim(out: Path, plan: dict[str, Any]) -> None:
    """Make ``out`` this run's directory: new or empty, or holding a run of the same plan
    (which is resumed). Anything else is refused before a byte is written."""
    if out.exists() and not out.is_dir():
        raise RlinterpError(f"--out {out} is a file; give a directory")
    entries = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()
    previous = out / "track.json"
    if previous.is_file():
        if json.loads(previous.read_text()) != plan:
            raise RlinterpError(
                f"{out} holds a track run of other checkpoints, dictionary, prompts or settings; "
                "choose another output directory"
            )
        return
    if entries:
        raise RlinterpError(f"{out} is not empty and holds no track run; choose an empty or new directory")
    write_json(previous, plan)


def _sources(
    series: ModelSeries, prompts: PromptSet, hook: str, out: Path, cfg: TrackConfig
) -> tuple[list[TokenSource], pd.DataFrame]:
    """The token sources asked for, harvested at ``hook`` (resuming), and the on-policy
    samples of every checkpoint (empty without that source)."""
    harvest_cfg = HarvestConfig(hooks=(hook,), batch_size=cfg.batch_size)
    sources, samples = [], pd.DataFrame()
    for name in cfg.sources:
        if name == "prompts":
            asked = PromptSet(tuple(prompt_texts(prompts)))
            store = harvest(series, asked, out / "stores" / name, harvest_cfg)
            sources.append(TokenSource.fixed(name, store))
        elif name == "texts":
            texts_cfg = dataclasses.replace(harvest_cfg, response_only=True)
            sources.append(
                TokenSource.fixed(name, harvest(series, prompts, out / "stores" / name, texts_cfg))
            )
        else:
            on_policy = harvest_on_policy(series, prompts, out / "on-policy", cfg.sampling, harvest_cfg)
            sources.append(TokenSource(name, on_policy.stores))
            steps = {c.label: c.step for c in series}
            samples = pd.concat(
                [table.assign(label=label, step=steps[label]) for label, table in on_policy.samples.items()],
                ignore_index=True,
            )
    return sources, samples


def _stages(source: TokenSource, series: ModelSeries) -> tuple[Stage, list[Stage]]:
    base = Stage(series.base.label, series.base.step, source.stores[series.base.label])
    return base, [Stage(c.label, c.step, source.stores[c.label]) for c in series.checkpoints[1:]]


def _independent(
    dictionary: TrackedDictionary,
    stage: Stage,
    out: Path,
    seed: int,
    n_tokens: int | None,
) -> TrainedSAE:
    """An SAE of the base dictionary's config trained from scratch on ``stage`` (reused if
    finished with the same config)."""
    base_cfg = SAETrainConfig(**dictionary.manifest["config"])
    cfg = dataclasses.replace(base_cfg, seed=seed, n_tokens=n_tokens or base_cfg.n_tokens, init_from=None)
    if (out / MANIFEST).is_file():
        done = json.loads((out / MANIFEST).read_text())
        if done.get("config") != asdict(cfg) or done.get("model") != stage.trained_on:
            raise RlinterpError(f"{out} holds an SAE trained otherwise; choose another output directory")
        return TrainedSAE.load(out)
    return train_sae(stage.store, stage.trained_on, dictionary.hook, out, cfg)


def _steps_of(series: ModelSeries) -> Sequence[int]:
    return [c.step for c in series]
