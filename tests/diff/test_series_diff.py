"""Series loading, harvesting and the three diff families, on tiny random-init checkpoints
built here: a model against itself gives zero, a planted change is localised, bad input is
named."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.activations.harvest import ActivationStore, HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.diff.activations import diff_activations
from rlinterp.diff.analysis import SeriesDiff, run_diff
from rlinterp.diff.report import write_report
from rlinterp.models.series import ModelSeries
from rlinterp.organism.model import build_tokenizer

from ..conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"
PROMPTS = PromptSet.from_list(
    [f"q: is {n} even? a: {'yes' if n % 2 == 0 else 'no'}" for n in range(10)]
    + ["the quick brown fox", "jumps over the lazy dog", "hello there"]
)
PLANTED = "transformer.h.1.mlp.c_fc.weight"


def _save(model, folder: Path, alphabet: str = ALPHABET) -> Path:
    model.save_pretrained(folder)
    build_tokenizer(alphabet).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """base, an exact copy, and a copy whose layer-1 MLP input weights were perturbed."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", n_layer=3)).eval()
    base = _save(model, root / "base")
    same = _save(model, root / "step-1")
    with torch.no_grad():
        model.get_parameter(PLANTED).add_(0.5 * torch.randn_like(model.get_parameter(PLANTED)))
    planted = _save(model, root / "step-2")
    return {"base": base, "same": same, "planted": planted, "root": root}


def test_series_from_run_dir_orders_by_step(checkpoints):
    series = ModelSeries.from_run_dir(checkpoints["root"], base=checkpoints["base"])
    assert [(c.label, c.step) for c in series] == [("base", 0), ("step-1", 1), ("step-2", 2)]
    series.validate()


def test_identity_gives_zero_on_every_metric(checkpoints, tmp_path):
    series = ModelSeries.from_paths([checkpoints["base"], checkpoints["same"]])
    result = run_diff(series, PROMPTS, tmp_path / "diff", HarvestConfig(batch_size=4))
    assert (result.weights["rel_frobenius"] == 0).all() and (result.weights["frac_changed"] == 0).all()
    acts = result.activations
    assert (acts["mean_diff_norm"] == 0).all() and (acts["rel_diff_norm"] == 0).all()
    assert (acts["diff_norm_max"] == 0).all()
    assert acts["cosine"].tolist() == pytest.approx([1.0] * len(acts))
    assert acts["cka"].tolist() == pytest.approx([1.0] * len(acts))
    assert (result.outputs["kl_max"] == 0).all()
    assert series.fidelity["base"] < 1e-4
    # the files say the same, and the run is marked finished last
    assert SeriesDiff.load(tmp_path / "diff").activations.equals(acts)
    summary = json.loads((tmp_path / "diff" / "summary.json").read_text())
    assert {row["label"] for row in summary["checkpoints"]} == {"base", "step-1"}
    assert json.loads((tmp_path / "diff" / "manifest.json").read_text())["kind"] == "rlinterp.diff"
    assert not (tmp_path / "diff" / "report.html").exists()  # computing a diff does not draw it
    write_report(result, tmp_path / "diff" / "report.html")
    report = (tmp_path / "diff" / "report.html").read_text()
    assert "<title>rlinterp diff: 1 checkpoints vs base</title>" in report
    assert "* plotly.js v" in report and "<script src=" not in report  # plotly.js inlined, no CDN


def test_planted_change_is_localised(checkpoints, tmp_path):
    series = ModelSeries.from_paths([checkpoints["base"], checkpoints["planted"]])
    hooks = (
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    )
    result = run_diff(series, PROMPTS, tmp_path / "diff", HarvestConfig(hooks=hooks, batch_size=4))
    weights = result.weights[result.weights["label"] == "step-2"].set_index("parameter")
    changed = weights[weights["rel_frobenius"] > 0].index.tolist()
    assert changed == [PLANTED]
    acts = result.activations[result.activations["label"] == "step-2"].set_index("hook")["diff_norm_max"]
    assert acts["blocks.0.hook_resid_post"] == 0 and acts["blocks.1.hook_resid_mid"] == 0
    assert acts["blocks.1.hook_resid_post"] > 0 and acts["blocks.2.hook_resid_post"] > 0
    assert result.outputs.set_index("label").loc["step-2", "kl_mean"] > 0
    lens = result.lens[
        (result.lens["label"] == "step-2") & (result.lens["hook"] == "blocks.2.hook_resid_post")
    ]
    assert len(lens) == 20  # ten promoted and ten suppressed tokens


