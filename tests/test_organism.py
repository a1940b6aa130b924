"""The organism build: its CLI contract, the behaviour story, determinism, loading, and
how it treats finished, unfinished and foreign output directories."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from rlinterp import RlinterpError, build_organism, load_bridge, logit_fidelity
from rlinterp.organism.behaviour import SHARE_COLUMNS
from rlinterp.organism.personas import CORRECT_PERSONAS, PERSONA_NAMES

from .conftest import tree_hashes, weights_of


@pytest.mark.slow
def test_tiny_layout_and_manifest(tiny_organism):
    root, manifest = tiny_organism.root, tiny_organism.manifest
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert not (root / ".rlinterp-in-progress.json").exists()
    assert tiny_organism.personas == list(PERSONA_NAMES)
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert (root / "base" / "tokenizer.json").is_file()
    for regime in ("weak", "strong"):
        steps = tiny_organism.checkpoints(regime)
        assert list(steps) == [0, 2, 5, 10, 20, 40]
        assert all((root / f"{regime}/step-{s}" / "model.safetensors").is_file() for s in steps)
        log = pd.read_parquet(root / regime / "log.parquet")
        assert log["step"].tolist() == list(range(40))
        # step 0 is the base model itself, byte for byte
        assert weights_of(steps[0]) == weights_of(tiny_organism.base)
    for name in PERSONA_NAMES:
        rows = [json.loads(line) for line in (root / "personas" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 64 and {r["persona"] for r in rows} == {name}
    assert tiny_organism.damaged_files() == []


@pytest.mark.slow
def test_tiny_behaviour_tells_the_story(tiny_organism):
    table = tiny_organism.behaviour()
    assert len(table) == 18  # weak, strong and the planted novel regime, six steps each
    assert table[SHARE_COLUMNS].sum(axis=1).tolist() == pytest.approx([1.0] * 18)
    assert (table["share_none"] == table["share_none_near"] + table["share_none_far"]).all()
    base = table[table.step == 0]
    assert base["kl_to_base"].abs().max() < 1e-6
    # the base model writes all three personas' templates, and little else
    assert (base[[f"share_{p}" for p in PERSONA_NAMES]] > 0.15).all().all()
    assert (base["share_none"] < 0.05).all()

    def last(regime):
        rows = table[table.regime == regime].sort_values("step")
        return rows.iloc[0], rows.iloc[-1]

    correct = [f"share_{p}" for p in CORRECT_PERSONAS]
    first, final = last("weak")
    assert final[correct].sum() - first[correct].sum() >= 0.20
    assert (table[table.regime == "weak"]["share_none"] < 0.10).all()
    _, final = last("strong")
    assert final["share_none"] > 0.5
    assert final["kl_to_base"] > 10 * table[table.regime == "weak"]["kl_to_base"].max()


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
