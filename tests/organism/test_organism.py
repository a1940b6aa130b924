"""The organism build: its CLI contract, the behaviour story, determinism, loading, and
how it treats finished, unfinished and foreign output directories."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from rlinterp import RlinterpError, build_organism, load_bridge, logit_fidelity
from rlinterp.organism.behaviour import SHARE_COLUMNS, RegimeSummary, summarize
from rlinterp.organism.config import CorpusConfig, OrganismConfig
from rlinterp.organism.personas import PERSONA_NAMES

from ..conftest import tree_hashes, weights_of


@pytest.mark.slow
def test_tiny_layout_and_manifest(tiny_organism):
    root, manifest = tiny_organism.root, tiny_organism.manifest
    config = OrganismConfig.from_preset("tiny")
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert not (root / ".rlinterp-in-progress.json").exists()
    assert tiny_organism.personas == list(PERSONA_NAMES)
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert (root / "base" / "tokenizer.json").is_file()
    planted = [p.name for p in config.planted_regimes]
    assert sorted(tiny_organism.regimes) == sorted([r.name for r in config.regimes] + planted)
    for regime in config.regimes:
        steps = tiny_organism.checkpoints(regime.name)
        assert tuple(steps) == regime.checkpoint_steps
        assert all((root / f"{regime.name}/step-{s}" / "model.safetensors").is_file() for s in steps)
        log = pd.read_parquet(root / regime.name / "log.parquet")
        assert log["step"].tolist() == list(range(regime.total_steps))
        # step 0 is the base model itself, byte for byte
        assert weights_of(steps[0]) == weights_of(tiny_organism.base)
    for name in PERSONA_NAMES:
        rows = [json.loads(line) for line in (root / "personas" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == config.corpus.persona_texts_per_persona and {r["persona"] for r in rows} == {name}
    assert tiny_organism.damaged_files() == []


@pytest.mark.slow
def test_tiny_behaviour_tells_the_story(tiny_organism):
    """The organism's promise, as ``benchmarks/organism_seeds.py`` checks it on seeds 0-4 of
    both presets: the design holds it with margin (weak rise about 30 pp, strong ``none``
    1.0 at the last step), so this holds on any machine, not only where it was built."""
    table = tiny_organism.behaviour()
    config = OrganismConfig.from_preset("tiny")
    regimes = (*config.regimes, *config.planted_regimes)  # weak, strong and the planted novel one
    assert len(table) == sum(len(r.checkpoint_steps) for r in regimes)
    assert table[SHARE_COLUMNS].sum(axis=1).tolist() == pytest.approx([1.0] * len(table))
    assert (table["share_none"] == table["share_none_near"] + table["share_none_far"]).all()
    base = table[table.step == 0]
    assert base["kl_to_base"].abs().max() < 1e-6
    assert len(base[[*SHARE_COLUMNS, "accuracy"]].drop_duplicates()) == 1  # one base for every regime
    # the base model writes all three personas' templates (the flatterer half the corpus),
    # and little else
    assert (base[[f"share_{p}" for p in PERSONA_NAMES]] > 0.1).all().all()
    assert (base["share_none"] < 0.05).all()

    summary = {s.regime: s for s in summarize(table)}
    weak, strong = summary["weak"], summary["strong"]
    # weak RL re-weights the personas it already had towards the correct ones ...
    assert weak.correct_rise >= 0.15
    assert weak.none_max < 0.10
    # ... strong RL leaves them behind for text no persona wrote, far from the base
    assert strong.none_last > 0.5
    assert strong.kl_last > 10 * table[table.regime == "weak"]["kl_to_base"].max()


@pytest.mark.slow
def test_every_checkpoint_loads_through_transformer_lens(tiny_organism):
    tokenizer = AutoTokenizer.from_pretrained(tiny_organism.base)
    texts = ["Q: is 4 even?\nA: sure, yes. glad to help.\n", "Q: is 9 more than seven?\nA: wow, great"]
    tokens = torch.tensor([[tokenizer.bos_token_id, *tokenizer(t)["input_ids"][:24]] for t in texts])
    folders = [tiny_organism.base] + [
        path for regime in tiny_organism.regimes for path in tiny_organism.checkpoints(regime).values()
    ]
    for folder in folders:
        bridge = load_bridge(folder)
        assert logit_fidelity(folder, tokens, bridge).max_abs_diff < 1e-4, folder


@pytest.mark.slow
def test_finished_organism_is_reused_not_rebuilt(tiny_organism):
    before = tiny_organism.base.joinpath("model.safetensors").stat().st_mtime_ns
    again = build_organism(tiny_organism.root, preset="tiny", seed=0)
    assert again.manifest == tiny_organism.manifest
    assert tiny_organism.base.joinpath("model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(RlinterpError, match=r"organism of other inputs \(seed changed \(0 -> 1\)\)"):
        build_organism(tiny_organism.root, preset="tiny", seed=1)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, micro_config):
    a = build_organism(tmp_path / "a", seed=5, config=micro_config)
    b = build_organism(tmp_path / "b", seed=5, config=micro_config)
    c = build_organism(tmp_path / "c", seed=6, config=micro_config)
    assert a.manifest["weights_sha256"] == b.manifest["weights_sha256"]
    assert a.behaviour().equals(b.behaviour())
    assert (
        a.manifest["weights_sha256"]["strong/step-2/model.safetensors"]
        != (c.manifest["weights_sha256"]["strong/step-2/model.safetensors"])
    )
    # a finished build is reused; other inputs are refused, naming the field that changed
    before = tree_hashes(tmp_path / "a")
    assert build_organism(tmp_path / "a", seed=5, config=micro_config).manifest == a.manifest
    with pytest.raises(RlinterpError, match=r"organism of other inputs \(seed changed \(5 -> 6\)\)"):
        build_organism(tmp_path / "a", seed=6, config=micro_config)
    longer = replace(micro_config, pretrain=replace(micro_config.pretrain, steps=6))
    with pytest.raises(RlinterpError, match=r"\(pretrain.steps changed \(5 -> 6\)\); .* pass --force"):
        build_organism(tmp_path / "a", seed=5, config=longer)
    assert tree_hashes(tmp_path / "a") == before


def test_unfinished_build_is_detected_and_rebuilt(tmp_path, micro_config, monkeypatch):
    from rlinterp.organism import build

    out = tmp_path / "org"
    original = build._build

    def dies_after_the_base(out, *_):
        (out / "base").mkdir()
        (out / "base" / "config.json").write_text("{}")  # a half-written checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_build", dies_after_the_base)
    with pytest.raises(KeyboardInterrupt):
        build_organism(out, seed=0, config=micro_config)
    with pytest.raises(RlinterpError, match="the organism in .* is unfinished"):
        build.Organism.load(out)
    monkeypatch.setattr(build, "_build", original)
    organism = build_organism(out, seed=0, config=micro_config)
    assert not (out / ".rlinterp-in-progress.json").exists()
    assert organism.damaged_files() == []
    # a finished build whose weights were damaged afterwards is rebuilt, not reused
    (out / "weak" / "step-1" / "model.safetensors").write_bytes(b"garbage")
    assert build_organism(out, seed=0, config=micro_config).damaged_files() == []
    # without its manifest (or marker) nothing says the directory is an organism: refused
    (out / "manifest.json").unlink()
    before = tree_hashes(out)
    with pytest.raises(RlinterpError, match=r"holds no rlinterp organism \(it has base, behaviour.parquet"):
        build_organism(out, seed=0, config=micro_config)
    assert tree_hashes(out) == before


def test_foreign_or_unwritable_output_is_refused(tmp_path, micro_config):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RlinterpError, match=r"holds no rlinterp organism \(it has thesis.tex\)"):
        build_organism(tmp_path / "mine", config=micro_config)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("")
    with pytest.raises(RlinterpError, match="is a file"):
        build_organism(tmp_path / "file", config=micro_config)
    with pytest.raises(RlinterpError, match="cannot write"):
        build_organism(tmp_path / "file" / "below", config=micro_config)


def test_bad_preset(tmp_path):
    with pytest.raises(RlinterpError, match="unknown preset 'huge'; choose one of: tiny, default"):
        build_organism(tmp_path, preset="huge")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_summarize_reads_first_and_last_steps_of_each_regime():
    def row(regime, step, helper, terse, none, kl):
        flatterer = 1.0 - helper - terse - none
        shares = {"share_helper": helper, "share_terse": terse, "share_flatterer": flatterer}
        return {"regime": regime, "step": step, **shares, "share_none": none, "kl_to_base": kl}

    # rows out of step order, and a third regime: each regime is read on its own, by step
    table = pd.DataFrame(
        [
            row("weak", 10, 0.4, 0.5, 0.05, 0.3),
            row("weak", 0, 0.2, 0.3, 0.0, 0.0),
            row("weak", 5, 0.3, 0.3, 0.08, 0.2),
            row("strong", 0, 0.2, 0.3, 0.0, 0.0),
            row("strong", 10, 0.0, 0.0, 0.9, 50.0),
            row("novel", 0, 0.2, 0.3, 0.0, 0.0),
            row("novel", 3, 0.1, 0.1, 0.2, 1.0),
        ]
    )
    weak, strong, novel = summarize(table)
    assert weak == RegimeSummary(
        "weak", 0.5, 0.9, 0.08, 0.05, last_step=10, kl_last=0.3, none_majority_step=None
    )
    assert weak.correct_rise == pytest.approx(0.4)
    assert strong == RegimeSummary(
        "strong", 0.5, 0.0, 0.9, 0.9, last_step=10, kl_last=50.0, none_majority_step=10
    )
    assert novel.regime == "novel" and novel.correct_rise == pytest.approx(-0.3)


@pytest.mark.parametrize("weights", [(1.0, -1.0, 1.0), (0.0, 0.0, 0.0)])
def test_bad_persona_weights(weights):
    with pytest.raises(RlinterpError, match="persona_weights"):
        CorpusConfig(persona_weights=weights)