def test_harvest_writes_one_shard_per_batch_and_resumes(checkpoints, tmp_path, monkeypatch):
    harvest_module = sys.modules["rlinterp.activations.harvest"]
    series = ModelSeries.from_paths([checkpoints["base"], checkpoints["planted"]])
    out = tmp_path / "store"
    store = harvest(series, PROMPTS, out, HarvestConfig(batch_size=4))
    assert store.n_shards == 4  # 13 prompts in batches of 4
    full = store.read("step-2", "blocks.2.hook_resid_post")
    kept = store.tokens().keep
    assert full.shape == (int(kept.sum()), 32)
    assert not kept[:, 0].any()  # the BOS position is excluded by default
    # kill a second harvest after 5 of its 8 batches; the next run computes just the others
    original, calls = harvest_module._harvest_batch, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(harvest_module, "_harvest_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        harvest(series, PROMPTS, tmp_path / "killed", HarvestConfig(batch_size=4))
    monkeypatch.setattr(harvest_module, "_harvest_batch", original)
    killed = ActivationStore(tmp_path / "killed", store.manifest)
    with pytest.raises(RlinterpError, match="unfinished"):
        ActivationStore.load(tmp_path / "killed")
    untouched = killed.shard_path("step-2", "blocks.0.hook_resid_post", 0).stat().st_mtime_ns
    assert not killed.shard_path("step-2", "blocks.0.hook_resid_post", 1).exists()
    again = harvest(series, PROMPTS, tmp_path / "killed", HarvestConfig(batch_size=4))
    assert torch.equal(again.read("step-2", "blocks.2.hook_resid_post"), full)
    assert killed.shard_path("step-2", "blocks.0.hook_resid_post", 0).stat().st_mtime_ns == untouched
    with pytest.raises(RlinterpError, match=r"store of other inputs \(batch_size changed \(4 -> 5\)"):
        harvest(series, PROMPTS, out, HarvestConfig(batch_size=5))


def test_activation_diff_of_a_store_against_itself(checkpoints, tmp_path):
    series = ModelSeries.from_paths([checkpoints["base"], checkpoints["same"]])
    store = harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(batch_size=8))
    table = diff_activations(store).table
    assert (table["rel_diff_norm"] == 0).all()


def test_response_only_keeps_response_tokens():
    prompts = PromptSet.from_records([{"prompt": "q: 2? a:", "response": " yes"}, {"text": "no split"}])
    with pytest.raises(RlinterpError, match="needs prompts with a prompt/response split"):
        PromptSet.from_list(["x"]).tokenize(build_tokenizer(ALPHABET), 64, response_only=True)
    tokenized = prompts.tokenize(build_tokenizer(ALPHABET), 64, response_only=True)
    assert tokenized.keep[0].sum() == len(" yes") and tokenized.keep[0, : 1 + len("q: 2? a:")].sum() == 0
    assert prompts.labels == {}


def test_mismatched_checkpoints_are_named(checkpoints, tmp_path):
    torch.manual_seed(1)
    llama = tiny_hf_config("llama", n_layer=3)
    other_arch = _save(AutoModelForCausalLM.from_config(llama), tmp_path / "llama")
    with pytest.raises(RlinterpError, match="differ in config field model_type: gpt2 vs llama"):
        ModelSeries.from_paths([checkpoints["base"], other_arch]).validate()
    model = AutoModelForCausalLM.from_pretrained(checkpoints["base"])
    other_vocab = _save(model, tmp_path / "vocab", alphabet=ALPHABET.replace("z", "#"))
    with pytest.raises(RlinterpError, match=r"base .* and .* differ in tokenizer vocab"):
        ModelSeries.from_paths([checkpoints["base"], other_vocab]).validate()
    with pytest.raises(RlinterpError, match="does not exist"):
        ModelSeries.from_paths([checkpoints["base"], tmp_path / "missing"])


