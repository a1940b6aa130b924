"""Topics of the changed tokens know their answer: the factorisation recovers planted
non-negative factors, and on a GPT-2 whose unembedding was changed to promote ``!`` after
``z`` and ``?`` after ``q`` (nothing else), the changed positions split into those two
topics, each with its context token and its promoted token on top."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries
from rlinterp.organism.model import build_tokenizer
from rlinterp.readings.config import TopicsConfig
from rlinterp.readings.topics import changed_token_topics, nmf

from ..conftest import tiny_hf_config


def test_nmf_recovers_planted_factors():
    g = torch.Generator().manual_seed(0)
    h = torch.zeros(3, 12)
    h[0, 0:4], h[1, 4:8], h[2, 8:12] = 1.0, 1.0, 1.0  # disjoint supports: identifiable
    w = torch.rand(60, 3, generator=g) * (torch.rand(60, 3, generator=g) < 0.5)
    w[:3] = torch.eye(3)  # every topic appears alone somewhere
    found_w, found_h = nmf(w @ h, 3, n_iter=2000, seed=1)
    assert torch.allclose(found_w @ found_h, w @ h, atol=1e-2)
    cos = torch.nn.functional.normalize(found_h, dim=1) @ torch.nn.functional.normalize(h, dim=1).T
    assert (cos.max(dim=0).values >= 0.95).all()  # each planted topic found (in some order)
    assert torch.allclose(found_h.sum(1), torch.ones(3))
    with pytest.raises(RlinterpError, match="non-negative"):
        nmf(-torch.ones(2, 2), 1)


def _promoting(tokenizer, root):
    """A GPT-2 (d_model 64, no positional embeddings) where ``z`` and ``q`` are embedded along
    unit directions orthogonal to every other token's embedding, and a copy whose unembedding
    of ``!`` (``?``) reads the ``z`` (``q``) direction: the copy promotes ``!`` after ``z``
    and ``?`` after ``q``, and changes nothing else but through the tiny random attention."""
    config = tiny_hf_config("gpt2", vocab_size=len(tokenizer), d_model=64, n_layer=2)
    config.tie_word_embeddings = False
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = tokenizer.convert_tokens_to_ids
    planted = {"z": "!", "q": "?"}
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        embedding = model.transformer.wte.weight
        others = [i for i in range(len(tokenizer)) if i not in (ids("z"), ids("q"))]
        basis, _ = torch.linalg.qr(embedding[others].T)  # spans every other token's embedding
        g = torch.Generator().manual_seed(1)
        directions = {}
        for context in planted:
            u = torch.randn(64, generator=g)
            u -= basis @ (basis.T @ u)
            for v in directions.values():
                u -= (u @ v) * v
            directions[context] = u / u.norm()
            embedding[ids(context)] = 0.2 * directions[context]
    model.save_pretrained(root / "base")
    with torch.no_grad():
        for context, promoted in planted.items():
            model.lm_head.weight[ids(promoted)] += directions[context]
    model.save_pretrained(root / "step-1")
    for folder in ("base", "step-1"):
        tokenizer.save_pretrained(root / folder)
    return ModelSeries.from_paths([root / "base", root / "step-1"])


def test_two_planted_promotions_are_two_topics(tmp_path):
    tokenizer = build_tokenizer("abcdefghijklmnopqrstuvwxyz !?")
    series = _promoting(tokenizer, tmp_path)
    g = torch.Generator().manual_seed(2)
    letters = "abcdefghijklmnoprstuvwxy"  # neither z nor q
    texts = []
    for i in range(48):
        words = [
            "".join(letters[j] for j in torch.randint(0, len(letters), (4,), generator=g)) for _ in range(5)
        ]
        marker = "z" if i % 2 else "q"
        texts.append(" ".join(w[:2] + marker + w[2:] for w in words))
    store = harvest(
        series,
        PromptSet.from_list(texts),
        tmp_path / "store",
        HarvestConfig(hooks=("blocks.0.hook_resid_post",)),
    )
    cfg = TopicsConfig(n_positions=120, n_topics=2, context=1, promoted=1, n_iter=500)
    result = changed_token_topics(series, store, cfg)
    assert set(result.positions["token"]) == {"z", "q"}  # the changed positions are the planted ones
    tops = {(t.top_context[0], t.top_promoted[0]) for t in result.topics.itertuples()}
    assert tops == {("z", "!"), ("q", "?")}
    by_token = result.positions.groupby("token")["topic"].nunique()
    assert (by_token == 1).all()  # every z in one topic, every q in the other
    assert result.topics["share"].sum() == pytest.approx(1.0)
