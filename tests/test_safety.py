"""No command loses a user's file, resume never mixes inputs, and only finished runs look
finished. Each refusal is checked for its one-line message and for leaving every file
under the directory byte for byte as it was (``tree_hashes``)."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError, build_organism
from rlinterp.activations.harvest import ActivationStore, HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.cli import main
from rlinterp.core.rundir import MARKER, Kind, annotate, changes, claim, finish, read_finished, read_record
from rlinterp.dictionaries.sae import TrainedSAE
from rlinterp.dictionaries.train import DictionaryConfig, evaluate_dictionary, train_dictionary
from rlinterp.diff.analysis import SeriesDiff, run_diff
from rlinterp.models.series import ModelSeries
from rlinterp.organism import Organism
from rlinterp.organism.model import build_tokenizer

from .conftest import sparse_data, synthetic_store, tiny_hf_config, tree_hashes

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"
TEXTS = [f"q: is {n} even? a: {'yes' if n % 2 == 0 else 'no'}" for n in range(10)] + ["hello there"]
PROMPTS = PromptSet.from_list(TEXTS)
HOOK = "blocks.0.hook_resid_post"
SMALL = DictionaryConfig(d_sae=16, k=2, n_tokens=10_000, batch_size=128)
harvest_module = sys.modules["rlinterp.activations.harvest"]


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    build_tokenizer(ALPHABET).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """``base``, ``step-1`` (a copy of base) and ``other/step-1`` (same label, other weights),
    and a prompt file."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2")).eval()
    _save(model, root / "base")
    _save(model, root / "step-1")
    with torch.no_grad():
        weight = model.get_parameter("transformer.h.1.mlp.c_fc.weight")
        weight.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    _save(model, root / "other" / "step-1")
    (root / "prompts.txt").write_text("\n".join(TEXTS) + "\n")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base, _ = sparse_data(1024, 16, 24, seed=0)
    return synthetic_store(tmp_path_factory.mktemp("store") / "s", {"base": base, "post": base.flip(0)}, HOOK)


def _diff_argv(ckpts: Path, out: Path, step: Path | None = None) -> list[str]:
    step = step or ckpts / "step-1"
    series = ["--series", str(ckpts / "base"), str(step)]
    return ["diff", *series, "--prompts", str(ckpts / "prompts.txt"), "--out", str(out), "--batch-size", "4"]


def _every_command(ckpts: Path, store: ActivationStore, out: Path) -> list[list[str]]:
    dictionary = ["dictionaries", "train", "--store", str(store.root), "--method", "sae", "--hook", HOOK]
    return [
        ["organism", "--preset", "tiny", "--out", str(out)],
        _diff_argv(ckpts, out),
        [*dictionary, "--out", str(out), "--d-sae", "16", "--k", "2", "--n-tokens", "10000"],
    ]


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- never lose a user's file -----------------------------------------------------------


def test_a_directory_holding_only_dot_files_is_not_empty(ckpts, store, tmp_path, capsys):
    repo = tmp_path / "repo"  # what `git init` leaves
    (repo / ".git" / "refs").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".gitignore").write_text("*.pyc\n")
    before = tree_hashes(repo)
    for argv in _every_command(ckpts, store, repo):
        err = _refused(capsys, argv)
        assert "is not empty and holds no rlinterp" in err and "(it has .git, .gitignore)" in err
        assert tree_hashes(repo) == before


def test_a_directory_with_user_files_is_refused(ckpts, store, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "table.csv").write_text("a,b\n1,2\n")
    (mine / "notes.txt").write_text("precious")
    before = tree_hashes(mine)
    for argv in _every_command(ckpts, store, mine):
        assert "(it has data, notes.txt); choose a new or empty --out" in _refused(capsys, argv)
        assert tree_hashes(mine) == before


