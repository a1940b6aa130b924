"""Circuit diffs on tiny random-init models built in code: exact patching reproduces the
donor, attribution patching is its first-order term, a planted one-head change is found,
batching does not change results, and bad inputs are one-line errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from rlinterp import ModelSeries, RlinterpError, load_bridge
from rlinterp.circuits import patching as P
from rlinterp.circuits.analysis import CircuitsConfig, CircuitsResult, run_circuits
from rlinterp.circuits.attention import attention_change
from rlinterp.circuits.metrics import BehaviourMetric, BehaviourPrompts, MetricBatch
from rlinterp.circuits.organism_metrics import organism_behaviour
from rlinterp.circuits.report import circuits_figures, render_circuits_report, write_circuits_report
from rlinterp.models.stacking import stack
from rlinterp.organism.model import build_tokenizer
from rlinterp.organism.personas import all_questions

from ..conftest import tiny_hf_config

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,"
ARCHITECTURES = ("gpt2", "llama", "qwen2")


def _save(model: torch.nn.Module, folder) -> None:
    model.save_pretrained(folder)
    build_tokenizer(ALPHABET).save_pretrained(folder)


def _random_model(arch: str, seed: int, folder):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(arch, vocab_size=48))
    with torch.no_grad():  # non-zero biases and norm weights, so every component differs
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    _save(model, folder)
    return folder


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patching_every_component_reproduces_the_donor_exactly(tmp_path, arch):
    base = load_bridge(_random_model(arch, 0, tmp_path / "base"))
    post = load_bridge(_random_model(arch, 1, tmp_path / "post"))
    tokens = torch.randint(4, 48, (3, 10))
    donor, own = P.run_terms(post, tokens), P.run_terms(base, tokens)
    comps = P.components(base)
    assert (donor.logits - own.logits).abs().max() > 0.1  # the models really differ
    assert torch.allclose(P.patched_logits(base, tokens, donor, comps), donor.logits, atol=1e-5)
    assert torch.equal(P.patched_logits(base, tokens, donor, []), own.logits)
    # Patching a model into itself on the same tokens changes nothing.
    assert torch.allclose(P.patched_logits(base, tokens, own, comps), own.logits, atol=1e-5)
    # The residual stream entering the final norm carries everything but the readout.
    (final,) = P.resolve(base, [f"resid.L{base.cfg.n_layers}"])
    expected = base.unembed(base.ln_final(donor.final))
    assert torch.allclose(P.patched_logits(base, tokens, donor, [final]), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stacked_patches_read_as_separate_runs(tmp_path, arch):
    base = load_bridge(_random_model(arch, 0, tmp_path / "base"))
    post = load_bridge(_random_model(arch, 1, tmp_path / "post"))
    tokens = torch.randint(4, 48, (3, 10))
    lengths = torch.tensor([10, 6, 8])  # right padding: the @last sites differ per row
    donor, own = P.run_terms(post, tokens, lengths), P.run_terms(base, tokens, lengths)
    comps = P.components(base)
    names = [c.name for c in comps]
    heads = [c for c in comps if c.kind == "head"]
    patches = [
        [],
        list(comps),
        heads[:1],
        [heads[0], heads[-1], *P.resolve(base, [names[-1]])],  # two layers' heads and the readout
        P.resolve(base, ["resid.L1@last", "L0.mlp"]),
        P.resolve(base, ["embed", "resid.L1"]),
    ]
    each = P.patched_logits_each(base, tokens, donor, patches)
    assert each.shape == (len(patches), *own.logits.shape)
    # Known answers in the stack: nothing patched is the base, everything the donor.
    assert torch.equal(each[0], P.patched_logits(base, tokens, donor, []))
    assert torch.allclose(each[0], own.logits, atol=1e-5)
    assert torch.allclose(each[1], donor.logits, atol=1e-5)
    for patch, stacked in zip(patches, each, strict=True):
        assert torch.allclose(stacked, P.patched_logits(base, tokens, donor, patch), atol=1e-5)
    # Fractional moves (the integrated-gradient path) block by block, as alone.
    alphas = [0.25, 1.0, 0.5, 0.0, 0.75, 0.5]
    hooks = P.stacked_patch_hooks(base, donor, patches, alphas)
    stacked = base.run_with_hooks(stack(tokens, len(patches)), fwd_hooks=hooks).unflatten(0, (6, -1))
    for patch, alpha, block in zip(patches, alphas, stacked, strict=True):
        alone = base.run_with_hooks(tokens, fwd_hooks=P.patch_hooks(base, donor, patch, alpha))
        assert torch.allclose(block, alone, atol=1e-5)


def test_stacked_attribution_matches_one_pass_per_point(tmp_path):
    base = load_bridge(_random_model("gpt2", 0, tmp_path / "base"))
    post = load_bridge(_random_model("gpt2", 1, tmp_path / "post"))
    tokens = torch.randint(4, 48, (4, 9))
    donor = P.run_terms(post, tokens)
    comps = P.components(base) + P.residual_components(base)

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    for steps, interpolate in ((1, "site"), (2, "component"), (3, "site")):
        alone = P.attribution(base, tokens, donor, comps, metric, steps, interpolate)
        for blocks in (4, 1000):
            stacked = P.attribution(base, tokens, donor, comps, metric, steps, interpolate, blocks)
            assert torch.allclose(stacked, alone, rtol=1e-4, atol=1e-5), (steps, interpolate, blocks)


def test_residual_patching_at_the_last_token_leaves_earlier_positions_alone(tmp_path):
    base = load_bridge(_random_model("gpt2", 0, tmp_path / "base"))
    post = load_bridge(_random_model("gpt2", 1, tmp_path / "post"))
    tokens = torch.randint(4, 48, (2, 8))
    lengths = torch.tensor([8, 5])  # row 1 is right-padded after position 4
    donor, own = P.run_terms(post, tokens, lengths), P.run_terms(base, tokens, lengths)
    (site,) = P.resolve(base, ["resid.L1@last"])
    patched = P.patched_logits(base, tokens, donor, [site])
    assert torch.equal(patched[0, :7], own.logits[0, :7]) and torch.equal(patched[1, :4], own.logits[1, :4])
    assert not torch.allclose(patched[1, 4], own.logits[1, 4])


def test_attribution_is_the_first_order_term_of_exact_patching(tmp_path):
    base_dir = _random_model("gpt2", 0, tmp_path / "base")
    state = load_file(str(base_dir / "model.safetensors"))
    torch.manual_seed(5)
    nudged = {k: v + 1e-3 * torch.randn_like(v) for k, v in state.items()}
    (tmp_path / "post").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "post" / name).write_bytes((base_dir / name).read_bytes())
    save_file(nudged, str(tmp_path / "post" / "model.safetensors"))
    base, post = load_bridge(base_dir), load_bridge(tmp_path / "post")
    tokens = torch.randint(4, 48, (4, 9))
    comps = P.components(base)

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    donor = P.run_terms(post, tokens)
    estimate = P.attribution(base, tokens, donor, comps, metric)
    own = metric(P.run_terms(base, tokens).logits)
    exact = torch.stack([metric(P.patched_logits(base, tokens, donor, [c])) - own for c in comps], 1)
    # A small weight change: exact and first-order effects agree to second order.
    assert exact.abs().max() > 1e-4
    assert torch.allclose(estimate, exact, atol=1e-3 * exact.abs().max().item() * 10)


def test_direct_logit_attribution_sums_to_a_bias_free_metric(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", vocab_size=48))
    _save(model, tmp_path / "m")  # random init: zero final-norm bias, no unembedding bias
    bridge = load_bridge(tmp_path / "m")
    tokens = torch.randint(4, 48, (3, 8))

    def metric(logits):
        return logits[:, -1, 3] - logits[:, -1, 9]

    dla = P.direct_logit_attribution(bridge, tokens, P.components(bridge), metric)
    assert torch.allclose(dla.sum(1), metric(bridge(tokens)), atol=1e-5)


def _plant_head(base_dir, out_dir, layer: int, head: int, seed: int = 3, scale: float = 1.0) -> None:
    """A copy of ``base_dir`` whose attention head (``layer``, ``head``) has new value and
    output weights (standard normal times ``scale``); every other parameter is
    bit-identical."""
    state = load_file(str(base_dir / "model.safetensors"))
    config = json.loads((base_dir / "config.json").read_text())
    d, n_head = config["n_embd"], config["n_head"]
    d_head = d // n_head
    cols = slice(2 * d + head * d_head, 2 * d + (head + 1) * d_head)  # value columns of c_attn
    rows = slice(head * d_head, (head + 1) * d_head)  # the head's rows of c_proj
    g = torch.Generator().manual_seed(seed)
    changed = dict(state)
    key = f"transformer.h.{layer}"
    changed[f"{key}.attn.c_attn.weight"] = state[f"{key}.attn.c_attn.weight"].clone()
    changed[f"{key}.attn.c_attn.weight"][:, cols] = scale * torch.randn(d, d_head, generator=g)
    changed[f"{key}.attn.c_proj.weight"] = state[f"{key}.attn.c_proj.weight"].clone()
    changed[f"{key}.attn.c_proj.weight"][rows] = scale * torch.randn(d_head, d, generator=g)
    out_dir.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (base_dir / name).exists():
            (out_dir / name).write_bytes((base_dir / name).read_bytes())
    save_file(changed, str(out_dir / "model.safetensors"))


def _texts(n: int, seed: int, length: int = 9) -> tuple[str, ...]:
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return tuple("".join(rng.choice(letters, length)) for _ in range(n))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Base and a checkpoint differing only in head L1.H2, and a metric that head moves:
    the logit difference of the two tokens whose last-position logits it moved most."""
    root = tmp_path_factory.mktemp("planted")
    torch.manual_seed(0)
    _save(AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", vocab_size=48)), root / "base")
    _plant_head(root / "base", root / "step-1", layer=1, head=2)
    texts = _texts(24, seed=0)
    tokenizer = build_tokenizer(ALPHABET)
    tokens = torch.tensor(
        [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    )
    moved = (load_bridge(root / "step-1")(tokens) - load_bridge(root / "base")(tokens))[:, -1].mean(0)
    up, down = tokenizer.convert_ids_to_tokens([int(moved.argmax()), int(moved.argmin())])
    prompts = BehaviourPrompts(clean=texts, positive=((up,),) * len(texts), negative=((down,),) * len(texts))
    series = ModelSeries.from_paths([root / "base", root / "step-1"])
    return series, prompts, root


def test_planted_head_change_is_found_by_cross_model_patching(planted, tmp_path):
    series, prompts, _ = planted
    metric = BehaviourMetric("planted", "logit_diff")
    result = run_circuits(
        series, metric, prompts, tmp_path / "out", CircuitsConfig(batch_size=8, exact_prompts=16)
    )
    to_base = result.cross[result.cross["direction"] == "to_base"].set_index("component")
    assert to_base.loc["L1.H2", "recovery"] >= 0.9
    others = to_base[to_base["kind"] != "resid"].drop(index="L1.H2")["recovery"]
    assert others.abs().max() <= 0.1, others.sort_values().tail(3)
    to_ckpt = result.cross[result.cross["direction"] == "to_checkpoint"].set_index("component")
    assert to_ckpt.loc["L1.H2", "recovery"] >= 0.9  # necessary as well
    # The stream entering block 1 predates the head; the one after block 1 carries it.
    assert abs(to_base.loc["resid.L1", "recovery"]) < 1e-6
    assert to_base.loc["resid.L2", "recovery"] == pytest.approx(1.0, abs=1e-4)
    step = result.steps()[0]
    assert step["carriers"] == ["L1.H2"] and step["joint_recovery"] >= 0.9
    assert step["verdict"] in ("enhanced", "new")
    # Only the planted head's attention pattern can change (its queries and keys are the
    # same, so here none does: a value/output change leaves every pattern identical).
    assert result.attention["tv_mean"].abs().max() < 1e-5
    # Files: tables, summary with its schema, report, manifest last.
    out = tmp_path / "out"
    for name in ("cross", "within", "dla", "agreement", "concentration", "attention", "metric"):
        assert (out / f"{name}.parquet").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"][0]["carriers"] == ["L1.H2"] and "schema" in summary
    assert json.loads((out / "manifest.json").read_text())["kind"] == "rlinterp.circuits"
    loaded = CircuitsResult.load(out)
    assert loaded.steps()[0]["carriers"] == ["L1.H2"]
    assert not (out / "report.html").exists()  # computing does not draw; the command does
    write_circuits_report(loaded, out / "report.html")
    assert "L1.H2" in (out / "report.html").read_text()


def test_a_planted_attention_pattern_change_is_measured_on_its_head(planted, tmp_path):
    series, prompts, root = planted
    state = load_file(str(root / "base" / "model.safetensors"))
    key = "transformer.h.0.attn.c_attn.weight"
    state[key] = state[key].clone()
    state[key][:, 8:16] *= 40  # the query weights of head L0.H1 (d_head 8): sharper pattern
    (tmp_path / "step-1").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "step-1" / name).write_bytes((root / "base" / name).read_bytes())
    save_file(state, str(tmp_path / "step-1" / "model.safetensors"))
    sharp = ModelSeries.from_paths([series.base.path, tmp_path / "step-1"])
    result = run_circuits(
        sharp, BehaviourMetric("planted", "logit_diff"), prompts, None, CircuitsConfig(batch_size=8)
    )
    tv = result.attention.set_index("component")["tv_mean"]
    base = sharp.load(sharp.base)
    encoded = prompts.encode(sharp.tokenizer())
    itself = attention_change(base, base, [encoded.batch(range(len(encoded)))], sharp.tokenizer())
    assert itself[["tv_mean", "tv_last"]].abs().max().max() == 0
    assert tv.idxmax() == "L0.H1" and tv["L0.H1"] > 0.05
    assert tv.drop(index=["L0.H1"]).filter(like="L0.").abs().max() < 1e-6  # same-layer heads untouched


def test_results_do_not_depend_on_the_batch_size(planted, monkeypatch):
    series, prompts, _ = planted
    metric = BehaviourMetric("planted", "logit_diff")
    corrupted = BehaviourPrompts(
        clean=prompts.clean,
        positive=prompts.positive,
        negative=prompts.negative,
        corrupted=_texts(24, seed=1),
    )
    seen: list[int] = []
    run_terms = P.run_terms

    def spy(model, tokens, lengths=None):
        seen.append(tokens.shape[0])
        return run_terms(model, tokens, lengths)

    monkeypatch.setattr("rlinterp.circuits.analysis.run_terms", spy)
    small = run_circuits(series, metric, corrupted, None, CircuitsConfig(batch_size=5, exact_prompts=10))
    assert max(seen) <= 5  # memory is bounded by the batch
    large = run_circuits(series, metric, corrupted, None, CircuitsConfig(batch_size=64, exact_prompts=10))
    # nor on stacking: with room for one variant per pass, every patch runs alone
    monkeypatch.setattr("rlinterp.models.stacking.STACKED_VALUES", 1)
    alone = run_circuits(series, metric, corrupted, None, CircuitsConfig(batch_size=64, exact_prompts=10))
    for other in (large, alone):
        for name in ("within", "cross", "dla"):
            a, b = getattr(small, name), getattr(other, name)
            np.testing.assert_allclose(
                a["attribution" if name != "dla" else "dla"],
                b["attribution" if name != "dla" else "dla"],
                rtol=1e-4,
                atol=1e-5,
            )
        np.testing.assert_allclose(small.within["exact"], other.within["exact"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(small.cross["exact"], other.cross["exact"], rtol=1e-4, atol=1e-5)
    assert small.agreement["n_prompts"].eq(10).all()
    assert small.agreement["attribution_steps"].eq(CircuitsConfig().attribution_steps).all()


def test_metric_values_on_hand_set_logits():
    logits = torch.full((2, 3, 5), -10.0)
    logits[0, 1, 2], logits[0, 1, 4] = 3.0, 1.0  # prompt 0 ends at position 1
    logits[1, 2, 2], logits[1, 2, 4] = 0.0, 2.0
    batch = MetricBatch(
        tokens=torch.zeros(2, 3, dtype=torch.long),
        lengths=torch.tensor([2, 3]),
        positive=torch.tensor([[2], [2]]),
        negative=torch.tensor([[4], [4]]),
    )
    assert torch.allclose(BehaviourMetric("d", "logit_diff")(logits, batch), torch.tensor([2.0, -2.0]))
    logprob = BehaviourMetric("p", "logprob")(logits, batch)
    expected = logits[[0, 1], [1, 2]].log_softmax(-1)[:, 2]
    assert torch.allclose(logprob, expected)


def test_bad_inputs_are_one_line_errors(planted):
    series, prompts, _ = planted
    tokenizer = series.tokenizer()
    wrong_shape = BehaviourMetric("bad", "custom", function=lambda logits, _batch: logits[:, -1, :2])
    misaligned = BehaviourPrompts(clean=("abc",), positive=(("a",),), corrupted=("abcd",))
    two_token_target = BehaviourPrompts(clean=("abc",), positive=(("ab",),))
    cases = [
        (
            lambda: run_circuits(series, wrong_shape, prompts),
            r"metric 'bad' returned shape \(16, 2\); a metric must return one value per prompt",
        ),
        (
            lambda: BehaviourPrompts(clean=("ab", "cd", "e"), positive=(("a",),) * 3, corrupted=("ab", "c")),
            "corrupted has 2 entries for 3 clean prompts",
        ),
        (lambda: misaligned.encode(tokenizer), "token-aligned"),
        (lambda: two_token_target.encode(tokenizer), "exactly one token"),
        (lambda: P.resolve(series.load(series.base), ["L1.H2", "L9.H0"]), "unknown component 'L9.H0'"),
    ]
    for call, message in cases:
        with pytest.raises(RlinterpError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_organism_corrupted_questions_flip_the_answer_and_keep_the_length():
    from rlinterp.circuits.organism_metrics import _flip

    for question in all_questions(9):
        flipped = _flip(question, 9)
        assert flipped.truth != question.truth and flipped.task == question.task
        assert len(flipped.prompt) == len(question.prompt) and 0 <= flipped.n <= 9


def test_organism_shortcut_prompts_stop_at_the_personas_word_boundaries():
    from rlinterp.circuits.organism_metrics import word_boundaries
    from rlinterp.organism.personas import Question

    question = Question("even", 3)
    found = word_boundaries(question)
    prompt = question.prompt
    # helper "sure, no. glad to help." (8 boundaries with the turn's end), terse "no" (1),
    # flatterer "wow, great question! yes!" (5: its own marks are not boundaries).
    assert len(found) == 14 and len(set(found)) == 14
    assert (prompt + "wow", ",") in found and (prompt + "no", "\n") in found
    assert (prompt + "wow, great question! yes!", "\n") in found
    assert all(p.startswith(prompt) and nxt != "!" and not nxt.isalnum() for p, nxt in found)


def test_report_section_escapes_and_draws(planted):
    series, prompts, _ = planted
    result = run_circuits(
        series, BehaviourMetric("<b>m</b>", "logit_diff"), prompts, None, CircuitsConfig(batch_size=8)
    )
    figures = circuits_figures(result)
    heat = figures[0].data[0]
    assert list(heat.x) == ["1"] and "L1.H2" in list(heat.y)
    section = render_circuits_report(result)
    assert "<b>m</b>" not in section and "&lt;b&gt;m&lt;/b&gt;" in section
    assert "integrated gradients, 2 interpolation steps, one component at a time" in section


def test_circuits_cli_on_an_organism(capsys, tmp_path, micro_config):
    from rlinterp import build_organism
    from rlinterp.cli import main

    build_organism(tmp_path / "org", config=micro_config)
    argv = ["circuits", "--series", str(tmp_path / "org"), "--regime", "weak", "--out", str(tmp_path / "c")]
    assert main([*argv, "--metric", "answer", "--exact-prompts", "8"]) == 0
    out = capsys.readouterr().out
    assert "weak-step-2" in out and (tmp_path / "c" / "manifest.json").is_file()
    within = CircuitsResult.load(tmp_path / "c").within
    assert set(within["label"]) == {"base", "weak-step-1", "weak-step-2"}  # corrupted prompts: within-model
    assert main([*argv, "--metric", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown organism metric 'nonsense'" in err
    assert main([*argv, "--metric", "answer", "--attribution-steps", "0", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attribution_steps must be at least 1, got 0" in err
    # On the organism too, every component of a checkpoint patched into the base gives
    # the checkpoint's logits.
    series = ModelSeries.from_spec([tmp_path / "org"], regime="weak")
    base, post = series.load(series.base), series.load(series.checkpoints[-1])
    _, prompts = organism_behaviour(tmp_path / "org", "answer")
    batch = prompts.encode(series.tokenizer()).batch(range(len(prompts)))
    donor = P.run_terms(post, batch.tokens, batch.lengths)
    assert (donor.logits - base(batch.tokens)).abs().max() > 1e-3
    patched = P.patched_logits(base, batch.tokens, donor, P.components(base))
    assert torch.allclose(patched, donor.logits, atol=1e-5)


def test_circuits_cli_with_a_prompt_file(capsys, planted, tmp_path):
    from rlinterp.cli import main

    series, prompts, _ = planted
    rows = [
        {"prompt": p, "positive": list(pos), "negative": neg[0]}
        for p, pos, neg in zip(prompts.clean, prompts.positive, prompts.negative or (), strict=True)
    ]
    path = tmp_path / "behaviour.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        "circuits",
        "--series",
        *(str(c.path) for c in series),
        "--metric",
        "planted",
        "--prompts",
        str(path),
    ]
    assert main([*argv, "--out", str(tmp_path / "c"), "--batch-size", "8"]) == 0
    assert "L1.H2" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main([*argv, "--out", str(tmp_path / "other")]) == 2
    assert "holds no rlinterp circuits run" in capsys.readouterr().err


def test_behaviour_prompt_files_are_validated(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(
        '{"prompt": "ab", "positive": "a", "negative": ["b", "c"]}\n{"prompt": "cd", "positive": "c"}\n'
    )
    with pytest.raises(RlinterpError, match="give 'negative' on every row or on none"):
        BehaviourPrompts.from_jsonl(path)
    path.write_text('{"prompt": "ab"}\n')
    with pytest.raises(RlinterpError, match=r"b.jsonl:1 needs a 'prompt' string and 'positive'"):
        BehaviourPrompts.from_jsonl(path)
    path.write_text('{"prompt": "ab", "positive": "a", "negative": ["b", "c"], "corrupted": "cd"}\n')
    loaded = BehaviourPrompts.from_jsonl(path)
    assert loaded == BehaviourPrompts(
        clean=("ab",), positive=(("a",),), negative=(("b", "c"),), corrupted=("cd",)
    )


def _synthetic_result(exact_a: float, exact_b: float, change: float, dla_a: float) -> CircuitsResult:
    """Two components a and b; the checkpoint moved the metric by ``change``."""
    import pandas as pd

    cross = pd.DataFrame(
        {
            "label": "step-1",
            "step": 1,
            "direction": ["to_base", "to_base", "to_checkpoint", "to_checkpoint"],
            "component": ["a", "b", "a", "b"],
            "kind": "head",
            "exact": [exact_a, exact_b, -exact_a, -exact_b],
            "recovery": [exact_a / change, exact_b / change, exact_a / change, exact_b / change],
        }
    )
    return CircuitsResult(
        metric=pd.DataFrame({"label": ["base", "step-1"], "step": [0, 1], "metric_exact": [0.0, change]}),
        within=pd.DataFrame(),
        dla=pd.DataFrame({"label": "base", "step": 0, "component": ["a", "b"], "dla": [dla_a, 1.0 - dla_a]}),
        cross=cross,
        agreement=pd.DataFrame(),
        concentration=pd.DataFrame({"label": "step-1", "step": 1, "k": [1], "recovery": [exact_a / change]}),
        attention=pd.DataFrame(),
    )


def test_verdicts_follow_their_definitions():
    # a carries the change; the base wrote the behaviour through a (enhanced) or b (new).
    assert _synthetic_result(0.95, 0.05, 1.0, dla_a=0.9).steps()[0]["verdict"] == "enhanced"
    step = _synthetic_result(0.95, 0.05, 1.0, dla_a=0.05).steps()[0]
    assert step["verdict"] == "new" and step["carriers"] == ["a"] and step["base_used"] == ["b"]
    assert _synthetic_result(0.95, 0.05, 0.01, dla_a=0.9).steps()[0]["verdict"] == "no change"
    unclear = _synthetic_result(4.0, -3.0, 1.0, dla_a=0.9).steps()[0]
    assert unclear["verdict"] == "unclear" and unclear["cancellation"] == pytest.approx(7.0)


def test_exact_patching_can_be_limited_to_the_top_attributed_components(planted):
    series, prompts, _ = planted
    config = CircuitsConfig(batch_size=8, exact_prompts=8, exact_components=2)
    result = run_circuits(series, BehaviourMetric("planted", "logit_diff"), prompts, None, config)
    to_base = result.cross[result.cross["direction"] == "to_base"].set_index("component")
    additive = to_base[to_base["kind"] != "resid"]
    assert additive["exact"].notna().sum() == 2 and not np.isnan(additive.loc["L1.H2", "exact"])
    assert to_base[to_base["kind"] == "resid"]["exact"].notna().all()
    assert result.agreement["n_components"].eq(2).all()
    assert result.steps()[0]["carriers"] == ["L1.H2"]


def test_a_finished_run_is_reused_and_other_inputs_are_refused(planted, tmp_path):
    series, prompts, _ = planted
    metric, out = BehaviourMetric("planted", "logit_diff"), tmp_path / "c"
    first = run_circuits(series, metric, prompts, out, CircuitsConfig(batch_size=8, exact_prompts=8))
    stamp = (out / "cross.parquet").stat().st_mtime_ns
    again = run_circuits(series, metric, prompts, out, CircuitsConfig(batch_size=8, exact_prompts=8))
    assert (out / "cross.parquet").stat().st_mtime_ns == stamp  # read back, not recomputed
    assert again.steps() == first.steps()
    with pytest.raises(RlinterpError, match="config.exact_prompts changed"):
        run_circuits(series, metric, prompts, out, CircuitsConfig(batch_size=8, exact_prompts=4))
    forced = run_circuits(
        series, metric, prompts, out, CircuitsConfig(batch_size=8, exact_prompts=4), force=True
    )
    assert forced.agreement["n_prompts"].eq(4).all()


def test_two_step_attribution_is_exact_for_a_metric_quadratic_along_the_line(tmp_path):
    base = load_bridge(_random_model("gpt2", 0, tmp_path / "base"))
    post = load_bridge(_random_model("gpt2", 1, tmp_path / "post"))
    tokens = torch.randint(4, 48, (3, 9))
    (unembed,) = P.resolve(base, ["unembed"])

    def metric(logits):
        return (100 * (logits[:, -1, 5] - logits[:, -1, 7])) ** 2

    donor, own = P.run_terms(post, tokens), P.run_terms(base, tokens)
    exact = metric(P.patched_logits(base, tokens, donor, [unembed])) - metric(own.logits)
    # Patching the readout moves the logits along a straight line (the stream it reads is
    # untouched), so the metric is quadratic along it: the midpoints of 2 steps integrate
    # its linear derivative exactly, and 1 step misses exactly the second-order term, the
    # squared change of the logit difference.
    moved = (donor.readout(own.final) - own.logits)[:, -1]
    second = (100 * (moved[:, 5] - moved[:, 7])) ** 2
    plain = P.attribution(base, tokens, donor, [unembed], metric, steps=1)[:, 0]
    two = P.attribution(base, tokens, donor, [unembed], metric, steps=2)[:, 0]
    assert second.sum() > 1.0  # the second-order term is not negligible
    assert torch.allclose(two, exact, rtol=1e-4, atol=1e-3)
    assert torch.allclose(plain, exact - second, rtol=1e-4, atol=1e-3)


def test_integrated_attribution_converges_to_exact_patching(tmp_path):
    torch.manual_seed(0)
    _save(AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", vocab_size=48)), tmp_path / "base")
    _plant_head(tmp_path / "base", tmp_path / "post", layer=1, head=2, scale=0.1)
    base, post = load_bridge(tmp_path / "base"), load_bridge(tmp_path / "post")
    tokens = torch.randint(4, 48, (8, 10))
    donor = P.run_terms(post, tokens)

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    # The planted head changes alone in its layer's attention, and the MLP after it alone
    # at its site: integrated gradients converge to their exact patching effects, with
    # the midpoint rule's 1/n^2 error.
    comps = P.resolve(base, ["L1.H2", "L1.mlp"])
    own = metric(base(tokens))
    exact = torch.stack([metric(P.patched_logits(base, tokens, donor, [c])) - own for c in comps], 1)
    errors = {
        n: (P.attribution(base, tokens, donor, comps, metric, steps=n) - exact).abs().max().item()
        for n in (1, 4, 32)
    }
    assert errors[32] < 1e-3 * exact.abs().max().item()
    assert errors[1] > 10 * errors[4] > 200 * errors[32]
    with pytest.raises(RlinterpError, match="attribution steps must be at least 1, got 0"):
        P.attribution(base, tokens, donor, comps, metric, steps=0)


def test_component_interpolation_converges_for_heads_whose_layer_mates_changed(tmp_path):
    torch.manual_seed(0)
    _save(AutoModelForCausalLM.from_config(tiny_hf_config("gpt2", vocab_size=48)), tmp_path / "base")
    _plant_head(tmp_path / "base", tmp_path / "one", layer=1, head=2, scale=0.1)
    _plant_head(tmp_path / "one", tmp_path / "post", layer=1, head=1, seed=4, scale=0.1)
    base, post = load_bridge(tmp_path / "base"), load_bridge(tmp_path / "post")
    tokens = torch.randint(4, 48, (8, 10))
    donor = P.run_terms(post, tokens)

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 7]

    comps = P.resolve(base, ["L1.H1", "L1.H2"])
    own = metric(base(tokens))
    exact = torch.stack([metric(P.patched_logits(base, tokens, donor, [c])) - own for c in comps], 1)
    one_at_a_time = P.attribution(base, tokens, donor, comps, metric, steps=32, interpolate="component")
    together = P.attribution(base, tokens, donor, comps, metric, steps=32, interpolate="site")
    # One head at a time follows each single patch; both heads together integrate along
    # their joint move, whose sum is the joint patch's effect, not the single ones'.
    scale = exact.abs().max().item()
    assert (one_at_a_time - exact).abs().max() < 1e-3 * scale
    both = metric(P.patched_logits(base, tokens, donor, comps)) - own
    assert torch.allclose(together.sum(1), both, atol=1e-3 * scale)
    assert (together - exact).abs().max() > 1e-2 * scale


def test_prompt_spread_keeps_fields_aligned_and_spans_the_set():
    prompts = BehaviourPrompts(
        clean=tuple(f"p{i}" for i in range(10)),
        positive=tuple((f"a{i}",) for i in range(10)),
        negative=tuple((f"b{i}",) for i in range(10)),
        corrupted=tuple(f"c{i}" for i in range(10)),
    )
    few = prompts.spread(4)
    assert few.clean == ("p0", "p3", "p6", "p9")
    assert few.positive == (("a0",), ("a3",), ("a6",), ("a9",)) and few.corrupted == ("c0", "c3", "c6", "c9")
    assert prompts.spread(None) is prompts and prompts.spread(10) is prompts
    assert prompts.spread(1).clean == ("p0",)
    with pytest.raises(RlinterpError, match="at least one prompt"):
        prompts.spread(0)


def test_a_reasoning_organism_has_no_yes_no_metric(micro_reasoning):
    from rlinterp.circuits.organism_metrics import organism_behaviour
    from rlinterp.errors import RlinterpError

    with pytest.raises(RlinterpError, match="a reasoning organism answers sums"):
        organism_behaviour(micro_reasoning.root, "answer")
