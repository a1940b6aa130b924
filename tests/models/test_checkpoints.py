"""Real RL runs as they come, built here from a tiny random-init base: LoRA adapter
checkpoints made with PEFT (with known adapter weights), sharded bf16 full checkpoints,
duplicated checkpoints, and the folder layouts trainers write.

The adapter series is also saved merged (PEFT's ``merge_and_unload``) as full checkpoints:
its diffs must equal the adapter series' diffs; and the known adapter weights fix the
singular values of each weight update exactly."""

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.activations.harvest import HarvestConfig
from rlinterp.activations.prompts import PromptSet
from rlinterp.cli import main
from rlinterp.diff.analysis import run_diff
from rlinterp.diff.weights import diff_weights
from rlinterp.models.series import ModelSeries
from rlinterp.models.weight_files import load_state_dict
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config, tree_hashes

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"
PROMPTS = PromptSet.from_list(
    ["the quick brown fox", "jumps over the lazy dog", "q: is 4 even? a: yes", "hello there, general"]
)
RANK, ALPHA = 2, 4.0  # PEFT's scale: alpha / r = 2
SINGULAR = {10: (0.5, 0.25), 20: (1.0, 0.5), 30: (2.0, 1.0)}
"""Step -> singular values of B A: each update is scale * U diag(s) V^T, U and V orthonormal."""
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_proj"]}


