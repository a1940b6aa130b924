"""Dictionary matching on decoders with known answers: a permuted noisy copy, a planted split
and merge, a self-match, negated and dead decoders, and mismatched widths."""

import numpy as np
import pytest
import torch

from rlinterp.dictionaries.matching import MATCH_FLOOR, decoder_cosines, match_dictionaries
from rlinterp.errors import RlinterpError

D_MODEL, N_LATENTS = 32, 96


def random_decoder(n: int, seed: int, d: int = D_MODEL) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_a_permuted_noisy_copy_is_matched_back_exactly() -> None:
    """b is a's rows permuted, rescaled and moved by noise of norm 0.1 (cosine about 0.995,
    sign kept): every latent is paired with its own image, and nothing is born, dies or links,
    although an overcomplete dictionary (96 latents in 32 dimensions) has near neighbours."""
    a = random_decoder(N_LATENTS, seed=0)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(N_LATENTS, generator=g)
    noise = 0.1 * torch.nn.functional.normalize(torch.randn(N_LATENTS, D_MODEL, generator=g), dim=1)
    scale = 0.5 + torch.rand(N_LATENTS, 1, generator=g)
    b = torch.empty_like(a)
    b[perm] = scale * (a + noise)  # latent i of a is latent perm[i] of b
    assert float(decoder_cosines(a, a).fill_diagonal_(0).max()) > 0.5  # neighbours exist
    match = match_dictionaries(a, b)
    assert match.pairs["a"].tolist() == list(range(N_LATENTS))
    assert match.pairs["b"].tolist() == perm.tolist()
    assert (match.pairs["cosine"] > 0.99).all()
    assert match.counts() == {"pairs": N_LATENTS, "born": 0, "died": 0, "split": 0, "merged": 0} | {
        "inactive_a": 0,
        "inactive_b": 0,
    }


def test_self_match_is_the_identity_with_no_links() -> None:
    a = random_decoder(N_LATENTS, seed=2)
    match = match_dictionaries(a, a)
    assert match.pairs["a"].tolist() == match.pairs["b"].tolist() == list(range(N_LATENTS))
    np.testing.assert_allclose(match.pairs["cosine"], 1.0)
    assert match.links.empty and len(match.born) == len(match.died) == 0


def test_a_split_and_a_merge_are_linked_not_born_or_dead() -> None:
    """a's latent 0 is u + v; b holds u and v separately (a split). b's latent 2 is p + q +
    r, which a holds as three latents (a merge). The rest are shared. The assignment can pair
    latent 0 with only one of its halves; the other half is linked, not born."""
    basis = random_decoder(8, seed=3)
    u, v, p, q, r = basis[:5]
    shared = basis[5:]
    a = torch.cat([(u + v)[None], p[None], q[None], r[None], shared])
    b = torch.cat([u[None], v[None], (p + q + r)[None], shared])
    match = match_dictionaries(a, b)
    splits = match.links[match.links["kind"] == "split"]
    merges = match.links[match.links["kind"] == "merged"]
    assert splits[["a", "b"]].values.tolist() == [[0, 0], [0, 1]]
    np.testing.assert_allclose(splits["cosine"], float(decoder_cosines(a[:1], b[:2]).min()), rtol=0.1)
    assert sorted(merges["a"].tolist()) == [1, 2, 3] and set(merges["b"]) == {2}
    assert match.counts()["split"] == 1 and match.counts()["merged"] == 1
    assert len(match.born) == 0 and len(match.died) == 0
    shared_pairs = match.pairs[match.pairs["a"] >= 4]
    assert (shared_pairs["b"] - shared_pairs["a"]).eq(-1).all()  # shared latents keep their partner


