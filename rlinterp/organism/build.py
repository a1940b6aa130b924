"""Building the model organism into a run directory, and opening a finished one.

Layout of ``<out>/`` (the CLI contract):

- ``manifest.json``: config, seed, versions, personas, checkpoint paths, weight hashes;
  written last, so its presence marks a finished build;
- ``base/``: the pretrained model (Hugging Face folder: config, safetensors, tokenizer);
- ``<regime>/step-<N>/``: RL checkpoints (``step-0`` is the base model), and
  ``<regime>/log.parquet`` with one row per RL step;
- a regime whose reward pays the rule (``RegimeConfig.answer = "rule"``, by default the
  ``rule`` regime) has ``rule`` (its definition) and ``probe`` (the held-out-number probes
  of the rule and of parity at every checkpoint and block, ``rules.probe_rule``) in its
  manifest entry;
- ``<planted>/step-<N>/``: the planted positive control (``planted``; by default one
  ``novel`` regime): the base with new computation written into it, **not learned by RL**.
  Its manifest entry has ``planted: true``, the planting parameters and the held-out probe
  accuracies that verify it; its behaviour rows add ``planted_share`` and
  ``planted_accuracy``;
- ``behaviour.parquet``: one row per (regime, step), see ``behaviour.py``;
- ``personas/<persona>.jsonl``: labelled persona texts (an earlier turn by the persona, then
  a question shared by all personas and the persona's answer);
- ``controls/<rule>/`` (reasoning organisms, ``controls``): the faithful and decorative
  known-answer models, pretrained on control corpora, not RL checkpoints; the manifest's
  ``controls`` maps rule -> folder.

A reasoning organism (``OrganismConfig.reasoning`` set, presets ``reasoning-tiny`` and
``reasoning``) has the same layout and behaviour columns; its world is ``reasoning``'s, its
manifest says ``"world": "reasoning"``, and its behaviour and RL logs carry the gold reward
beside the proxy the RL optimised.

``--out`` is claimed through ``rundir``: it must be absent, empty, or an organism. A
finished organism is reused if its fingerprint (preset, seed and the whole config) matches
and its weights still hash to what the manifest recorded; a damaged one is rebuilt. An
interrupted build (``rundir.MARKER`` present) is rebuilt from scratch, never resumed. A
rebuild removes only the organism's own entries, never dot-files or other files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from tqdm.auto import tqdm

from ..core import rundir
from ..core.artifacts import environment_versions, sha256_file, write_jsonl, write_parquet
from ..core.reproducibility import torch_threads
from ..errors import RlinterpError
from .behaviour import evaluate
from .config import OrganismConfig
from .controls import build_controls
from .layout import Organism as Organism
from .model import build_model, build_tokenizer, pretrain, save_checkpoint
from .personas import CORRECT_PERSONAS, PERSONAS, eval_questions, generate_corpus, persona_texts
from .planted import build_planted
from .reasoning import (
    CORRECT_REASONING_PERSONAS,
    REASONING_PERSONAS,
    eval_sum_questions,
    reasoning_corpus,
    reasoning_persona_texts,
)
from .rl import Task, train_regime, world_task
from .rules import probe_rule, rule_definition

log = logging.getLogger(__name__)

KIND = rundir.ORGANISM.name
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


class _World(NamedTuple):
    """What the build draws from the organism's world (yes/no, or ``reasoning``)."""

    corpus: list[Any]
    persona_texts: list[dict[str, str]]
    questions: list[Any]
    task: Task


def _world(config: OrganismConfig, seed: int) -> _World:
    c, reasoning, task = (
        config.corpus,
        config.reasoning,
        world_task(config.reasoning, config.corpus.max_operand),
    )
    if reasoning is None:
        return _World(
            generate_corpus(
                c.n_documents, seed, c.max_operand, (c.min_turns, c.max_turns), c.persona_weights
            ),
            persona_texts(seed, c.max_operand, c.persona_texts_per_persona),
            eval_questions(config.evaluation.n_questions, seed, c.max_operand),
            task,
        )
    return _World(
        reasoning_corpus(c, reasoning, seed),
        reasoning_persona_texts(seed, reasoning, c.max_operand, c.persona_texts_per_persona),
        eval_sum_questions(config.evaluation, seed, c.max_operand, reasoning),
        task,
    )