def test_a_file_as_out_is_refused(ckpts, store, tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    for argv in _every_command(ckpts, store, tmp_path / "file"):
        assert f"--out {tmp_path / 'file'} is a file; give a directory path" in _refused(capsys, argv)
        assert (tmp_path / "file").read_text() == "keep me"


def test_an_organism_is_never_a_diff_or_dictionary_output(ckpts, store, tmp_path, capsys, micro_config):
    org = tmp_path / "org"
    build_organism(org, config=micro_config)
    before = tree_hashes(org)
    organism_as_out = _every_command(ckpts, store, org)[1:]
    for argv in [*organism_as_out, [*organism_as_out[0], "--force"]]:
        err = _refused(capsys, argv)
        assert f"{org} holds a finished organism, not a" in err and "choose another --out" in err
        assert tree_hashes(org) == before
    with pytest.raises(RlinterpError, match="holds a finished organism, not an activation store"):
        harvest(ModelSeries.from_paths([ckpts / "base", ckpts / "step-1"]), PROMPTS, org, force=True)
    assert tree_hashes(org) == before
    assert Organism.load(org).damaged_files() == []


def test_another_runs_directory_is_never_overwritten(ckpts, store, tmp_path, capsys):
    diff = tmp_path / "diff"
    assert main(_diff_argv(ckpts, diff)) == 0
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / MARKER).write_text(json.dumps({"kind": "rlinterp.diff", "fingerprint": {}}))
    before = tree_hashes(tmp_path)
    for out, what in ((diff, "a finished diff"), (tmp_path / "unfinished", "an unfinished diff")):
        for force in ([], ["--force"]):
            err = _refused(capsys, ["organism", "--preset", "tiny", "--out", str(out), *force])
            assert f"{out} holds {what}, not an organism; choose another --out" in err
    dictionary = ["dictionaries", "train", "--store", str(store.root), "--method", "sae", "--hook", HOOK]
    err = _refused(capsys, [*dictionary, "--out", str(diff)])
    assert "holds a finished diff, not a dictionary" in err
    err = _refused(capsys, [*dictionary, "--out", str(store.root)])
    assert f"{store.root} holds a finished activation store, not a dictionary" in err
    err = _refused(capsys, [*dictionary, "--out", str(diff / "activations")])
    assert "holds a finished activation store, not a dictionary" in err
    with pytest.raises(RlinterpError, match="holds an unfinished diff, not an organism"):
        Organism.load(tmp_path / "unfinished")
    with pytest.raises(RlinterpError, match="holds a diff, not an activation store"):
        ActivationStore.load(diff)
    assert tree_hashes(tmp_path) == before
    assert SeriesDiff.load(diff).outputs["kl_max"].max() == 0


def test_a_finished_diff_of_other_inputs_is_kept_and_named(ckpts, tmp_path, capsys):
    out = tmp_path / "diff"
    assert main(_diff_argv(ckpts, out)) == 0
    capsys.readouterr()
    before = tree_hashes(out)
    err = _refused(capsys, _diff_argv(ckpts, out, step=ckpts / "other" / "step-1"))
    assert f"{out} holds a finished diff of other inputs (weights of step-1 changed)" in err
    assert "pass --force to recompute it" in err
    assert tree_hashes(out) == before and SeriesDiff.load(out).weights["rel_frobenius"].max() == 0
    # the same command again reuses the finished diff: nothing is rewritten
    assert main(_diff_argv(ckpts, out)) == 0
    assert tree_hashes(out) == before


def test_a_rebuild_removes_only_the_organisms_own_entries(tmp_path, micro_config, monkeypatch):
    from rlinterp.organism import build

    out = tmp_path / "org"
    original = build._build

    def dies(out, *_):
        (out / "base").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_build", dies)
    with pytest.raises(KeyboardInterrupt):
        build_organism(out, config=micro_config)
    monkeypatch.setattr(build, "_build", original)
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "notes.txt").write_text("mine")
    keep = tree_hashes(out)
    keep = {path: digest for path, digest in keep.items() if not path.startswith(("base", MARKER))}
    build_organism(out, config=micro_config)
    after = tree_hashes(out)
    assert {path: after[path] for path in keep} == keep
    build_organism(out, config=micro_config, force=True)  # a forced rebuild of a finished one too
    after = tree_hashes(out)
    assert {path: after[path] for path in keep} == keep and Organism.load(out).damaged_files() == []


