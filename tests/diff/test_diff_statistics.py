"""Streamed diff statistics equal a direct computation written here: CKA, cosine, relative
change and change quantiles over all tokens at once (on copies of the activations that are
rotated, scaled, shifted or unrelated), and the per-token KL from ``transformers`` logits
of each prompt run on its own."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.diff import activations as activation_diff
from rlinterp.diff import outputs as output_diff
from rlinterp.diff.activations import diff_activations
from rlinterp.diff.outputs import diff_outputs
from rlinterp.models.series import ModelSeries

from ..conftest import random_checkpoints, synthetic_store

HOOK = "blocks.0.hook_resid_post"
N, D = 512, 16  # 4 shards of 128 tokens


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two token x d matrices, from the centred matrices themselves."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return float((xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    # anisotropic, off-centre activations: CKA against an unrelated copy is far from 1
    x = (torch.randn(N, D, generator=g) * torch.linspace(0.2, 3.0, D) + 1.0).double()
    rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    mixing = torch.randn(D, D, generator=g, dtype=torch.float64)
    other = x @ mixing + 2 * torch.randn(N, D, generator=g, dtype=torch.float64)
    acts = {
        "base": x,
        "scaled": 2.5 * x,
        "rotated": 3.0 * x @ rotation,
        "shifted": x + 4.0,
        "other": other,
        "other-rotated": 0.5 * other @ rotation,
    }
    acts = {label: a.float() for label, a in acts.items()}
    store = synthetic_store(tmp_path_factory.mktemp("copies"), acts, HOOK)
    return diff_activations(store).table.set_index("label"), acts


def test_streamed_statistics_equal_direct_ones(copies):
    table, acts = copies
    x = acts["base"].double()
    for label, a in acts.items():
        y, row = a.double(), table.loc[label]
        assert row["n_tokens"] == N
        assert row["cka"] == pytest.approx(linear_cka(x, y), rel=1e-6, abs=1e-9)
        assert row["cosine"] == pytest.approx(F.cosine_similarity(x, y, dim=-1).mean().item(), rel=1e-6)
        change = (y - x).norm(dim=-1)
        assert row["rel_diff_norm"] == pytest.approx((change / x.norm(dim=-1)).mean().item(), rel=1e-6)
        assert row["mean_diff_norm"] == pytest.approx((y - x).mean(0).norm().item(), rel=1e-5, abs=1e-6)
        levels = activation_diff.QUANTILES
        quantiles = torch.quantile(change.float(), torch.tensor(levels)).tolist()
        assert [row[f"diff_norm_p{round(q * 100)}"] for q in levels] == pytest.approx(quantiles, rel=1e-5)
        assert row["diff_norm_max"] == pytest.approx(change.max().item(), rel=1e-6)


def test_known_values_under_rotation_scaling_and_shift(copies):
    table, _ = copies
    # CKA is invariant to rotation, isotropic scaling and translation ...
    for label in ("base", "scaled", "rotated", "shifted"):
        assert table.loc[label, "cka"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["other", "cka"] < 0.9
    assert table.loc["other-rotated", "cka"] == pytest.approx(table.loc["other", "cka"], rel=1e-5)
    # ... cosine and relative change are not: scaling by 2.5 keeps direction and moves by 1.5x
    assert table.loc["scaled", "cosine"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["scaled", "rel_diff_norm"] == pytest.approx(1.5, rel=1e-6)
    assert table.loc["rotated", "cosine"] < 0.9 and table.loc["shifted", "cosine"] < 0.99
    assert table.loc["base", "rel_diff_norm"] == 0 and table.loc["base", "cosine"] == pytest.approx(1.0)


PROMPTS = PromptSet.from_list(["is 12 even? yes", "a b", "the quick brown fox", "xyz", "jumps over", "hello"])


def test_streamed_kl_equals_kl_of_each_prompt_alone(tmp_path):
    folders = random_checkpoints(tmp_path, n_layer=2)
    series = ModelSeries.from_paths([folders["base"], folders["step-1"]])
    store = harvest(series, PROMPTS, tmp_path / "store", HarvestConfig(hooks=(HOOK,), batch_size=4))
    result = diff_outputs(series, store, top_positions=5)

    tokenizer = series.tokenizer()
    base, post = (AutoModelForCausalLM.from_pretrained(folders[k]).eval() for k in ("base", "step-1"))
    per_token = []
    for text in PROMPTS.texts:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[tokenizer.bos_token_id, *tokens]])
        with torch.no_grad():
            log_q = F.log_softmax(base(ids).logits[0].double(), -1)
            log_p = F.log_softmax(post(ids).logits[0].double(), -1)
        per_token.append((log_p.exp() * (log_p - log_q)).sum(-1)[1:])  # BOS is not kept
    kl = torch.cat(per_token)

    row = result.table.set_index("label").loc["step-1"]
    assert row["n_tokens"] == len(kl) == sum(len(b.tokens[b.keep]) for b in store.token_batches())
    assert row["kl_mean"] == pytest.approx(kl.mean().item(), rel=1e-4)
    assert row["kl_max"] == pytest.approx(kl.max().item(), rel=1e-4)
    levels = output_diff.QUANTILES
    quantiles = torch.quantile(kl, torch.tensor(levels, dtype=torch.float64)).tolist()
    assert [row[f"kl_p{round(q * 100)}"] for q in levels] == pytest.approx(quantiles, rel=1e-3)
    assert row["kl_mean"] > 1e-5  # the perturbation moved the outputs
    # the top rows name the tokens whose KL is largest, in store-row order
    tops = result.top_tokens[result.top_tokens["label"] == "step-1"]
    assert tops["row"].tolist() == kl.topk(5).indices.tolist()
    assert tops["kl"].tolist() == pytest.approx(kl.topk(5).values.tolist(), rel=1e-4)
    assert result.table.set_index("label").loc["base", "kl_max"] == 0