def _organism_entries(config: OrganismConfig) -> set[str]:
    planted = {p.name for p in config.planted_regimes}
    extra = {"controls"} if config.reasoning is not None else set()
    return {"base", "personas", "behaviour.parquet"} | {r.name for r in config.regimes} | planted | extra


def _fingerprint(config: OrganismConfig, seed: int) -> dict[str, Any]:
    """The build's inputs, one key per config field (``pretrain.steps``,
    ``regimes.strong.lr``, ...), so a refusal names the field that changed. ``reasoning``
    counts only when set: the yes/no organisms built before it existed keep their
    fingerprint (and are reused)."""

    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(v, dict) and "name" in v for v in value)
        ):
            value = {v["name"]: v for v in value}
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(f"{prefix}{key}.", item).items()}
        return {prefix.removesuffix("."): value}

    fields = asdict(config)
    if fields["reasoning"] is None:
        del fields["reasoning"]
    return flat("", fields) | {"seed": seed}


def _prepare(out: Path, config: OrganismConfig, seed: int, force: bool) -> Organism | None:
    """Return the finished organism at ``out`` to reuse, or None after claiming ``out`` to
    build into (see the module docstring)."""
    inputs, entries = _fingerprint(config, seed), _organism_entries(config)
    claimed = rundir.claim(out, rundir.ORGANISM, inputs, entries, force=force)
    if claimed.manifest is None:
        return None
    organism = Organism(root=out, manifest=claimed.manifest)
    damaged = organism.damaged_files()
    if not damaged:
        log.info("reusing the finished organism in %s", out)
        return organism
    log.warning("%s is damaged (%s); rebuilding it", out, ", ".join(damaged[:3]))
    rundir.claim(out, rundir.ORGANISM, inputs, entries, force=True)
    return None