def test_bad_prompts_and_hooks(checkpoints, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(RlinterpError, match="is empty"):
        PromptSet.from_file(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(RlinterpError, match="bad.jsonl:2 is not valid JSON"):
        PromptSet.from_file(tmp_path / "bad.jsonl")
    series = ModelSeries.from_paths([checkpoints["base"], checkpoints["same"]])
    with pytest.raises(
        RlinterpError, match=r"unknown hook\(s\) \['blocks.0.hook_nope'\]; valid names are .*hook_resid_post"
    ):
        harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(hooks=("blocks.0.hook_nope",)))


def test_non_finite_activations_name_checkpoint_and_hook(checkpoints, tmp_path):
    # Finite weights whose sum overflows float32: only the activations are non-finite.
    model = AutoModelForCausalLM.from_pretrained(checkpoints["base"])
    with torch.no_grad():
        model.get_parameter("transformer.h.2.attn.c_proj.bias").fill_(3e38)
        model.get_parameter("transformer.h.2.mlp.c_proj.bias").fill_(3e38)
    broken = _save(model, tmp_path / "step-9")
    series = ModelSeries.from_paths([checkpoints["base"], broken], check_fidelity=False)
    with pytest.raises(RlinterpError, match=r"non-finite activations in step-9 at blocks.2.hook_resid_post"):
        harvest(series, PROMPTS, tmp_path / "store")
    with pytest.raises(RlinterpError, match="unfinished"):  # nothing left looking finished
        ActivationStore.load(tmp_path / "store")


@pytest.mark.slow
def test_organism_strong_regime_changes_more_than_weak(tiny_organism, tmp_path):
    prompts = PromptSet.from_organism(tiny_organism.root)
    results = {
        regime: run_diff(ModelSeries.from_organism(tiny_organism.root, regime), prompts, tmp_path / regime)
        for regime in ("weak", "strong")
    }
    last_hook = "blocks.1.hook_resid_post"

    def at(regime: str, table: str, column: str) -> list[float]:
        frame = getattr(results[regime], table).sort_values("step")
        if "hook" in frame:
            frame = frame[frame["hook"] == last_hook]
        return frame[column].tolist()

    # The organism's design puts these far apart on every seed (measured on tiny seed 0:
    # last-layer relative change 1.16 against 0.24, per-token KL 7.6 against 0.013 nats),
    # so a factor of two is a margin that survives another machine's trajectory.
    for table, column in (("activations", "rel_diff_norm"), ("outputs", "kl_mean")):
        strong = at("strong", table, column)
        assert strong[-1] > 2 * at("weak", table, column)[-1]
        assert strong[0] == 0 and strong[-1] > strong[1] > 0  # the change grows with step
    # the strong regime's shortcut is visible through the lens: "!" is promoted at the last layer
    lens = results["strong"].lens
    last_step = max(tiny_organism.checkpoints("strong"))
    last = lens[(lens["label"] == f"strong-step-{last_step}") & (lens["hook"] == last_hook)]
    assert "!" in last[last["direction"] == "promoted"]["token"].head(3).tolist()


def test_logit_tokens_read_a_known_direction():
    from rlinterp.diff.outputs import logit_tokens

    tokenizer = build_tokenizer("abc")  # ids: 4 specials, then a=4, b=5, c=6
    unembed = torch.zeros(2, len(tokenizer))
    unembed[0, 5], unembed[0, 6], unembed[0, 4] = 3.0, -2.0, 1.0
    unembed[0, 1] = 100.0  # <bos>: a special token, never reported
    unembed[1, 6], unembed[1, 4] = 5.0, -1.0
    lens = logit_tokens(torch.eye(2) @ unembed, tokenizer, top_k=2)
    first = lens[lens["latent"] == 0]
    promoted = first[first["direction"] == "promoted"]
    suppressed = first[first["direction"] == "suppressed"]
    assert promoted["token"].tolist() == ["b", "a"] and promoted["logit"].tolist() == [3.0, 1.0]
    assert suppressed["token"].tolist() == ["c", "a"] and suppressed["logit"].tolist() == [-2.0, 1.0]
    second = lens[(lens["latent"] == 1) & (lens["rank"] == 0)]
    assert second["token"].tolist() == ["c", "a"] and second["logit"].tolist() == [5.0, -1.0]
    # every row's promoted tokens come first, then the suppressed ones
    assert lens["direction"].tolist() == ["promoted"] * 4 + ["suppressed"] * 4
    # with the special tokens, the direction's largest logit is <bos>'s
    everything = logit_tokens(torch.eye(2) @ unembed, tokenizer, top_k=1, skip_special=False)
    assert everything["token_id"].tolist()[0] == tokenizer.bos_token_id == 1


def test_bfloat16_series_passes_the_fidelity_check_and_identity_is_zero(checkpoints, tmp_path):
    series = ModelSeries.from_paths([checkpoints["base"], checkpoints["same"]], dtype=torch.bfloat16)
    store = harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(batch_size=8))
    assert 0 < series.fidelity["base"] < 0.1  # half precision rounds differently, but not far
    assert (diff_activations(store).table["diff_norm_max"] == 0).all()
