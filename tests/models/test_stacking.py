"""How many variants one stacked pass runs: logits and activations both count."""

from types import SimpleNamespace

import torch

from rlinterp.models import stacking


def test_a_stack_is_bounded_by_its_logits_and_activations(monkeypatch):
    tokens = torch.zeros(4, 10, dtype=torch.long)  # 40 row-positions
    wide_vocab = SimpleNamespace(d_vocab=1000, d_model=8, n_layers=2)  # 1000 + 16*8*2 = 1256
    deep = SimpleNamespace(d_vocab=10, d_model=100, n_layers=10)  # 10 + 16*100*10 = 16010
    assert stacking.values_per_position(wide_vocab) == 1256
    assert stacking.values_per_position(deep) == 16010
    monkeypatch.setattr(stacking, "STACKED_VALUES", 40 * 16010 * 3)
    assert stacking.per_pass(tokens, deep) == 3  # a small vocabulary does not make room
    assert stacking.per_pass(tokens, wide_vocab) == (40 * 16010 * 3) // (40 * 1256)
    assert stacking.per_pass(tokens, wide_vocab, wanted=5) == 5
    monkeypatch.setattr(stacking, "STACKED_VALUES", 1)
    assert stacking.per_pass(tokens, deep, wanted=5) == 1  # never fewer than one
    rows = stacking.stack(torch.tensor([[1, 2], [3, 4]]), 3)
    assert rows.tolist() == [[1, 2], [3, 4]] * 3