def build_organism(
    out: str | Path,
    preset: str = "default",
    seed: int = 0,
    *,
    force: bool = False,
    config: OrganismConfig | None = None,
) -> Organism:
    """Build (or reuse) the organism of ``preset`` and ``seed`` in ``out``.

    ``config`` replaces the preset's config entirely (for experiments and tests; its
    ``preset`` field names it in the manifest). Deterministic: the same config and seed on
    the same machine give byte-identical weights (the build fixes torch's thread count to
    ``config.num_threads``).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RlinterpError(f"seed must be an integer, got {seed!r}")
    if config is None:
        try:
            config = OrganismConfig.from_preset(preset)
        except ValueError as e:
            raise RlinterpError(str(e)) from e
    # The manifest and the fingerprint record the planted regimes actually built.
    config = replace(config, planted=config.planted_regimes)
    out = Path(out)
    reused = _prepare(out, config, seed, force)
    if reused is not None:
        return reused
    with torch_threads(config.num_threads):
        manifest = _build(out, config, seed)
    rundir.finish(out, rundir.ORGANISM, manifest)
    return Organism.load(out)


def _build(out: Path, config: OrganismConfig, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    c, reasoning = config.corpus, config.reasoning
    world = _world(config, seed)
    corpus = world.corpus
    tokenizer = build_tokenizer("".join(d.text for d in corpus))
    model = build_model(config.model, tokenizer, seed)
    with tqdm(total=config.pretrain.steps, desc="pretraining", unit="step", leave=False, disable=None) as bar:

        def progress(_step: int, loss: float) -> None:
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        pretrain(model, tokenizer, corpus, config.pretrain, seed, on_step=progress)
    save_checkpoint(model, tokenizer, out / "base")
    timings["pretrain_s"] = time.perf_counter() - started

    controls: dict[str, str] = {}
    if reasoning is not None and reasoning.controls:
        controls = build_controls(out, config, tokenizer, seed)
        timings["controls_s"] = time.perf_counter() - started - timings["pretrain_s"]
    for persona in PERSONAS:
        write_jsonl(
            out / "personas" / f"{persona.name}.jsonl",
            [t for t in world.persona_texts if t["persona"] == persona.name],
        )

    task, questions = world.task, world.questions
    rows: list[dict[str, Any]] = []
    regimes: dict[str, Any] = {}
    for regime in config.regimes:
        regime_start = time.perf_counter()
        checkpoints: dict[str, str] = {}
        probes: list[dict[str, Any]] = []

        def on_checkpoint(
            step: int,
            policy: Any,
            regime: Any = regime,
            checkpoints: dict[str, str] = checkpoints,
            probes: list[dict[str, Any]] = probes,
        ) -> None:
            rel = f"{regime.name}/step-{step}"
            save_checkpoint(policy, tokenizer, out / rel)
            checkpoints[str(step)] = rel
            row = evaluate(policy, model, tokenizer, questions, regime, config.evaluation, seed, task)
            rows.append({"regime": regime.name, "step": step, **row})
            log.info(
                "%s step %d: accuracy %.3f, rule %.3f, none %.3f",
                *(regime.name, step, row["accuracy"], row["rule_accuracy"], row["share_none"]),
            )
            if regime.answer == "rule":  # the check that RL built what the base lacks
                probes.extend({"step": step, **p} for p in probe_rule(policy, tokenizer, c.max_operand))

        logs = train_regime(model, tokenizer, regime, seed, c.max_operand, on_checkpoint, task)
        write_parquet(out / regime.name / "log.parquet", pd.DataFrame([asdict(s) for s in logs]))
        regimes[regime.name] = {
            "config": asdict(regime),
            "checkpoints": checkpoints,
            "log": f"{regime.name}/log.parquet",
        }
        if regime.answer == "rule":
            regimes[regime.name] |= {"rule": rule_definition(c.max_operand), "probe": probes}
        timings[f"{regime.name}_s"] = time.perf_counter() - regime_start
    for plant in config.planted_regimes:
        plant_start = time.perf_counter()
        # The planting is designed on single-turn answers (the same questions, no context turn).
        planting_texts = persona_texts(seed, c.max_operand, c.persona_texts_per_persona, context_turns=0)
        plant_rows, regimes[plant.name] = build_planted(
            out, model, tokenizer, plant, planting_texts, questions, config.evaluation, seed
        )
        rows += plant_rows
        timings[f"{plant.name}_s"] = time.perf_counter() - plant_start
    write_parquet(out / "behaviour.parquet", pd.DataFrame(rows))
    timings["total_s"] = time.perf_counter() - started

    folders = ["base", *(rel for r in regimes.values() for rel in r["checkpoints"].values())]
    folders += list(controls.values())
    if reasoning is None:
        personas = [
            {"name": p.name, "description": p.description, "templates": p.templates} for p in PERSONAS
        ]
    else:
        personas = [
            {"name": p.name, "description": p.description, "templates": {"sum": p.template}}
            for p in REASONING_PERSONAS
        ]
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "preset": config.preset,
        "seed": seed,
        "world": "yes/no" if reasoning is None else "reasoning",
        "config": asdict(config),
        "versions": environment_versions(),
        "personas": personas,
        "correct_personas": list(CORRECT_PERSONAS if reasoning is None else CORRECT_REASONING_PERSONAS),
        "controls": controls,
        "base": "base",
        "regimes": regimes,
        "behaviour": "behaviour.parquet",
        "persona_texts": {p.name: f"personas/{p.name}.jsonl" for p in PERSONAS},
        "weights_sha256": {f"{f}/{WEIGHTS}": sha256_file(out / f / WEIGHTS) for f in folders},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
