"""``rlinterp run``: the config (keys, types, generated options), the pipeline on a micro
organism (resume, refusal of another run's directory), and its terminal summary."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from rlinterp.cli import main
from rlinterp.core.options import options
from rlinterp.errors import RlinterpError
from rlinterp.pipeline.config import (
    RunConfig,
    config_from_dict,
    config_template,
    field_docs,
    fingerprint,
    load_config,
)

from ..conftest import make_micro_config

STAGE_ORDER = (
    "diff",
    "dictionaries",
    "tracking",
    "selection",
    "circuits",
    "fidelity",
    "readings",
    "transition",
)
"""The run's stages in the order they run (``runner.STAGES``), written out."""


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:  # argparse's errors exit, ours return
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# -- config --------------------------------------------------------------------------------


def test_unknown_key_names_the_key_and_a_close_match():
    with pytest.raises(
        RlinterpError, match=r"unknown config key 'dictionaries.n_tokenz' \(did you mean 'n_tokens'\?\)"
    ):
        config_from_dict({"dictionaries": {"n_tokenz": 10}})
    with pytest.raises(RlinterpError, match=r"unknown config key 'dictionary'"):
        config_from_dict({"dictionary": {}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dictionaries": {"d_sae": "big"}}, r"'dictionaries.d_sae': expected integer, got 'big'"),
        ({"dictionaries": {"d_sae": True}}, r"'dictionaries.d_sae': expected integer, got True"),
        ({"dictionaries": {"lr": "fast"}}, r"'dictionaries.lr': expected number"),
        ({"harvest": {"hooks": "blocks.0"}}, r"'harvest.hooks': expected list of string"),
        ({"harvest": {"hooks": [1]}}, r"'harvest.hooks\[0\]': expected string"),
        ({"compute": {"dtype": "fp8"}}, r"'compute.dtype': expected one of 'float32', 'bfloat16', 'float16'"),
        ({"prompts": {"max_prompts": 1.5}}, r"'prompts.max_prompts': expected integer or none"),
        ({"series": 3}, r"'series': expected a table \[series\]"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(data, message):
    with pytest.raises(RlinterpError, match=message):
        config_from_dict(data)


def test_toml_round_trip_and_the_template_documents_every_field(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'out = "x"\n[dictionaries]\nd_sae = 64\nlr = 1\n[harvest]\nhooks = ["blocks.0.hook_resid_post"]\n'
    )
    config = load_config(path)
    assert config.out == "x" and config.dictionaries.d_sae == 64 and config.dictionaries.lr == 1.0
    assert config.harvest.hooks == ("blocks.0.hook_resid_post",)
    template = config_template(config)
    (tmp_path / "again.toml").write_text(template)
    assert load_config(tmp_path / "again.toml") == config
    # every field's docstring is a comment in the template and an option's help
    helps = {option.path: option.help for option in options(RunConfig)}
    for name in ("n_tokens", "top_k", "cards"):
        doc = field_docs(type(config.dictionaries))[name]
        assert f"# {doc}" in template and helps[f"dictionaries.{name}"].startswith(doc)


def test_checkpoints_replace_the_organism():
    config = config_from_dict({"series": {"checkpoints": ["a", "b"]}})
    assert config.series.organism is None
    with pytest.raises(RlinterpError, match="exactly one of series.organism or series.checkpoints"):
        config_from_dict({"series": {"organism": "o", "checkpoints": ["a", "b"]}})


def test_fingerprint_ignores_device_but_not_budgets():
    base = fingerprint(RunConfig())
    gpu = config_from_dict({"compute": {"device": "cuda", "threads": 4}})
    assert fingerprint(gpu) == base
    smaller = config_from_dict({"dictionaries": {"n_tokens": 1000}})
    assert fingerprint(smaller)["dictionaries"] != base["dictionaries"]
    assert fingerprint(smaller)["series"] == base["series"]


def test_cli_reports_bad_config_in_one_line(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[dictionaries]\nk = 'eight'\n")
    err = _one_line_error(capsys, ["run", "--config", str(path)])
    assert "'dictionaries.k': expected integer, got 'eight'" in err
    err = _one_line_error(capsys, ["run", "--dictionaries-k", "eight", "--print-config"])
    assert "--dictionaries-k: expected integer, got 'eight'" in err


def test_cli_options_override_the_file(capsys, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[dictionaries]\nk = 4\nd_sae = 64\n")
    argv = [
        "run",
        "--config",
        str(path),
        "--dictionaries-k",
        "2",
        "--no-dictionaries-enabled",
        "--print-config",
    ]
    assert main([*argv, "--harvest-hooks", "a", "b", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.toml").write_text(printed)
    config = load_config(tmp_path / "printed.toml")
    assert (config.dictionaries.k, config.dictionaries.d_sae, config.dictionaries.enabled) == (2, 64, False)
    assert config.harvest.hooks == ("a", "b") and config.out == str(tmp_path / "o")


def test_a_stage_section_is_its_commands_config_with_sub_tables(capsys, tmp_path):
    """``[tracking]`` is a ``TrackConfig`` (plus ``enabled``) whose nested configs are
    sub-tables: a key given in ``[tracking.sampling]`` keeps the section's other budgets,
    and every nested key is checked, documented and an option."""
    from rlinterp.tracking.analysis import TrackConfig

    config = config_from_dict({"tracking": {"sampling": {"seed": 3}, "enabled": False}})
    tracking = config.tracking
    assert isinstance(tracking, TrackConfig) and not tracking.enabled
    assert (tracking.sampling.seed, tracking.sampling.samples_per_prompt) == (3, 16)  # the run's budget
    with pytest.raises(RlinterpError, match=r"'tracking.sampling.seed': expected integer, got 'x'"):
        config_from_dict({"tracking": {"sampling": {"seed": "x"}}})
    with pytest.raises(RlinterpError, match=r"'tracking.sampling': expected a table \[tracking.sampling\]"):
        config_from_dict({"tracking": {"sampling": 3}})
    with pytest.raises(
        RlinterpError, match=r"unknown config key 'tracking.samplin' \(did you mean 'sampling'"
    ):
        config_from_dict({"tracking": {"samplin": {}}})
    with pytest.raises(RlinterpError, match=r"circuits.metrics must name organism metrics"):
        config_from_dict({"circuits": {"metrics": ["answr"]}})
    template = config_template(config)
    assert "[tracking.sampling]\n# How each checkpoint samples its own answers." in template
    assert "[selection.index]" in template and "[circuits]" in template
    (tmp_path / "t.toml").write_text(template)
    assert load_config(tmp_path / "t.toml") == config
    argv = ["run", "--tracking-sampling-seed", "5", "--selection-index-n-bootstrap", "20", "--print-config"]
    assert main(argv) == 0
    (tmp_path / "printed.toml").write_text(capsys.readouterr().out)
    printed = load_config(tmp_path / "printed.toml")
    assert printed.tracking.sampling.seed == 5
    assert printed.tracking.sampling.samples_per_prompt == 16
    assert printed.selection.index.n_bootstrap == 20


# -- the pipeline on a micro organism ---------------------------------------------------------

SMALL = {
    "harvest": {"batch_size": 8},
    "dictionaries": {"d_sae": 32, "k": 4, "n_tokens": 4096, "batch_size": 64, "top_k": 3, "cards": 4},
    # The micro organism's own answers are a few tokens each: too few for stage-wise SAEs.
    "tracking": {"sources": ["texts"], "independent_tokens": 2048, "stagewise": {"n_tokens": 1024}},
    "selection": {"samples_per_prompt": 1, "index": {"n_bootstrap": 50}},
    "circuits": {"metrics": ["persona"], "exact_prompts": 8},
    "readings": {
        "amplify": {"alphas": [0.0, 1.0, 2.0], "sampling": {"samples_per_prompt": 1, "max_new_tokens": 8}},
        "topics": {"n_positions": 32, "n_topics": 2, "n_iter": 50},
    },
}


def _argv(sections: dict, prefix: str = "-") -> list[str]:
    """``SMALL`` as generated options (nested tables dotted into the option name)."""
    argv = []
    for key, value in sections.items():
        flag = f"{prefix}-{key}".replace("_", "-")
        if isinstance(value, dict):
            argv += _argv(value, flag)
        else:
            argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A micro organism and one finished run over both regimes."""

    from rlinterp import build_organism
    from rlinterp.pipeline.runner import run_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    micro = make_micro_config()  # persona directions need six texts per persona at least
    corpus = dataclasses.replace(micro.corpus, persona_texts_per_persona=8)
    build_organism(root / "org", config=dataclasses.replace(micro, corpus=corpus))
    config = config_from_dict({"out": str(root / "run"), "series": {"organism": str(root / "org")}, **SMALL})
    run_pipeline(config, progress=False)
    return root, config


def test_run_writes_every_stage_and_one_report(micro_run):
    from rlinterp.pipeline.result import RunResult
    from rlinterp.pipeline.verdict import verdict_lines

    root, _ = micro_run
    run_dir = root / "run"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # the RL regimes in build order, then the planted positive control
    assert manifest["kind"] == "rlinterp.run" and manifest["series"] == ["weak", "strong", "novel"]
    for stage in STAGE_ORDER:
        timing = json.loads((run_dir / "stages" / f"{stage}.json").read_text())
        assert timing["seconds"] >= 0 and timing["cpu_seconds"] >= 0
    run = RunResult.load(run_dir)
    summary = run.summary()
    assert list(summary["series"].unique()) == ["weak", "strong", "novel"]
    assert set(summary["step"]) == {0, 1, 2}
    base = summary[summary["step"] == 0]
    # the base compared with itself: no KL, no activation change; the base SAE's FVU is the
    # same on the base in every series (the same tokens and activations); no tracked latent
    # changed class, the index is 0, and circuits have no step to judge
    assert (base["kl_mean"].abs() < 1e-6).all() and (base["activation_change"].abs() < 1e-6).all()
    assert base["fvu"].nunique() == 1 and 0 <= base["fvu"].iloc[0] < 1
    assert (base["changed_latents"] == 0).all() and (base["index"] == 0).all()
    assert base["circuits_persona"].isna().all() and summary["circuits_persona"].notna().sum() == 6
    # every series and step of the later stages is in the run's tables
    readings = ("readings/amplified", "readings/pca", "readings/patchscope", "readings/topics")
    for table in ("tracking/summary", "selection/index", "circuits/steps", *readings):
        found = run.tables[table]
        assert set(found["series"]) == {"weak", "strong", "novel"}, table
    # the transition reading: every series' signals and one change point each; the base SAE's
    # FVU drift (computed by the transition stage, per prompt) matches the dictionaries stage's
    # FVU (computed by evaluate_sae over the same tokens), and its interval holds its value
    signals, points = run.tables["transition/signals"], run.tables["transition/change_points"]
    assert points["series"].tolist() == ["weak", "strong", "novel"]
    drift = signals[signals["signal"] == "fvu_drift"].merge(run.fvu_drift, on=["series", "step"])
    base_fvu = run.fvu_drift[run.fvu_drift["step"] == 0]["fvu"].iloc[0]
    assert np.allclose(drift["value"], drift["fvu"] - base_fvu, atol=1e-5)
    assert ((drift["lo"] <= drift["value"]) & (drift["value"] <= drift["hi"])).all()
    assert set(signals["signal"]) >= {"index", "fvu_drift", "lineage"}
    assert all("combined transition" in line for line in verdict_lines(run.tables, run.series))
    text = (run_dir / "report.html").read_text()
    assert text.count('<script type="text/javascript">/**\n* plotly.js') <= 1
    # the amplified rows at alpha 0 are the base's answers, the same in every series
    amplified = run.tables["readings/amplified"].query("alpha == 0")
    assert amplified["share_none"].nunique() == 1 and amplified["reward"].notna().all()
    assert "Amplified sampling" in text and "Topics of the changed tokens" in text
    for state in (
        "Feature tracking has not run",
        "No persona features",
        "No circuit diffs yet",
        "readings have not",
    ):
        assert state not in text
    # the organism's series suit every stage but fidelity: their answers state no reasoning
    assert text.count("not analysed") == 3 and text.count("not a reasoning organism") == 3
    skipped = json.loads((run_dir / "fidelity" / "skipped.json").read_text())
    assert set(skipped) == {"weak", "strong", "novel"} and "early_aoc" not in summary
    assert "(reasoning)" not in (run_dir / "report.md").read_text()
    assert (run_dir / "report.md").read_text().startswith("# rlinterp run: weak, strong, novel")


def test_cards_carry_the_base_sae_statistics(micro_run):
    import torch

    from rlinterp.activations.harvest import ActivationStore
    from rlinterp.dictionaries.sae import TrainedSAE
    from rlinterp.pipeline.result import RunResult

    root, _ = micro_run
    run = RunResult.load(root / "run")
    sae = TrainedSAE.load(root / "run" / "dictionaries" / "sae").sae
    store = ActivationStore.load(root / "run" / "diff" / "strong" / "activations")
    last = store.labels[-1]
    with torch.no_grad():
        latents = sae.encode(store.read(last, run.dictionary_info["hook"]))
    steps = run.latent_steps
    mine = steps[(steps["series"] == "strong") & (steps["label"] == last)].sort_values("latent")
    assert torch.allclose(
        torch.tensor(mine["mean_activation"].to_numpy()), latents.double().mean(0), atol=1e-5
    )
    # every top context's peak value is its activation, and the best one is the latent's max
    contexts = run.contexts[(run.contexts["series"] == "strong") & (run.contexts["label"] == last)]
    for row in contexts.itertuples():
        assert row.values[row.peak] == pytest.approx(row.activation, rel=1e-5)
        if row.rank == 0:
            assert row.activation == pytest.approx(float(latents[:, row.latent].max()), rel=1e-5)
    # a text repeated across prompts shows once per latent, and ranks stay consecutive
    windows = run.contexts.assign(window=run.contexts["tokens"].map(tuple))
    assert not windows.duplicated(["series", "label", "latent", "window"]).any()
    assert (
        windows.groupby(["series", "label", "latent"])["rank"].agg(lambda r: list(r) == list(range(len(r))))
    ).all()
    card = run.card(int(contexts["latent"].iloc[0]))
    assert set(card.contexts["series"]) == {"base", "weak", "strong", "novel"}
    assert "Lineage" in card._repr_html_() and "step 2" in card._repr_html_()  # lineage by step


def test_resume_skips_finished_stages(micro_run, caplog):
    import logging

    from rlinterp.pipeline.runner import run_pipeline

    root, config = micro_run
    before = (root / "run" / "dictionaries" / "latent_steps.parquet").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="rlinterp.pipeline"):
        run_pipeline(config, progress=False)
    for stage in STAGE_ORDER:
        assert f"stage {stage}: finished earlier, kept" in caplog.text
    assert (root / "run" / "dictionaries" / "latent_steps.parquet").stat().st_mtime_ns == before


def test_a_section_added_since_the_run_resumes(micro_run):
    """A stage registered after a run was made adds a config section; the run resumes."""
    from rlinterp.pipeline.runner import run_pipeline

    root, config = micro_run
    claim = root / "run" / ".run.json"
    data = json.loads(claim.read_text())
    del data["fingerprint"]["dictionaries"]
    claim.write_text(json.dumps(data))
    run_pipeline(config, progress=False)
    assert json.loads(claim.read_text())["fingerprint"] == fingerprint(config)


def test_a_different_run_is_refused_not_mixed(micro_run, tmp_path):
    import dataclasses

    from rlinterp.pipeline.runner import run_pipeline

    root, config = micro_run
    other = dataclasses.replace(config, dictionaries=dataclasses.replace(config.dictionaries, d_sae=64))
    before = sorted(p.name for p in (root / "run").rglob("*"))
    with pytest.raises(RlinterpError, match=r"holds a finished run of other inputs \(dictionaries changed\)"):
        run_pipeline(other, progress=False)
    assert sorted(p.name for p in (root / "run").rglob("*")) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RlinterpError, match="not empty and holds no rlinterp run"):
        run_pipeline(dataclasses.replace(config, out=str(foreign)), progress=False)
    diff_dir = root / "run" / "diff" / "weak"  # a diff artifact, not a run
    with pytest.raises(RlinterpError, match="holds a finished diff, not a run"):
        run_pipeline(dataclasses.replace(config, out=str(diff_dir)), progress=False)


def test_cli_run_ends_with_the_summary_and_the_report_path(micro_run, capsys):
    root, _ = micro_run
    argv = ["run", "--series", str(root / "org"), "--out", str(root / "run"), "--no-progress", *_argv(SMALL)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("weak:\n") and "\nstrong:\n" in out and "fvu" in out
    assert out.rstrip().endswith(f"report: {Path(root / 'run' / 'report.html')}")
    assert len(out.splitlines()) < 40  # one screen


def test_the_committed_default_config_is_the_generated_one():
    committed = Path(__file__).parents[2] / "configs" / "default.toml"
    assert committed.read_text() == config_template(RunConfig()), "regenerate: rlinterp run --print-config"
    assert load_config(committed) == RunConfig()


# Sections as rlinterp wrote them into ``.run.json`` before they subclassed their commands'
# configs (the defaults; ``compute`` as fingerprinted: its dtype only).
OLD_SECTIONS = {
    "series": {"organism": "artifacts/organism/default-seed0", "preset": "default", "seed": 0, "regimes": [],
               "checkpoints": [], "name": "checkpoints"},
    "prompts": {"source": "organism", "max_prompts": None},
    "harvest": {"hooks": [], "batch_size": 32, "include_bos": False, "response_only": False,
                "store_dtype": "float32", "max_tokens": None, "token_seed": 0},
    "dictionaries": {"enabled": True, "hook": None, "methods": [], "d_sae": 256, "k": 8, "n_tokens": 100000,
                     "batch_size": 256, "lr": 0.003, "seed": 0, "top_k": 8, "cards": 24},
    "compute": {"dtype": "float32"},
    # sections a stage registered at import time before they were fields of RunConfig
    "tracking": {"sources": ["texts", "on-policy"], "batch_size": 32, "independent_tokens": 30000,
                 "enabled": True,
                 "sampling": {"samples_per_prompt": 16, "max_new_tokens": 48, "temperature": 1.0, "seed": 0,
                              "batch_size": 64},
                 "stagewise": {"n_tokens": 10000, "lr_scale": 0.1}},
    "selection": {"label": "persona", "hook": None, "dictionary": None, "held_out_fraction": 0.3,
                  "batch_size": 32, "seed": 0, "samples_per_prompt": 4, "decision_hook": None, "n_random": 2,
                  "behaviour_edits": ["persona_choice"], "enabled": True,
                  "dictionary_config": {"d_sae": 128, "k": 8, "architecture": "topk", "n_tokens": 100000,
                                        "batch_size": 256, "lr": 0.003, "seed": 0, "device": "cpu"},
                  "index": {"n_bootstrap": 500, "confidence": 0.9, "min_jump": 0.2, "seed": 0}},
    "circuits": {"batch_size": 16, "exact_prompts": 64, "exact_components": None, "attribution_steps": 2,
                 "attribution_interpolation": "component", "coverage": 0.8, "enhanced_overlap": 0.5,
                 "used_share": 0.1, "min_change": 0.05, "max_cancellation": 5.0, "top_k": 5,
                 "metrics": ["answer", "persona", "shortcut"], "prompts": None, "kind": "logit_diff",
                 "max_prompts": 32, "enabled": True},
}  # fmt: skip


def test_a_run_claimed_before_sections_were_shared_resumes(tmp_path):
    """The fingerprints a run directory recorded before harvest and dictionaries became
    their commands' configs, and before the stages' sections were fields of ``RunConfig``,
    still match (under the dictionary recipe it was trained with, the legacy one), and the
    old TOML spelling of every block loads. The selection section's does not: its stage
    reads every block now (a read-out and dictionary seeds), so an index of the old
    definition is never taken for the new one. Nor does the circuits section's: its stage
    now takes carrier MLPs apart into neurons and measures each regime on its own metric
    (``neurons``, ``regime_metric``), so verdicts without the sub-component one are redone."""
    import hashlib

    from rlinterp.core import rundir

    old = {
        name: hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        for name, data in OLD_SECTIONS.items()
    }
    recipe = {"dictionaries": {"recipe": "legacy"}, "selection": {"dictionary_config": {"recipe": "legacy"}}}
    legacy = config_from_dict(recipe)
    now = fingerprint(legacy)
    renewed = ("selection", "circuits")
    kept = {k: v for k, v in now.items() if k in old and k not in renewed}
    assert kept == {k: v for k, v in old.items() if k not in renewed}  # sections added since simply run
    assert all(now[k] != old[k] for k in renewed)
    for section in renewed:
        out = tmp_path / f"before-{section}"
        out.mkdir()
        recorded = {**old, **{k: now[k] for k in renewed if k != section}}
        claim = {"kind": "rlinterp.run", "fingerprint": recorded, "config": {}}
        (out / ".run.json").write_text(json.dumps(claim))
        with pytest.raises(RlinterpError, match=rf"run of other inputs \({section} changed\)"):
            rundir.claim(out, rundir.RUN, now, ["diff"], resumable=["diff"])
    old = {**old, **{k: now[k] for k in renewed}}
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.json").write_text(json.dumps({"kind": "rlinterp.run", "fingerprint": old, "config": {}}))
    claimed = rundir.claim(out, rundir.RUN, now, ["diff"], resumable=["diff"])
    assert claimed.state == "resume"
    # today's default recipe trains other dictionaries: those two sections changed
    changed = {k for k, v in fingerprint(RunConfig()).items() if k in old and old[k] != v}
    assert changed == {"dictionaries", "selection"}
    with pytest.raises(RlinterpError, match=r"run of other inputs \(.*dictionaries.*\)"):
        rundir.claim(out, rundir.RUN, fingerprint(RunConfig()), ["diff"], resumable=["diff"])
    (tmp_path / "old.toml").write_text("[harvest]\nhooks = []\nbatch_size = 32\n")
    assert load_config(tmp_path / "old.toml") == RunConfig()
    with pytest.raises(RlinterpError, match=r"run of other inputs \(harvest changed\)"):
        changed = config_from_dict({**recipe, "harvest": {"max_length": 64}})
        rundir.claim(out, rundir.RUN, fingerprint(changed), ["diff"])


def test_both_entry_points_read_the_same_index(micro_run, tmp_path, capsys):
    """``rlinterp selection`` (its own dictionary, at the hook after the block the index
    names) and the selection stage of ``rlinterp run`` (the run's base SAE and hook) give the
    same index, sides, blocks and transition, and the same answer line: the index reads
    every block, whatever the hook."""
    import pandas as pd

    from rlinterp.pipeline.result import RunResult
    from rlinterp.pipeline.verdict import regime_verdict, verdict_lines

    root, _ = micro_run
    out = tmp_path / "alone"
    cheap = ["--samples-per-prompt", "1", "--behaviour-edits", "persona_choice", "--n-random", "2"]
    argv = ["selection", "--series", str(root / "org"), "--regime", "novel", "--texts", "organism"]
    assert main([*argv, "--out", str(out), "--index-n-bootstrap", "50", *cheap]) == 0
    printed = capsys.readouterr().out
    alone = pd.read_parquet(out / "index.parquet")
    stage = pd.read_parquet(root / "run" / "selection" / "novel" / "index.parquet")
    columns = ["step", "index", "index_lo", "index_hi", "side", "layer"]
    pd.testing.assert_frame_equal(alone[columns], stage[columns])
    layers = pd.read_parquet(root / "run" / "selection" / "index_layers.parquet")
    assert set(layers["series"]) == {"weak", "strong", "novel"} and "layer" in layers
    found = json.loads((root / "run" / "selection" / "novel" / "summary.json").read_text())["transition"]
    assert found == json.loads((out / "summary.json").read_text())["transition"]
    answer = regime_verdict(alone)
    assert f"\nanswer: {answer}\n" in printed
    run = RunResult.load(root / "run")
    (novel,) = [line for line in verdict_lines(run.tables, run.series) if line.startswith("novel:")]
    assert novel.startswith(f"novel: {answer};")
