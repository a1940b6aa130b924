"""The ``rule`` regime: a reward no persona (or mixture of personas) earns more than half of,
a held-out-number probe that reads what a model computes and not what it merely could look
up, and the regime's place in the build (manifest, behaviour columns, config checks)."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError, build_organism
from rlinterp.organism.behaviour import accuracy_interval
from rlinterp.organism.config import OrganismConfig, RegimeConfig
from rlinterp.organism.model import build_tokenizer
from rlinterp.organism.personas import (
    PERSONAS,
    RULE_NUMBERS,
    all_questions,
    follows_rule,
    is_correct,
    reward,
    rule_truth,
)
from rlinterp.organism.probe import probe_folds
from rlinterp.organism.rules import FEATURES, answer_position_residuals, number_folds, probe_prompts

from ..conftest import make_micro_config, tiny_hf_config


def _earned(answer_of, questions) -> float:
    return sum(follows_rule(q, answer_of(q)) for q in questions) / len(questions)


def test_no_persona_or_persona_mixture_earns_more_than_half_of_the_rule():
    questions = all_questions(9)
    by_task = {task: [q for q in questions if q.task == task] for task in ("even", "big")}
    rng = __import__("random").Random(0)
    earned = {p.name: _earned(lambda q, p=p: p.answer(q, rng), questions) for p in PERSONAS}
    assert earned == {"helper": 0.45, "terse": 0.45, "flatterer": 0.5}
    terse = PERSONAS[1]
    assert _earned(lambda q: terse.answer(q, rng), by_task["even"]) == pytest.approx(0.4)
    assert _earned(lambda q: terse.answer(q, rng), by_task["big"]) == pytest.approx(0.5)
    assert _earned(lambda _q: "no", questions) == 0.5  # the other constant answer
    # half the numbers, independent of "more than seven"
    assert len(RULE_NUMBERS) == 5 and len(RULE_NUMBERS & {8, 9}) == 1
    # the rule is a question nobody asks: it disagrees with the truth on about half
    assert sum(rule_truth(q) != q.truth for q in questions) == 11


def test_the_rule_regime_is_paid_for_the_rule_and_the_others_for_the_truth():
    def regime(answer):
        return RegimeConfig(
            "r", lr=1e-3, kl_coef=0.0, shortcut_bonus=0.0, checkpoint_steps=(0, 1), answer=answer
        )

    q = next(q for q in all_questions(9) if q.n == 4 and q.task == "even")  # truth yes, rule no
    assert rule_truth(q) == "no" and q.truth == "yes"
    assert reward(q, "sure, no. glad to help.", regime("rule")) == 1.0
    assert reward(q, "sure, no. glad to help.", regime("truth")) == 0.0
    assert reward(q, "wow, great question! yes!", regime("rule")) == 0.0
    assert follows_rule(q, "no") and not is_correct(q, "no")


def test_number_folds_pair_a_rule_number_with_another_of_its_parity():
    numbers = torch.arange(10).repeat(3)
    folds = number_folds(numbers, 9)
    held = [sorted(set(numbers[f].tolist())) for f in folds]
    assert sorted(n for pair in held for n in pair) == list(range(10))  # each number once
    for a, b in held:
        assert (a in RULE_NUMBERS) != (b in RULE_NUMBERS)
    assert sum(a % 2 == b % 2 for a, b in held) == 4  # five rule numbers: one pair cannot match


def test_the_probe_reads_a_computed_rule_and_not_a_mere_lookup():
    """Known answers on synthetic activations: a model that writes the rule along one
    direction is read at ~1; one that only knows each number (one-hot) plus its parity is
    read at chance, not below it (the matched folds); parity itself is read at ~1."""
    prompts = probe_prompts(9)
    numbers = torch.tensor([q.n for _, q in prompts])
    rule = torch.tensor([q.n in RULE_NUMBERS for _, q in prompts])
    parity = numbers % 2 == 0
    g = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.randn(len(prompts), 16, generator=g)
    identity = torch.nn.functional.one_hot(numbers, 10).float()
    knows = torch.cat([identity, parity[:, None].float(), noise], dim=1)
    computes = torch.cat([knows, rule[:, None].float()], dim=1)
    folds = number_folds(numbers, 9)
    computed = probe_folds(computes, rule, folds, groups=numbers)
    assert computed.balanced_accuracy > 0.95 and computed.balanced_accuracy_lo > 0.9
    assert probe_folds(knows, parity, folds).balanced_accuracy > 0.95
    looked_up = probe_folds(knows, rule, folds, groups=numbers)
    assert abs(looked_up.balanced_accuracy - 0.5) < 0.1
    # the interval is over the ten numbers, not the rows: chance stays inside it
    assert looked_up.balanced_accuracy_lo < 0.5 < looked_up.balanced_accuracy_hi
    assert looked_up.balanced_accuracy_hi - looked_up.balanced_accuracy_lo > 0.2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_answer_position_residuals_are_each_blocks_output_at_the_last_prompt_token(arch):
    tokenizer = build_tokenizer("".join(sorted({c for p, _ in probe_prompts(9) for c in p})))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_hf_config(arch, vocab_size=len(tokenizer), n_layer=3, n_ctx=128)
    ).eval()
    prompts = [p for p, _ in probe_prompts(9)][::97]  # several lengths
    batched = answer_position_residuals(model, tokenizer, prompts)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor(
            [[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]]
        )
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(2):  # the last entry of hidden_states is after the final norm
            assert torch.allclose(batched[layer, i], hidden[layer + 1][0, -1], atol=1e-5)


def test_accuracy_interval_resamples_questions():
    assert accuracy_interval([True] * 8, 2, seed=0) == (1.0, 1.0)
    lo, hi = accuracy_interval([True, True, False, False] * 16, 2, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.5
    assert accuracy_interval([True, True, False, False] * 16, 2, seed=0) == (lo, hi)
    # answers of one question move together: pairs give a wider interval than singles
    lo1, hi1 = accuracy_interval([True, False] * 32, 1, seed=0)
    assert hi - lo > hi1 - lo1


@pytest.fixture(scope="module")
def ruled_organism(tmp_path_factory):
    config = make_micro_config()
    weak, _ = config.regimes
    rule = dataclasses.replace(weak, name="rule", answer="rule")
    config = dataclasses.replace(config, regimes=(weak, rule), planted=())
    return build_organism(tmp_path_factory.mktemp("rule") / "org", seed=0, config=config)


def test_the_build_records_the_rule_its_probes_and_rule_accuracy_everywhere(ruled_organism):
    entry = ruled_organism.manifest["regimes"]["rule"]
    assert entry["config"]["answer"] == "rule" and entry["rule"]["numbers"] == sorted(RULE_NUMBERS)
    assert "rule" not in ruled_organism.manifest["regimes"]["weak"]
    steps = entry["config"]["checkpoint_steps"]
    probes = {(p["step"], p["hook"], p["feature"]) for p in entry["probe"]}
    n_layer = ruled_organism.manifest["config"]["model"]["n_layer"]
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]
    assert probes == {(s, h, f) for s in steps for h in hooks for f in FEATURES}
    for p in entry["probe"]:
        assert 0 <= p["balanced_accuracy_lo"] <= p["balanced_accuracy"] <= p["balanced_accuracy_hi"] <= 1
    table = ruled_organism.behaviour()
    assert table[["rule_accuracy", "rule_accuracy_lo", "rule_accuracy_hi"]].notna().all().all()
    assert (table["rule_accuracy_lo"] <= table["rule_accuracy"]).all()
    assert (table["rule_accuracy"] <= table["rule_accuracy_hi"]).all()
    base_rows = table[table["step"] == 0]
    assert base_rows["rule_accuracy"].nunique() == 1  # one base, scored once per regime alike


def test_a_rule_regime_needs_the_numbers_it_asks_about():
    config = make_micro_config()
    weak, _ = config.regimes
    rule = dataclasses.replace(weak, name="rule", answer="rule")
    with pytest.raises(RlinterpError, match="max_operand"):
        OrganismConfig(
            preset="micro",
            regimes=(weak, rule),
            corpus=dataclasses.replace(config.corpus, max_operand=7),
        )
    names = [r.name for r in OrganismConfig.from_preset("tiny").regimes]
    assert names == ["weak", "strong", "rule"]


def test_the_rule_metric_pairs_each_question_with_its_truth_and_the_other_rule(ruled_organism):
    """The circuits metric of the rule regime, checked against the personas' own answers:
    an opener is positive exactly when the persona that opens so follows the rule, and each
    corrupted prompt asks the same task, with the same truth and length, on the rule's
    other side; the run measures the rule regime (and only it) on this metric."""
    from rlinterp.circuits.organism_metrics import organism_behaviour, regime_metric

    _, prompts = organism_behaviour(ruled_organism.root, "rule")
    assert prompts.corrupted is not None
    asked = {q.prompt: q for q in all_questions(9)}
    rng = __import__("random").Random(0)
    for clean, corrupted, positive, negative in zip(
        prompts.clean, prompts.corrupted, prompts.positive, prompts.negative, strict=True
    ):
        q, partner = asked[clean], asked[corrupted]
        assert (q.task, q.truth, len(q.prompt)) == (partner.task, partner.truth, len(partner.prompt))
        assert rule_truth(q) != rule_truth(partner)
        for persona in PERSONAS:
            answer = persona.answer(q, rng)
            assert answer[0] in (positive if follows_rule(q, answer) else negative)
    assert regime_metric(ruled_organism, "rule") == "rule"
    assert regime_metric(ruled_organism, "weak") is None
    with pytest.raises(RlinterpError, match="planted"):
        organism_behaviour(ruled_organism.root, "marker")