# -- resume that cannot mix -------------------------------------------------------------


def test_replaced_weights_are_refused_or_recomputed_never_mixed(ckpts, tmp_path, capsys):
    work = tmp_path / "ckpts"
    shutil.copytree(ckpts, work)
    out = tmp_path / "diff"
    assert main(_diff_argv(work, out)) == 0
    capsys.readouterr()
    shutil.copy(work / "other" / "step-1" / "model.safetensors", work / "step-1" / "model.safetensors")
    before = tree_hashes(out)
    err = _refused(capsys, _diff_argv(work, out))
    assert "holds a finished diff of other inputs (weights of step-1 changed)" in err
    assert tree_hashes(out) == before
    assert main([*_diff_argv(work, out), "--force"]) == 0
    result = SeriesDiff.load(out)
    # every column comes from the new weights: weights, activations and KL all moved
    acts = result.activations[result.activations["label"] == "step-1"].set_index("hook")
    assert (
        result.weights["rel_frobenius"].max() > 0
        and acts.loc["blocks.1.hook_resid_post", "rel_diff_norm"] > 0.01
    )
    assert result.outputs.set_index("label").loc["step-1", "kl_mean"] > 1e-4
    series = ModelSeries.from_paths([work / "base", work / "step-1"])
    fresh = harvest(series, PROMPTS, tmp_path / "fresh", HarvestConfig(batch_size=4))
    store = ActivationStore.load(out / "activations")
    for hook in fresh.hooks:
        assert torch.equal(store.read("step-1", hook), fresh.read("step-1", hook))


def test_an_interrupted_diff_resumes_only_with_the_same_inputs(ckpts, tmp_path, capsys, monkeypatch):
    work = tmp_path / "ckpts"
    shutil.copytree(ckpts, work)
    out = tmp_path / "diff"
    original, calls = harvest_module._harvest_batch, {"n": 0}

    def dies_after_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(harvest_module, "_harvest_batch", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        main(_diff_argv(work, out))
    monkeypatch.setattr(harvest_module, "_harvest_batch", original)
    with pytest.raises(RlinterpError, match="the diff in .* is unfinished"):
        SeriesDiff.load(out)
    kept = work / "kept.safetensors"
    shutil.move(work / "step-1" / "model.safetensors", kept)
    shutil.copy(work / "other" / "step-1" / "model.safetensors", work / "step-1" / "model.safetensors")
    before = tree_hashes(out)
    err = _refused(capsys, _diff_argv(work, out))
    assert "holds an unfinished diff of other inputs (weights of step-1 changed)" in err
    assert tree_hashes(out) == before
    shutil.move(kept, work / "step-1" / "model.safetensors")  # the original weights again
    base_shard = out / "activations" / "base" / HOOK / "shard-00000.safetensors"
    written = base_shard.stat().st_mtime_ns
    assert main(_diff_argv(work, out)) == 0
    assert base_shard.stat().st_mtime_ns == written  # resumed, not recomputed
    result = SeriesDiff.load(out)
    assert (result.activations["diff_norm_max"] == 0).all() and (result.outputs["kl_max"] == 0).all()


def test_the_fingerprint_names_every_setting_that_changed(ckpts, tmp_path):
    work = tmp_path / "ckpts"
    shutil.copytree(ckpts, work)
    series = ModelSeries.from_paths([work / "base", work / "step-1"])
    out = tmp_path / "store"
    harvest(series, PROMPTS, out, HarvestConfig(batch_size=4))
    before = tree_hashes(out)
    bf16 = ModelSeries.from_paths([work / "base", work / "step-1"], dtype=torch.bfloat16)
    cases = [
        (series, PROMPTS, HarvestConfig(batch_size=4, max_length=16), "max_length changed (64 -> 16)"),
        (bf16, PROMPTS, HarvestConfig(batch_size=4), 'dtype changed ("float32" -> "bfloat16")'),
        (
            series,
            PROMPTS,
            HarvestConfig(batch_size=4, include_bos=True),
            "include_bos changed (false -> true)",
        ),
        (series, PromptSet.from_list(TEXTS[:-1]), HarvestConfig(batch_size=4), "prompts changed"),
        (series, PROMPTS, HarvestConfig(hooks=(HOOK,), batch_size=4), "hooks changed"),
    ]
    for chosen, prompts, cfg, message in cases:
        with pytest.raises(RlinterpError, match=re.escape(f"store of other inputs ({message})")):
            harvest(chosen, prompts, out, cfg)
    settings = json.loads((work / "step-1" / "config.json").read_text())
    (work / "step-1" / "config.json").write_text(json.dumps({**settings, "layer_norm_epsilon": 1e-3}))
    with pytest.raises(RlinterpError, match=r"\(config of step-1 changed\)"):
        harvest(series, PROMPTS, out, HarvestConfig(batch_size=4))
    (work / "step-1" / "config.json").write_text(json.dumps(settings))
    tokenizer = json.loads((work / "base" / "tokenizer_config.json").read_text())
    (work / "base" / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "model_max_length": 7}))
    with pytest.raises(RlinterpError, match=r"\(tokenizer changed\)"):
        harvest(series, PROMPTS, out, HarvestConfig(batch_size=4))
    assert tree_hashes(out) == before