def test_a_single_good_partner_is_not_a_split() -> None:
    """x = 0.97 u + 0.24 v: u alone explains it at 0.97, the pair adds too little to be a split."""
    basis = random_decoder(2, seed=4)
    u = basis[0]
    v = torch.nn.functional.normalize(basis[1] - (basis[1] @ u) * u, dim=0)
    x = 0.97 * u + 0.24 * v
    assert match_dictionaries(x[None], torch.stack([u, v])).links.empty


def test_one_strong_partner_plus_weak_ones_is_not_a_split() -> None:
    """x = 0.84 u + 0.3 (v1 + v2 + v3): the four fit x exactly and beat u alone by 0.15, but
    each v carries under a tenth of x, below LINK_MIN_SHARE; an even three-way split is one."""
    u, v1, v2, v3 = torch.linalg.qr(torch.randn(D_MODEL, 4, generator=torch.Generator().manual_seed(7)))[0].T
    x = 0.84 * u + 0.3 * (v1 + v2 + v3)
    assert match_dictionaries(x[None], torch.stack([u, v1, v2, v3])).links.empty
    even = match_dictionaries((v1 + v2 + v3)[None], torch.stack([u, v1, v2, v3]))
    assert even.links["b"].tolist() == [1, 2, 3] and set(even.links["kind"]) == {"split"}


def test_negated_dead_and_new_latents_stay_unmatched() -> None:
    """A decoder and its negation write opposite things; a zero decoder matches nothing;
    a direction only b has is born, one only a has died."""
    a = random_decoder(6, seed=5)
    b = a.clone()
    b[1] = -a[1]
    b[2] = 0.0
    b[3] = random_decoder(1, seed=6)[0]  # unrelated to every row of a (cosine < 0.5 here)
    assert float(decoder_cosines(b[3:4], a).max()) < MATCH_FLOOR
    match = match_dictionaries(a, b)
    assert match.pairs["a"].tolist() == [0, 4, 5] and match.pairs["b"].tolist() == [0, 4, 5]
    assert match.died.tolist() == [1, 2, 3] and match.born.tolist() == [1, 2, 3]
    nearest = match.nearest.set_index(["side", "latent"])
    assert nearest.loc[("a", 1), "cosine"] < MATCH_FLOOR and nearest.loc[("b", 2), "cosine"] == 0.0
    assert nearest.loc[("a", 4), "nearest"] == 4 and nearest.loc[("a", 4), "cosine"] == pytest.approx(1.0)
    lenient = match_dictionaries(a, b, floor=-1.0)  # every assigned pair kept
    assert len(lenient.pairs) == 6 and len(lenient.died) == 0


def test_inactive_latents_are_left_out_instead_of_born_and_dead() -> None:
    """Two copies of a dictionary whose last two latents never fired and kept independent
    random decoders: unmasked they are chance births and deaths; masked, nothing."""
    a, b = random_decoder(10, seed=8), random_decoder(10, seed=8)
    a[8:], b[8:] = random_decoder(2, seed=9), random_decoder(2, seed=10)
    assert match_dictionaries(a, b).counts()["born"] == 2
    alive = torch.arange(10) < 8
    match = match_dictionaries(a, b, alive_a=alive, alive_b=alive)
    assert match.counts() == {
        "pairs": 8,
        "born": 0,
        "died": 0,
        "split": 0,
        "merged": 0,
        "inactive_a": 2,
        "inactive_b": 2,
    }
    assert sorted(match.nearest["latent"]) == sorted([*range(8), *range(8)])


def test_different_widths_and_bad_input_are_one_line_errors() -> None:
    with pytest.raises(RlinterpError, match="different widths: d_model 32 vs 16") as error:
        match_dictionaries(random_decoder(4, 0), random_decoder(4, 0, d=16))
    assert "\n" not in str(error.value)
    with pytest.raises(RlinterpError, match="floor"):
        match_dictionaries(random_decoder(4, 0), random_decoder(4, 0), floor=1.5)
    with pytest.raises(RlinterpError, match="empty"):
        match_dictionaries(random_decoder(0, 0), random_decoder(4, 0))
