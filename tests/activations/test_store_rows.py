"""One token-batch rule: store rows, shards, contexts and the batches every pass runs are
the same tokens. Checked on a hand-made layout with known answers, and on a real harvest
against hidden states computed prompt by prompt with ``transformers`` (no batching, no
padding, no rlinterp code)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.activations.harvest import HarvestConfig, harvest, token_batches
from rlinterp.activations.prompts import PromptSet, TokenizedPrompts
from rlinterp.models.series import ModelSeries

from ..conftest import random_checkpoints

# lengths vary inside every batch of 4, and the last batch is short
PROMPTS = PromptSet.from_list(
    [
        "a",
        "is 12 even? yes",
        "bc",
        "the quick brown fox",
        "xyz",
        "jumps over",
        "the lazy dog, twice",
        "q",
        "hello there",
        "k: 5",
        "no",
        "one more line of text",
        "z",
    ]
)
HOOK = "blocks.0.hook_resid_post"


def test_batches_of_a_hand_made_layout():
    lengths = torch.tensor([3, 5, 2, 4, 2])
    tokens = torch.zeros(5, 6, dtype=torch.long)
    keep = torch.zeros(5, 6, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.arange(1, n + 1) + 10 * i
        keep[i, 1:n] = True
    keep[3, 1] = False  # e.g. a prompt token under response_only: 2 + 4 | 1 + 2 | 1 kept
    batches = list(token_batches(TokenizedPrompts(tokens=tokens, lengths=lengths, keep=keep), batch_size=2))
    assert [b.shard for b in batches] == [0, 1, 2]
    assert [(b.prompts.start, b.prompts.stop) for b in batches] == [(0, 2), (2, 4), (4, 5)]
    assert [b.tokens.shape[1] for b in batches] == [5, 4, 2]  # cut to the longest real row
    assert [(b.rows.start, b.rows.stop) for b in batches] == [(0, 6), (6, 9), (9, 10)]
    assert batches[1].tokens[torch.as_tensor(batches[1].keep)].tolist() == [22, 33, 34]
    kept_in_order = torch.cat([b.tokens[b.keep] for b in batches])
    assert torch.equal(kept_in_order, tokens[keep])  # store row i is the i-th kept token
    with pytest.raises(RlinterpError, match="batch_size must be positive"):
        next(token_batches(TokenizedPrompts(tokens=tokens, lengths=lengths, keep=keep), batch_size=0))


def alone(tokenizer, prompt: int) -> list[int]:
    """Prompt ``prompt`` tokenized on its own: BOS, then its tokens."""
    return [tokenizer.bos_token_id, *tokenizer(PROMPTS.texts[prompt], add_special_tokens=False)["input_ids"]]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    folders = random_checkpoints(root, n_layer=2)
    series = ModelSeries.from_paths([folders["base"], folders["step-1"]])
    return harvest(series, PROMPTS, root / "store", HarvestConfig(hooks=(HOOK,), batch_size=4)), folders


def test_shards_contexts_and_batches_are_the_same_rows(store):
    store, folders = store
    tokenizer = store.series(check_fidelity=False).tokenizer()
    batches = list(store.token_batches())
    assert len(batches) == store.n_shards == 4
    for label in store.labels:
        sizes = [len(shard) for shard in store.shards(label, HOOK)]
        assert sizes == [b.rows.stop - b.rows.start for b in batches]
    rows = list(range(batches[-1].rows.stop))
    contexts = store.token_contexts(rows, tokenizer)
    at_batch_position = [tokenizer.decode([int(t)]) for b in batches for t in b.tokens[b.keep]]
    assert contexts["token"].tolist() == at_batch_position
    # each row's (prompt, position) is that token in the prompt tokenized on its own
    for row in (0, 7, len(rows) - 1):
        prompt, position = contexts.loc[row, ["prompt", "position"]]
        assert tokenizer.decode([alone(tokenizer, prompt)[position]]) == contexts.loc[row, "token"]

    # the activations of row i are the model's hidden state at that (prompt, position),
    # computed here by transformers one prompt at a time
    model = AutoModelForCausalLM.from_pretrained(folders["step-1"]).eval()
    acts = store.read("step-1", HOOK)
    for row, (prompt, position) in enumerate(contexts[["prompt", "position"]].itertuples(index=False)):
        with torch.no_grad():
            out = model(torch.tensor([alone(tokenizer, prompt)]), output_hidden_states=True)
        # hidden_states[1] is the residual stream after block 0
        assert torch.allclose(acts[row], out.hidden_states[1][0, position], atol=1e-5), row