def test_a_killed_dictionary_run_resumes_and_is_never_evaluated_half_done(
    store, tmp_path, capsys, monkeypatch
):
    import rlinterp.dictionaries.train

    out = tmp_path / "sae"

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rlinterp.dictionaries.train, "top_activations", killed)  # dies after training
    with pytest.raises(KeyboardInterrupt):
        train_dictionary(store, "sae", HOOK, out, SMALL)
    monkeypatch.undo()
    assert (out / "sae_weights.safetensors").is_file() and not (out / "rlinterp.json").exists()
    err = _refused(capsys, ["dictionaries", "eval", "--dictionary", str(out), "--no-downstream"])
    assert f"the dictionary in {out} is unfinished" in err
    with pytest.raises(RlinterpError, match="is unfinished"):
        TrainedSAE.load(out)
    train_dictionary(store, "sae", HOOK, out, SMALL)
    whole = train_dictionary(store, "sae", HOOK, tmp_path / "whole", SMALL)
    assert (out / "sae_weights.safetensors").read_bytes() == (whole / "sae_weights.safetensors").read_bytes()
    (out / ".eval.parquet.a1b2c3d4.tmp").write_bytes(b"half written")  # an evaluation killed earlier
    assert evaluate_dictionary(out, downstream=False)["explained_variance"].notna().all()
    assert not (out / ".eval.parquet.a1b2c3d4.tmp").exists()
    with pytest.raises(RlinterpError, match=r"dictionary of other inputs \(k changed \(2 -> 3\)\)"):
        train_dictionary(store, "sae", HOOK, out, DictionaryConfig(**{**SMALL.__dict__, "k": 3}))


def test_bad_dictionary_input_is_refused_before_the_directory_is_made(store, tmp_path):
    out = tmp_path / "never"
    for kwargs, message in (
        (
            {"method": "crosscoder", "models": ["post", "post"]},
            r"a crosscoder compares at least two different models",
        ),
        ({"method": "diff-sae", "model": "base"}, r"a diff-SAE needs two different models"),
        ({"method": "sae", "model": "sft"}, r"no model 'sft' in"),
    ):
        with pytest.raises(RlinterpError, match=message):
            train_dictionary(store, hook=HOOK, out=out, cfg=SMALL, **kwargs)
    assert not out.exists()


