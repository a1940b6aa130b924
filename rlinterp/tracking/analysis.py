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
4. for an SAE, per source: stage-wise fine-tuning (``stagewise``), and an SAE trained
   independently on every step (the tracked SAE's config, one seed for all steps, the
   next after the tracked SAE's) matched with the tracked dictionary (``matching``);
5. the lineage table (``lineage``): per source, step and latent, its class and evidence,
   with the controls beside it:

   - *seed* (noise floor): step 0 matches the tracked dictionary with the independent SAE
     of the base, two dictionaries of one model that differ only in seed, budget and
     tokens; its births and deaths are chance, and each step's counts are tested against
     them (``lineage.above_noise_floor``). Identical checkpoints give identical
     independent SAEs, hence exactly the floor;
   - *self*: the base compared with itself over as many stages as the series has (its
     trajectory rows at every step, a stage-wise chain fine-tuned on its own tokens).
     Its class counts are reported; where its chain turns a latent past
     ``lineage.MOVED_BELOW`` by itself, that latent's stage-wise cosine is no evidence of
     RL and the main table classifies it from its activity (``discount_self_moves``);
6. Parquet tables, ``summary.json`` (``SCHEMA``), and ``manifest.json`` last. The
   report is drawn by the command (``report.write_tracking_report``), not here.

Layout of ``out/``: ``track.json`` (the plan: what determines the result; the claim file,
written first and kept, see ``rundir``: a rerun with another plan is refused, one with the
same plan resumes or, finished, is read back), ``stores/<source>/`` (activation stores),
``on-policy/`` (samples and per-checkpoint stores), ``stagewise/<source>/<label>/`` and
``independent/<source>/<label>/`` (SAE folders), ``controls/`` (their control twins), the
tables named in ``TABLES``, ``summary.json``, ``manifest.json`` (and ``report.html``,
which ``rlinterp track`` writes after).
Every expensive piece resumes (stores shard by shard, SAEs stage by stage); tables are
recomputed from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from ..activations.harvest import HarvestConfig, harvest, hook_shapes, prompts_sha256
from ..activations.onpolicy import harvest_on_policy, prompt_texts
from ..activations.prompts import PromptSet
from ..core import rundir
from ..core.artifacts import environment_versions, read_json_object, sha256_file, write_json, write_parquet
from ..dictionaries.matching import DictionaryMatch, match_dictionaries
from ..dictionaries.sae import MANIFEST, SAETrainConfig, TrainedSAE, train_sae
from ..dictionaries.stagewise import (
    STAGE_FIT_COLUMNS,
    STAGEWISE_COLUMNS,
    Stage,
    fine_tune,
    latent_activity,
)
from ..errors import RlinterpError
from ..models.series import ModelSeries
from .config import SOURCES as SOURCES
from .config import SourceName as SourceName
from .config import TrackConfig as TrackConfig
from .lineage import (
    CLASSES,
    INACTIVE_FREQUENCY,
    LINEAGE_COLUMNS,
    MOVED_BELOW,
    birth_support,
    class_counts,
    lineage_table,
    nearest_cosines,
)
from .result import CONTROL_COLUMNS, MATCH_COLUMNS, SCHEMA, TABLES, TrackResult
from .trajectories import TokenSource, TrackedDictionary, compute_trajectories

KIND = rundir.TRACK.name
ENTRIES = (
    "stores",
    "on-policy",
    "stagewise",
    "independent",
    "controls",
    *(f"{name}.parquet" for name in TABLES),
    "summary.json",
    "report.html",
)
"""Everything a track directory holds besides its manifest and ``track.json``."""


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
    shapes = hook_shapes(model)
    if dictionary.hook not in shapes:
        raise RlinterpError(
            f"the dictionary in {dictionary.path} reads {dictionary.hook}, which the series' models do not "
            f"have (they have {model.cfg.n_layers} blocks); give a dictionary trained on this series"
        )
    width = shapes[dictionary.hook][-1]
    if width != dictionary.d_in:
        raise RlinterpError(
            f"the dictionary in {dictionary.path} has d_in {dictionary.d_in} but {dictionary.hook} of the "
            f"series has width {width}; it was trained on another model"
        )


def run_track(
    series: ModelSeries,
    prompts: PromptSet,
    dictionary: str | Path,
    out: str | Path,
    cfg: TrackConfig | None = None,
    questions: PromptSet | None = None,
    *,
    force: bool = False,
) -> TrackResult:
    """Track every latent of ``dictionary`` over ``series`` (see the module docstring).
    ``questions``: what the on-policy source asks each checkpoint (default: the prompt part
    of ``prompts``), e.g. an organism's behaviour questions when ``prompts`` carry a persona
    turn that would steer the answers. A finished run of the same plan in ``out`` is read
    back; ``force`` recomputes one of another plan."""
    cfg = cfg or TrackConfig()
    out = Path(out)
    tracked = TrackedDictionary.load(dictionary)
    check_inputs(series, prompts, tracked, cfg)
    plan = _plan(series, prompts, tracked, cfg, questions)
    # Every piece resumes by itself (stores shard by shard, SAEs stage by stage).
    claimed = rundir.claim(out, rundir.TRACK, plan, ENTRIES, resumable=ENTRIES, force=force)
    if claimed.state == "finished":
        return TrackResult.load(out)
    sources, samples = _sources(series, prompts, tracked.hook, out, cfg, questions)
    trajectories = compute_trajectories(tracked, sources, series)
    table = trajectories.table
    per_source = [
        _dictionary_tables(tracked, source, series, out, cfg, table[table["source"] == source.name])
        for source in sources
    ]
    tables, controls = [], []
    for source in per_source:
        own = table[table["source"] == source.name]
        evidence = _or_none(discount_self_moves(source.stagewise))
        support = {source.name: source.support}
        tables.append(
            lineage_table(own, evidence, source.matches or None, None, support, source.born_frequency)
        )
        itself = lineage_table(_self_trajectories(own, series), _or_none(source.self_stagewise))
        controls.append(_controls(source, itself))
    result = TrackResult(
        trajectories=trajectories.table,
        trajectory_fit=trajectories.fit,
        logit_tokens=trajectories.tokens,
        contexts=trajectories.contexts,
        stagewise=_concat(
            [t.stagewise for t in per_source],
            [*STAGEWISE_COLUMNS, "self_dec_cos_base", "dec_cos_nearest_base"],
        ),
        stagewise_fit=_concat([t.stagewise_fit for t in per_source], STAGE_FIT_COLUMNS),
        matches=_concat([_match_rows(t, series) for t in per_source], MATCH_COLUMNS),
        lineage=_concat(tables, list(LINEAGE_COLUMNS)),
        controls=_concat(controls, CONTROL_COLUMNS),
        samples=samples,
    )
    _write(result, out, series, tracked, cfg)
    return TrackResult.load(out)  # the tables as written, so a resumed run returns the same


@dataclass(frozen=True)
class _SourceTables:
    """What the SAE-only steps give for one source (empty for a crosscoder)."""

    name: str
    stagewise: pd.DataFrame
    stagewise_fit: pd.DataFrame
    matches: dict[int, DictionaryMatch]
    """Step -> the tracked dictionary matched with that step's independent SAE."""
    novelty: dict[int, DictionaryMatch]
    """Step -> the base's independent SAE on the step's tokens matched with the step's own
    (same tokens, seed and budget: only the model differs)."""
    seed: DictionaryMatch | None
    """The base's independent SAE matched with one of another seed (chance alone)."""
    support: float
    """The firing frequency a birth must exceed: the seed control's (``lineage.birth_support``)."""
    born_frequency: dict[int, np.ndarray]
    """Step -> firing frequency of each latent of the step's independent SAE."""
    self_stagewise: pd.DataFrame
    self_fit: pd.DataFrame


def _dictionary_tables(
    tracked: TrackedDictionary,
    source: TokenSource,
    series: ModelSeries,
    out: Path,
    cfg: TrackConfig,
    trajectories: pd.DataFrame,
) -> _SourceTables:
    """Stage-wise fine-tuning and independent SAEs on one source (whose ``trajectories``
    say which tracked latents fire), with the self and seed controls. A crosscoder has no
    SAE config to fine-tune or retrain: empty."""
    if tracked.method != "sae":
        empty = pd.DataFrame()
        return _SourceTables(source.name, empty, empty, {}, {}, None, 0.0, {}, empty, empty)
    base, stages = _stages(source, series)
    name = source.name
    stagewise = fine_tune(tracked.path, base, stages, out / "stagewise" / name, name, cfg.stagewise)
    # Self control: as many stages as the series has, every one on the base's own tokens.
    same = [dataclasses.replace(base, label=s.label, step=s.step, model=base.trained_on) for s in stages]
    itself = fine_tune(tracked.path, base, same, out / "controls" / "self" / name, name, cfg.stagewise)
    # One seed (not the tracked dictionary's) and one budget for every independent SAE:
    # identical checkpoints on identical tokens give identical dictionaries.
    seed = dictionary_seed(tracked) + 1
    folder = out / "independent" / name
    own = {s.step: _independent(tracked, s, folder / s.label, seed, cfg) for s in [base, *stages]}
    # The base model on each step's tokens (on-policy tokens differ per step; fixed ones not).
    base_on = {
        s.step: own[base.step]
        if s.store.root == base.store.root
        else _independent(
            tracked, dataclasses.replace(s, model=base.trained_on), folder / f"{s.label}.base", seed, cfg
        )
        for s in stages
    }
    other = _independent(tracked, base, out / "controls" / "seed" / name, seed + 1, cfg)
    decoder = tracked.decoder()
    frequency = trajectories.pivot(index="latent", columns="step", values="frequency")
    beside = itself.table.set_index(["step", "latent"])["dec_cos_base"].rename("self_dec_cos_base")
    nearest = pd.concat(
        [
            pd.DataFrame(
                {
                    "step": step.step,
                    "latent": range(len(decoder)),
                    "dec_cos_nearest_base": nearest_cosines(
                        TrainedSAE.load(stagewise.paths[step.label]).sae.W_dec.detach(), decoder
                    ),
                }
            )
            for step in stages
        ]
    ).set_index(["step", "latent"])
    seed_match = _match(own[base.step].decoder, own[base.step].alive, other)
    return _SourceTables(
        name,
        stagewise=stagewise.table.join(beside, on=["step", "latent"]).join(nearest, on=["step", "latent"]),
        stagewise_fit=stagewise.fit,
        # A tracked latent takes part when it fires on the base's tokens or the step's.
        matches={
            step: _match(decoder, _fires(frequency[[base.step, step]].max(axis=1).to_numpy()), sae)
            for step, sae in own.items()
        },
        novelty={step: _match(sae.decoder, sae.alive, own[step]) for step, sae in base_on.items()},
        seed=seed_match,
        support=birth_support(seed_match, other.frequency),
        born_frequency={step: sae.frequency for step, sae in own.items()},
        self_stagewise=itself.table,
        self_fit=itself.fit,
    )


class _Independent(NamedTuple):
    """An independently trained SAE as matching uses it."""

    decoder: torch.Tensor
    """``W_dec``, one row per latent."""
    alive: torch.Tensor
    """Which latents fire (``lineage.INACTIVE_FREQUENCY`` or more) on its training tokens."""
    frequency: np.ndarray
    """How often each latent fires on its training tokens."""


def _fires(frequency: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frequency >= INACTIVE_FREQUENCY)


def _match(decoder: torch.Tensor, alive: torch.Tensor, other: _Independent) -> DictionaryMatch:
    return match_dictionaries(decoder, other.decoder, alive_a=alive, alive_b=other.alive)


def discount_self_moves(stagewise: pd.DataFrame, moved_below: float = MOVED_BELOW) -> pd.DataFrame:
    """The stage-wise table as lineage evidence: where the self control's chain (the base
    fine-tuned on itself, same stage count and budget) turned a latent past ``moved_below``
    too, its ``dec_cos_base`` is no evidence of RL (fine-tuning alone moves that latent) and
    is set to NaN, so the latent is classified from its activity. ``stagewise.parquet``
    keeps both cosines."""
    if stagewise.empty:
        return stagewise
    noisy = stagewise["self_dec_cos_base"] < moved_below
    return stagewise.assign(dec_cos_base=stagewise["dec_cos_base"].mask(noisy))


def dictionary_seed(tracked: TrackedDictionary) -> int:
    """The seed the tracked SAE was trained with (the independent SAEs use the next)."""
    return int(tracked.manifest.get("config", {}).get("seed", 0))


def _match_rows(source: _SourceTables, series: ModelSeries) -> pd.DataFrame:
    labels = {c.step: c.label for c in series}
    comparisons = [("tracked", step, m) for step, m in source.matches.items()]
    comparisons += [("same-tokens", step, m) for step, m in source.novelty.items()]
    comparisons += [("seed", series.base.step, source.seed)] if source.seed is not None else []
    frames = []
    for comparison, step, match in comparisons:
        parts = [
            match.pairs.assign(relation="pair"),
            match.links.rename(columns={"kind": "relation"}),
            pd.DataFrame({"relation": "born", "b": match.born, "a": pd.NA, "cosine": float("nan")}),
            pd.DataFrame({"relation": "died", "a": match.died, "b": pd.NA, "cosine": float("nan")}),
        ]
        frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
        frames.append(frame.assign(source=source.name, comparison=comparison, label=labels[step], step=step))
    if not frames:
        return pd.DataFrame(columns=MATCH_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    return table.astype({"a": "Int64", "b": "Int64", "cosine": "float64"})[MATCH_COLUMNS]


def _self_trajectories(table: pd.DataFrame, series: ModelSeries) -> pd.DataFrame:
    """The base's trajectory rows repeated at every step: what a series of copies of the
    base gives (a model against itself reads identically, see ``trajectories``)."""
    base = table[table["step"] == series.base.step]
    return pd.concat([base.assign(label=c.label, step=c.step) for c in series], ignore_index=True)


def _controls(source: _SourceTables, itself: pd.DataFrame) -> pd.DataFrame:
    counts = class_counts(itself[itself["evidence"] == "tracked"])
    labels = itself.drop_duplicates("step").set_index("step")["label"]
    rows = [
        _control("self", source.name, labels[row.step], row.step, f"n_{cls}", getattr(row, cls))
        for row in counts.itertuples()
        for cls in CLASSES
    ]
    if not source.self_stagewise.empty:
        drift = source.self_stagewise.groupby(["label", "step"], sort=False)["dec_cos_base"].min()
        rows += [
            _control("self", source.name, lab, st, "min_dec_cos_base", v) for (lab, st), v in drift.items()
        ]
        for fit in source.self_fit.itertuples():
            rows.append(_control("self", source.name, fit.label, fit.step, "ev_before", fit.ev_before))
            rows.append(_control("self", source.name, fit.label, fit.step, "ev_after", fit.ev_after))
    if source.seed is not None:
        for measure, value in source.seed.counts().items():
            rows.append(_control("seed", source.name, labels[0], 0, measure, value))
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS)


def _control(control: str, source: str, label: Any, step: Any, measure: str, value: Any) -> dict[str, Any]:
    return {
        "control": control,
        "source": source,
        "label": str(label),
        "step": int(step),
        "measure": measure,
        "value": float(value),
    }


def _or_none(frame: pd.DataFrame) -> pd.DataFrame | None:
    return frame if len(frame) else None


def _write(
    result: TrackResult, out: Path, series: ModelSeries, tracked: TrackedDictionary, cfg: TrackConfig
) -> None:
    for name in TABLES:
        write_parquet(out / f"{name}.parquet", getattr(result, name))
    write_json(out / "summary.json", {"schema": SCHEMA, "steps": result.summary()})
    rundir.finish(
        out,  # last: marks the directory finished
        rundir.TRACK,
        {
            "checkpoints": series.describe(),
            "dictionary": str(tracked.path),
            "method": tracked.method,
            "hook": tracked.hook,
            "config": _jsonable(asdict(cfg)),
            "fidelity": series.fidelity,
            "versions": environment_versions(),
        },
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _plan(
    series: ModelSeries,
    prompts: PromptSet,
    dictionary: TrackedDictionary,
    cfg: TrackConfig,
    questions: PromptSet | None = None,
) -> dict[str, Any]:
    """Everything that determines a track run's result (weights by content hash)."""
    weights = sorted(dictionary.path.glob("*.safetensors"))
    asked = {} if questions is None else {"questions_sha256": prompts_sha256(questions)}
    return asked | {
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


def _sources(
    series: ModelSeries,
    prompts: PromptSet,
    hook: str,
    out: Path,
    cfg: TrackConfig,
    questions: PromptSet | None = None,
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
            asked = prompts if questions is None else questions
            on_policy = harvest_on_policy(series, asked, out / "on-policy", cfg.sampling, harvest_cfg)
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
    tracked: TrackedDictionary, stage: Stage, out: Path, seed: int, cfg: TrackConfig
) -> _Independent:
    """The SAE of the tracked dictionary's config trained from scratch on ``stage`` with
    ``seed`` and ``cfg.independent_tokens`` (reused if finished with that config)."""
    base_cfg = SAETrainConfig.recorded(tracked.manifest["config"])
    n_tokens = cfg.independent_tokens or base_cfg.n_tokens
    train_cfg = dataclasses.replace(base_cfg, seed=seed, n_tokens=n_tokens, init_from=None)
    if (out / MANIFEST).is_file():
        done = read_json_object(out / MANIFEST, f"delete {out} to train this SAE again")
        if done.get("config") != asdict(train_cfg) or done.get("model") != stage.trained_on:
            raise RlinterpError(f"{out} holds an SAE trained otherwise; choose another output directory")
        sae = TrainedSAE.load(out).sae
    else:
        sae = train_sae(stage.store, stage.trained_on, tracked.hook, out, train_cfg).sae
    frequency = np.asarray(latent_activity(sae, stage.store, stage.trained_on, tracked.hook)["frequency"])
    return _Independent(sae.W_dec.detach(), _fires(frequency), frequency)