def _save(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    build_tokenizer(ALPHABET).save_pretrained(folder)
    return folder


def _lora(base: Path, arch: str, step: int, save_lm_head: bool = False):
    """A PEFT model over ``base`` whose every LoRA update B A is U diag(SINGULAR[step]) V^T."""
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=TARGETS[arch],
        lora_dropout=0.0,
        fan_in_fan_out=arch == "gpt2",  # GPT-2's Conv1D stores (in, out)
        modules_to_save=["lm_head"] if save_lm_head else None,
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                u = torch.linalg.qr(torch.randn(b.shape[0], RANK, generator=g))[0]
                v = torch.linalg.qr(torch.randn(a.shape[1], RANK, generator=g))[0]
                b.copy_(u * torch.tensor(SINGULAR[step]))
                a.copy_(v.T)
        if save_lm_head:
            head = model.base_model.model.lm_head.modules_to_save["default"].weight
            head.add_(0.1 * step / 10 * torch.randn(head.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama base, a TRL-style run of adapter checkpoints (``checkpoint-N/`` holding
    only the adapter, its base named in adapter_config.json), and the same run merged."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = _save(AutoModelForCausalLM.from_config(tiny_hf_config("llama")), root / "base")
    for step in SINGULAR:
        model = _lora(base, "llama", step, save_lm_head=True)
        model.save_pretrained(root / "run" / f"checkpoint-{step}")
        _save(model.merge_and_unload(), root / "merged" / f"checkpoint-{step}")
    return {"root": root, "base": base, "run": root / "run", "merged": root / "merged"}


def test_adapter_series_diffs_equal_the_merged_series_diffs(lora_run, tmp_path):
    adapters = ModelSeries.from_run_dir(lora_run["run"])  # base: the one the adapters name
    merged = ModelSeries.from_run_dir(lora_run["merged"], base=lora_run["base"])
    assert adapters.base.path == lora_run["base"]
    assert [c.label for c in adapters] == ["base", "checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert [d["adapter"] for d in adapters.describe()] == [False, True, True, True]
    config = HarvestConfig(batch_size=2)
    a = run_diff(adapters, PROMPTS, tmp_path / "adapters", config)
    m = run_diff(merged, PROMPTS, tmp_path / "merged", config)
    # the loader check ran against PEFT's unmerged forward, and passed
    assert set(adapters.fidelity) == {"base", "checkpoint-10", "checkpoint-20", "checkpoint-30"}
    assert max(adapters.fidelity.values()) < 1e-4
    for table, keys, columns in [
        (
            "weights",
            ["label", "parameter"],
            ["rel_frobenius", "delta_norm", "top_singular_value", "effective_rank"],
        ),
        ("activations", ["label", "hook"], ["mean_diff_norm", "rel_diff_norm", "cka", "cosine"]),
        ("outputs", ["label"], ["kl_mean", "kl_max"]),
    ]:
        left = getattr(a, table).sort_values(keys).reset_index(drop=True)
        right = getattr(m, table).sort_values(keys).reset_index(drop=True)
        assert left[keys].equals(right[keys])
        for column in columns:
            assert left[column].tolist() == pytest.approx(
                right[column].tolist(), rel=1e-4, abs=1e-6, nan_ok=True
            ), column
    assert (a.outputs.set_index("label").loc["checkpoint-30", "kl_mean"]) > 0


def test_adapter_weight_diff_is_the_known_low_rank_update(lora_run):
    scale = ALPHA / RANK
    for step, values in SINGULAR.items():
        diff = diff_weights(lora_run["base"], lora_run["run"] / f"checkpoint-{step}", top_k=4)
        frame = diff.to_frame().set_index("parameter")
        updated = frame[frame["adapter_rank"].notna()]
        assert len(updated) == 6 and set(updated["adapter_rank"]) == {RANK}  # 3 targets x 2 layers
        for name in updated.index:
            singular = diff[name].top_singular_values
            assert singular[:RANK] == pytest.approx([scale * s for s in values], rel=1e-5)
            assert max(singular[RANK:]) < 1e-5  # rank r, as the table says
            assert diff[name].delta_norm == pytest.approx(scale * math.hypot(*values), rel=1e-5)
        # modules_to_save: a full copy of lm_head, changed everywhere; its rank is not an adapter's
        head = frame.loc["lm_head.weight"]
        assert pd.isna(head["adapter_rank"]) and head["frac_changed"] > 0.9
        untouched = frame.drop(index=[*updated.index, "lm_head.weight"])
        assert (untouched["delta_norm"] == 0).all()


def test_adapter_on_conv1d_weights_matches_the_merged_weights(tmp_path):
    torch.manual_seed(1)
    base = _save(AutoModelForCausalLM.from_config(tiny_hf_config("gpt2")), tmp_path / "base")
    model = _lora(base, "gpt2", 20)
    model.save_pretrained(tmp_path / "adapter")
    merged = _save(model.merge_and_unload(), tmp_path / "merged")
    via_adapter = diff_weights(base, tmp_path / "adapter").to_frame().set_index("parameter")
    via_merged = diff_weights(base, merged).to_frame().set_index("parameter")
    assert via_adapter.index.equals(via_merged.index)
    for column in ("delta_norm", "top_singular_value", "frac_changed"):
        assert via_adapter[column].tolist() == pytest.approx(
            via_merged[column].tolist(), rel=1e-5, abs=1e-7, nan_ok=True
        )
    assert set(via_adapter["adapter_rank"].dropna()) == {RANK}
    assert (via_adapter["adapter_rank"].notna() == (via_adapter["delta_norm"] > 0)).all()


# -- sharded, half precision -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> dict[str, Path]:
    """A bf16 base and two bf16 RL checkpoints, each sharded with an index."""
    root = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("llama")).to(torch.bfloat16)
    paths = {"base": _save(model, root / "run" / "checkpoint-0", max_shard_size="20KB")}
    for step in (5, 10):
        with torch.no_grad():
            model.get_parameter("model.layers.1.mlp.up_proj.weight").add_(0.05)
        paths[f"step-{step}"] = _save(model, root / "run" / f"checkpoint-{step}", max_shard_size="20KB")
    assert len(list(paths["base"].glob("model-*.safetensors"))) > 2
    assert not (paths["base"] / "model.safetensors").exists()
    return {"root": root / "run", **paths}


def test_sharded_bf16_checkpoints_load_in_their_dtype_or_upcast(bf16_run, tmp_path):
    series = ModelSeries.from_run_dir(bf16_run["root"])
    assert series.load_dtype == torch.bfloat16  # as stored
    assert {d["dtype"] for d in series.describe()} == {"bfloat16"}
    result = run_diff(series, PROMPTS, tmp_path / "bf16", HarvestConfig(batch_size=2))
    manifest = json.loads((tmp_path / "bf16" / "activations" / "manifest.json").read_text())
    assert {c["dtype"] for c in manifest["checkpoints"]} == {"bfloat16"}  # the harvest dtype, recorded
    # weights: float32 differences of the stored bf16 values
    base, post = load_state_dict(bf16_run["base"]), load_state_dict(bf16_run["step-10"])
    name = "model.layers.1.mlp.up_proj.weight"
    assert base[name].dtype == torch.bfloat16
    row = result.weights[(result.weights["label"] == "checkpoint-10") & (result.weights["parameter"] == name)]
    assert row["delta_norm"].item() == pytest.approx(float((post[name].float() - base[name].float()).norm()))
    assert result.weights[result.weights["parameter"] != name]["delta_norm"].eq(0).all()
    activations = result.activations[result.activations["label"] == "checkpoint-10"].set_index("hook")
    assert (
        activations["rel_diff_norm"].tolist()[0] == 0 < activations["rel_diff_norm"].tolist()[1]
    )  # layer 1 only
    upcast = ModelSeries.from_run_dir(bf16_run["root"], dtype=torch.float32)
    assert upcast.load_dtype == torch.float32
    upcast.load(upcast.checkpoints[1])  # bf16 values are exact in float32: the strict check passes
    assert upcast.fidelity["checkpoint-5"] < 1e-4


# -- series sanity ------------------------------------------------------------------------------


def test_byte_identical_checkpoints_are_reported_by_name(bf16_run, tmp_path, caplog):
    # The same weights re-saved unsharded: other files, identical tensors.
    copy = _save(
        AutoModelForCausalLM.from_pretrained(bf16_run["step-5"], dtype=torch.bfloat16), tmp_path / "7"
    )
    paths = [bf16_run["base"], bf16_run["step-5"], copy, bf16_run["step-10"]]
    with caplog.at_level(logging.WARNING, logger="rlinterp.series"):
        ModelSeries.from_paths(paths).validate()
    assert (
        f"checkpoints checkpoint-5 ({bf16_run['step-5']}) and step-7 ({copy}) hold byte-identical"
        in caplog.text
    )
    with pytest.raises(RlinterpError, match=r"checkpoint-5 .* and step-7 .* hold byte-identical weights"):
        ModelSeries.from_paths(paths, on_identical="error").validate()
    # through the CLI: one line, before any compute
    out = tmp_path / "out"
    argv = ["diff", "--series", *map(str, paths), "--prompts", str(_prompt_file(tmp_path)), "--out", str(out)]
    err = _one_line_error([*argv, "--on-identical", "error"], tmp_path)
    assert "hold byte-identical weights" in err and not out.exists()


def test_identical_adapters_are_reported(lora_run, tmp_path, caplog):
    shutil.copytree(lora_run["run"] / "checkpoint-20", tmp_path / "checkpoint-25")
    paths = [lora_run["base"], lora_run["run"] / "checkpoint-20", tmp_path / "checkpoint-25"]
    with caplog.at_level(logging.WARNING, logger="rlinterp.series"):
        ModelSeries.from_paths(paths).validate()
    assert (
        "checkpoint-20" in caplog.text and "checkpoint-25" in caplog.text and "byte-identical" in caplog.text
    )


def test_steps_out_of_order_or_duplicated_are_refused(bf16_run, tmp_path):
    with pytest.raises(RlinterpError, match=r"checkpoint-5 \(step 5\) comes after checkpoint-10 \(step 10\)"):
        ModelSeries.from_paths([bf16_run["base"], bf16_run["step-10"], bf16_run["step-5"]])
    other = shutil.copytree(bf16_run["step-5"], tmp_path / "other-run" / "checkpoint-5")
    with pytest.raises(
        RlinterpError, match=rf"checkpoint-5 \({bf16_run['step-5']}\) and .* both have step 5"
    ):
        ModelSeries.from_paths([bf16_run["base"], bf16_run["step-5"], other])


def test_layouts_and_the_steps_filter(bf16_run, tmp_path):
    for layout, name in (("global_step{}", "deepspeed"), ("{}", "plain"), ("step-{}", "organism")):
        run = tmp_path / name
        for step, source in ((0, "base"), (5, "step-5"), (10, "step-10")):
            shutil.copytree(bf16_run[source], run / layout.format(step))
        series = ModelSeries.from_run_dir(run)
        assert [c.step for c in series] == [0, 5, 10]
        if layout == "{}":
            assert [c.label for c in series] == ["base", "step-5", "step-10"]
    series = ModelSeries.from_run_dir(bf16_run["root"])
    assert [c.step for c in series.select(every=2)] == [0, 10]  # every 2nd, and the last
    assert [c.step for c in series.select(every=5)] == [0, 10]
    assert [c.step for c in series.select(steps=[10])] == [0, 10]
    with pytest.raises(RlinterpError, match=r"no checkpoint at step\(s\) \[7\]; the series has steps 5, 10"):
        series.select(steps=[5, 7])


def test_steps_filter_on_the_cli(bf16_run, tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["diff", "--series", str(bf16_run["root"]), "--prompts", str(_prompt_file(tmp_path))]
    assert main([*argv, "--out", str(out), "--steps", "10", "--batch-size", "2"]) == 0
    assert "checkpoint-10" in capsys.readouterr().out
    assert [c["label"] for c in json.loads((out / "manifest.json").read_text())["checkpoints"]] == [
        "base",
        "checkpoint-10",
    ]
    err = _one_line_error([*argv, "--out", str(tmp_path / "e"), "--steps", "every:x"], tmp_path, code=2)
    assert "neither every:<k> nor a list" in err


# -- bad adapters: one line, before any compute -------------------------------------------------


def test_an_adapter_trained_on_another_base_is_refused(lora_run, tmp_path):
    torch.manual_seed(2)
    wide = _save(AutoModelForCausalLM.from_config(tiny_hf_config("llama", d_model=64)), tmp_path / "wide")
    _lora(wide, "llama", 10).save_pretrained(tmp_path / "checkpoint-10")
    out = tmp_path / "out"
    argv = ["diff", "--series", str(lora_run["base"]), str(tmp_path / "checkpoint-10"), "--prompts"]
    err = _one_line_error([*argv, str(_prompt_file(tmp_path)), "--out", str(out)], tmp_path)
    assert "updates model.layers.0.mlp.down_proj.weight with a rank-2 (64 x 128) matrix" in err
    assert f"the series' base base ({lora_run['base']}) holds it with shape (32, 64)" in err
    assert not out.exists()


def test_an_adapter_whose_named_base_differs_in_a_config_field_is_refused(lora_run, tmp_path):
    # Same shapes, another norm epsilon: only the config of the base the adapter names shows it.
    config = tiny_hf_config("llama")
    config.rms_norm_eps = 1e-3
    torch.manual_seed(3)
    other = _save(AutoModelForCausalLM.from_config(config), tmp_path / "other-base")
    _lora(other, "llama", 10).save_pretrained(tmp_path / "checkpoint-10")
    with pytest.raises(RlinterpError) as error:
        ModelSeries.from_paths([lora_run["base"], tmp_path / "checkpoint-10"]).validate()
    message = str(error.value)
    assert f"the adapter checkpoint-10 ({tmp_path / 'checkpoint-10'}) was trained on {other}" in message
    assert "in config field rms_norm_eps: 1e-06 vs 0.001" in message


def test_an_adapter_for_another_architecture_is_refused(lora_run, tmp_path):
    torch.manual_seed(4)
    gpt2 = _save(AutoModelForCausalLM.from_config(tiny_hf_config("gpt2")), tmp_path / "gpt2")
    _lora(gpt2, "gpt2", 10).save_pretrained(tmp_path / "checkpoint-10")
    shutil.rmtree(gpt2)  # the named base is gone; the model class in the adapter config remains
    with pytest.raises(RlinterpError, match="was trained on a GPT2LMHeadModel .* is a LlamaForCausalLM"):
        ModelSeries.from_paths([lora_run["base"], tmp_path / "checkpoint-10"]).validate()


def test_an_adapter_naming_a_missing_base_is_refused(lora_run, tmp_path):
    run = shutil.copytree(lora_run["run"], tmp_path / "run")
    for config_path in run.glob("*/adapter_config.json"):
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    out = tmp_path / "out"
    argv = ["diff", "--series", str(run), "--prompts", str(_prompt_file(tmp_path)), "--out", str(out)]
    err = _one_line_error(argv, tmp_path)
    assert (
        f"name the base model '{tmp_path / 'gone'}' (adapter_config.json), which is not a local folder" in err
    )
    assert "--base" in err and not out.exists()
    # with the base given, the run is usable (its shapes fit)
    ModelSeries.from_spec([str(run)], base=lora_run["base"]).validate()


def test_an_adapter_series_needs_a_full_base(lora_run):
    loose = [lora_run["run"] / "checkpoint-10", lora_run["run"] / "checkpoint-30"]
    with pytest.raises(RlinterpError, match="the base of a series must be a full checkpoint"):
        ModelSeries.from_paths(loose)
    series = ModelSeries.from_spec(loose, base=lora_run["base"])  # --series ... --base ...
    assert [(c.label, c.step) for c in series] == [("base", 0), ("checkpoint-10", 10), ("checkpoint-30", 30)]


def _prompt_file(root: Path) -> Path:
    path = root / "prompts.txt"
    path.write_text("\n".join(PROMPTS.texts) + "\n")
    return path


def _one_line_error(argv: list[str], root: Path, code: int = 2) -> str:
    """Run the CLI expecting one stderr line and no change under ``root``; return the line."""
    import contextlib
    import io

    before = tree_hashes(root)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse errors exit
            status = exit_.code
    err = stderr.getvalue()
    assert status == code and err.count("\n") == 1 and "Traceback" not in err, err
    assert tree_hashes(root) == before
    return err