def test_a_dictionary_left_by_an_older_rlinterp_is_reported_not_a_keyerror(store, tmp_path, capsys):
    out = tmp_path / "old"
    train_dictionary(store, "sae", HOOK, out, SMALL)
    # what an older rlinterp left when killed after its first rlinterp.json: no method
    manifest = json.loads((out / "rlinterp.json").read_text())
    (out / "rlinterp.json").write_text(json.dumps({"kind": "sae", "store": manifest["store"], "hook": HOOK}))
    (out / "notes.txt").write_text("mine")
    err = _refused(capsys, ["dictionaries", "eval", "--dictionary", str(out), "--no-downstream"])
    assert "was written by an older rlinterp or by an unfinished run" in err
    before = tree_hashes(out)
    train = ["dictionaries", "train", "--store", str(store.root), "--method", "sae", "--hook", HOOK]
    train += ["--out", str(out), "--d-sae", "16", "--k", "2", "--n-tokens", "10000"]
    assert "holds an unfinished dictionary whose inputs were not recorded" in _refused(capsys, train)
    assert tree_hashes(out) == before
    assert main([*train, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["dictionaries", "eval", "--dictionary", str(out), "--no-downstream"]) == 0


def test_sharded_checkpoints_hash_every_shard(tmp_path):
    from rlinterp.core.artifacts import tokenizer_sha256, weights_sha256

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2"))
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="40KB")
    build_tokenizer(ALPHABET).save_pretrained(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    weights, tokenizer = weights_sha256(folder), tokenizer_sha256(folder)
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 1  # one bit of the last shard
    shards[-1].write_bytes(bytes(data))
    assert weights_sha256(folder) != weights and tokenizer_sha256(folder) == tokenizer


# -- honest finished markers ------------------------------------------------------------


def test_an_unfinished_diff_is_not_loadable_and_its_stale_outputs_go(ckpts, tmp_path, monkeypatch):
    import rlinterp.core.rundir
    import rlinterp.diff.analysis

    out = tmp_path / "diff"

    def dies(*_args, **_kwargs):
        raise KeyboardInterrupt

    finish = rlinterp.core.rundir.finish

    def dies_at_the_diff_manifest(path, kind, manifest):
        if kind == rlinterp.core.rundir.DIFF:  # after summary.json, before the manifest
            raise KeyboardInterrupt
        return finish(path, kind, manifest)

    monkeypatch.setattr(rlinterp.core.rundir, "finish", dies_at_the_diff_manifest)
    series = ModelSeries.from_paths([ckpts / "base", ckpts / "step-1"])
    with pytest.raises(KeyboardInterrupt):
        run_diff(series, PROMPTS, out, HarvestConfig(batch_size=4))
    assert (out / "summary.json").is_file() and not (out / "manifest.json").exists()
    with pytest.raises(RlinterpError, match="the diff in .* is unfinished; run `rlinterp diff` again"):
        SeriesDiff.load(out)
    monkeypatch.setattr(rlinterp.diff.analysis, "diff_activations", dies)  # the rerun dies before any table
    with pytest.raises(KeyboardInterrupt):
        run_diff(series, PROMPTS, out, HarvestConfig(batch_size=4))
    assert not (out / "summary.json").exists() and not (out / "weights.parquet").exists()
    assert ActivationStore.load(out / "activations").n_shards == 3  # the finished store is kept
    monkeypatch.undo()
    run_diff(series, PROMPTS, out, HarvestConfig(batch_size=4))
    assert SeriesDiff.load(out).outputs["kl_max"].max() == 0 and not (out / MARKER).exists()


def test_orphaned_temporary_files_are_removed_at_the_next_run(ckpts, tmp_path):
    series = ModelSeries.from_paths([ckpts / "base", ckpts / "step-1"])
    out = tmp_path / "diff"
    run_diff(series, PROMPTS, out, HarvestConfig(batch_size=4))
    ours = [
        out / ".weights.parquet.a1b2c3d4.tmp",
        out / "activations" / ".manifest.json.zz_9xy01.tmp",
        out / "activations" / "step-1" / HOOK / ".shard-00002.safetensors.k3j4h5g6.tmp",
    ]
    theirs = [
        out / ".notes.txt.a1b2c3d4.tmp",  # a temporary name of a file rlinterp does not write
        out / ".git" / "objects" / ".pack.a1b2c3d4.tmp",  # dot folders are never entered
        out / "backup.tmp",
    ]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    before = {p: d for p, d in tree_hashes(out).items() if (out / p) not in ours}
    run_diff(series, PROMPTS, out, HarvestConfig(batch_size=4))  # finished: reused, and swept
    assert not any(path.exists() for path in ours)
    assert tree_hashes(out) == before


# -- the mechanism itself ---------------------------------------------------------------

TOY = Kind("rlinterp.toy", "toy run")


def test_claim_reuses_resumes_refuses_and_forces(tmp_path):
    out = tmp_path / "run"
    fingerprint = {"weights": "a" * 64, "batch_size": 4}
    assert claim(out, TOY, fingerprint, ["a.txt", "part"], resumable=["part"]).state == "new"
    (out / "part").mkdir()
    (out / "part" / "0").write_text("done")
    (out / "a.txt").write_text("stale")
    claimed = claim(out, TOY, fingerprint, ["a.txt", "part"], resumable=["part"])
    assert claimed.state == "resume" and (out / "part" / "0").is_file() and not (out / "a.txt").exists()
    (out / ".keep").write_text("dot")
    (out / "user.txt").write_text("user")
    finish(out, TOY, {"note": 1})
    manifest = read_finished(out, TOY, "run it")
    assert manifest["note"] == 1 and manifest["fingerprint"] == fingerprint and not (out / MARKER).exists()
    assert claim(out, TOY, fingerprint, ["a.txt", "part"]).manifest == manifest
    before = tree_hashes(tmp_path)
    other = {"weights": "b" * 64, "batch_size": 8, "hooks": ["x"]}
    with pytest.raises(
        RlinterpError,
        match=r"toy run of other inputs \(weights changed; batch_size changed \(4 -> 8\); hooks is new\)",
    ):
        claim(out, TOY, other, ["a.txt", "part"])
    assert tree_hashes(tmp_path) == before
    assert claim(out, TOY, other, ["a.txt", "part"], force=True).state == "new"
    assert sorted(p.name for p in out.iterdir()) == [".keep", MARKER, "user.txt"]
    with pytest.raises(RlinterpError, match="the toy run in .* is unfinished; run it to resume it"):
        read_finished(out, TOY, "run it")


def test_an_interrupted_force_is_never_resumed(tmp_path):
    out = tmp_path / "run"
    (out / "part").mkdir(parents=True)
    # what a --force killed while removing leaves: the marker of unknown inputs
    (out / MARKER).write_text(json.dumps({"kind": TOY.name, "fingerprint": None, "entries": ["part"]}))
    with pytest.raises(RlinterpError, match="toy run whose inputs were not recorded"):
        claim(out, TOY, {"x": 1}, ["part"], resumable=["part"])
    assert claim(out, TOY, {"x": 1}, ["part"], resumable=["part"], force=True).state == "new"
    assert not (out / "part").exists()


def test_unreadable_or_foreign_manifests_are_refused(tmp_path):
    for content, message in (
        ("{not json", "is not valid JSON"),
        ('{"name": "mine"}', "holds no rlinterp toy"),
    ):
        out = tmp_path / f"case{len(content)}"
        out.mkdir()
        (out / "manifest.json").write_text(content)
        with pytest.raises(RlinterpError, match=message):
            claim(out, TOY, {}, ["manifest.json"], force=True)
        assert (out / "manifest.json").read_text() == content


def test_changes_quote_short_values_only():
    old = {"weights of base": "0" * 64, "hooks": ["h"] * 20, "max_length": 64, "a": 1, "b": 2}
    new = {"weights of base": "1" * 64, "hooks": ["g"] * 20, "max_length": 16, "c": 3}
    assert changes(old, old) == ""
    assert changes(old, new) == (
        "weights of base changed; hooks changed; max_length changed (64 -> 16); c is new; and 2 more"
    )


KEPT = Kind("rlinterp.kept", "kept run", marker=".kept.json", grows=True)
FLAT = Kind("rlinterp.flat", "flat run", marker="flat.json", flat=True)


def test_a_kept_claim_file_records_and_grows(tmp_path):
    """A kind with a claim file of its own keeps it beside the manifest with what the run
    recorded; a fingerprint key the record lacks is a stage added since, not a change."""
    out = tmp_path / "run"
    assert claim(out, KEPT, {"a": "1"}, ["part"], resumable=["part"], record={"config": 1}).state == "new"
    annotate(out, KEPT, {"inputs": ["w"]})
    finish(out, KEPT, {"note": 1})
    assert read_finished(out, KEPT, "run it")["note"] == 1
    assert read_record(out, KEPT) == {
        "kind": KEPT.name, "fingerprint": {"a": "1"}, "entries": ["manifest.json", "part"], "config": 1,
        "inputs": ["w"],
    }  # fmt: skip
    before = tree_hashes(tmp_path)
    assert claim(out, KEPT, {"a": "1", "b": "2"}, ["part"], resumable=["part"]).state == "finished"
    assert read_record(out, KEPT)["inputs"] == ["w"] and read_record(out, KEPT)["fingerprint"]["b"] == "2"
    with pytest.raises(RlinterpError, match=r"kept run of other inputs \(a changed"):
        claim(out, KEPT, {"a": "2"}, ["part"])
    assert claim(out, KEPT, {"a": "2"}, ["part"], force=True).state == "new"
    assert "inputs" not in read_record(out, KEPT)  # a forced run forgets the old one's record
    assert tree_hashes(tmp_path) != before


def test_a_flat_claim_file_is_the_fingerprint(tmp_path):
    out = tmp_path / "run"
    plan = {"kind": FLAT.name, "weights": "a" * 64, "config": {"k": 1}}
    assert claim(out, FLAT, plan, ["part"], resumable=["part"]).state == "new"
    assert json.loads((out / "flat.json").read_text()) == plan  # the layout old directories have
    (out / "part").mkdir()
    assert claim(out, FLAT, plan, ["part"], resumable=["part"]).state == "resume" and (out / "part").is_dir()
    with pytest.raises(RlinterpError, match=r"unfinished flat run of other inputs \(config changed \("):
        claim(out, FLAT, {**plan, "config": {"k": 2}}, ["part"], resumable=["part"])


@pytest.mark.parametrize("name", [MARKER, "manifest.json", ".kept.json"])
@pytest.mark.parametrize("content", ["{trunc", "[1, 2]", '{"kind": 3}'])
def test_a_damaged_claim_file_or_manifest_is_one_line_and_deletes_nothing(tmp_path, name, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "part").write_text("finished work")
    (out / name).write_text(content)
    before = tree_hashes(tmp_path)
    for kind in (TOY, KEPT):
        with pytest.raises(RlinterpError) as refused:
            claim(out, kind, {"x": 1}, ["part"], resumable=["part"], force=True)
        assert "\n" not in str(refused.value) and str(out) in str(refused.value)
    assert tree_hashes(tmp_path) == before


def test_dot_files_alone_are_not_an_empty_directory(tmp_path):
    for kind in (TOY, KEPT, FLAT):
        out = tmp_path / kind.noun
        (out / ".git").mkdir(parents=True)
        with pytest.raises(RlinterpError, match=r"holds no rlinterp .* \(it has \.git\)"):
            claim(out, kind, {"x": 1}, [])
        assert [p.name for p in out.iterdir()] == [".git"]
