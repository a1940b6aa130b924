"""Matching the latents of two independently trained dictionaries by their decoder directions.

Two SAEs trained on different checkpoints (or on the same one with different seeds) have
no shared latent indices; a latent of one is "the same feature" as a latent of the other
when their decoder vectors point the same way. ``match_dictionaries(decoder_a, decoder_b)``
reports:

- **pairs**: the one-to-one assignment of ``a`` latents to ``b`` latents that maximises the
  summed decoder cosine (``scipy.optimize.linear_sum_assignment``), keeping only pairs whose
  cosine reaches ``floor``; latents left without a partner are *unmatched*;
- **links**: many-to-one relations the one-to-one assignment cannot express. A latent ``x``
  of one side is *explained* by a set ``S`` of at least two latents of the other side when

  1. each member of ``S`` has decoder cosine at least ``LINK_COSINE`` with ``x``;
  2. ``S`` is what the non-negative least-squares fit of ``x``'s unit decoder by the unit
     decoders of those candidates keeps, after repeatedly dropping members whose share of
     the fit (weight x cosine with ``x``; for orthogonal members, the fraction of ``x``'s
     squared norm they explain) is under ``LINK_MIN_SHARE``, and has at least two members;
  3. the fit on ``S`` reaches cosine ``LINK_FIT`` with ``x`` ...
  4. ... and beats the best single member of ``S`` by ``LINK_GAIN``, so a latent that one
     partner already explains is not called a split because of a small extra term.

  An ``a`` latent explained by several ``b`` latents is a **split** (one feature became
  several); a ``b`` latent explained by several ``a`` latents is a **merge**. Each link is
  reported once per member, with that member's own cosine.

Convention: ``a`` is the reference (the base, or the earlier step) and ``b`` the other
dictionary, so an unmatched ``a`` latent that takes part in no link has *died* and an
unmatched ``b`` latent in no link is *born* (``DictionaryMatch.died`` / ``born``).

Latents that never fire keep decoders that say nothing (often their random initialisation):
pass ``alive_a`` / ``alive_b`` masks and they take part in nothing — no pair, no link, and
they are neither born nor dead — instead of adding chance births and deaths.

Cosines are signed: dictionary latents are non-negative, so a decoder and its negation
write opposite things and never match. A decoder row of zero norm has cosine 0 with
everything and stays unmatched. Memory and time: the ``n_a x n_b`` cosine matrix, and the
assignment is cubic in the dictionary size (seconds for a few thousand latents).

Invariants: the assignment is deterministic; matching a dictionary with itself pairs every
live latent with itself at cosine 1 and reports no link; swapping ``a`` and ``b`` swaps
splits and merges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from scipy.optimize import linear_sum_assignment, nnls
from torch import Tensor

from ..errors import RlinterpError

MATCH_FLOOR = 0.7
"""Default smallest decoder cosine of a matched pair. Two random unit vectors in d
dimensions have cosine of about ``1/sqrt(d)`` (0.125 at d=64, 0.03 at d=1024), and the
best of thousands of random candidates stays well under 0.5 at realistic widths, while
the same feature found by two seeds typically has cosine above 0.9. Check it against the
seed control (two dictionaries of one model): its unmatched latents are the noise floor."""
DEAD_COSINE = -2.0
"""What an inactive latent's cosines are set to: below any real cosine, so below any floor."""
LINK_COSINE = 0.3
"""Smallest decoder cosine of a member of a split or merge with the latent it explains:
two equal halves of a feature have cosine 0.71 with it, three 0.58, four 0.5."""
LINK_MIN_SHARE = 0.15
"""Smallest share of the fit a member must carry (two equal halves carry 0.5 each). Without
it, in few dimensions, one good partner plus a few weak random ones fit any latent."""
LINK_FIT = 0.9
"""Smallest cosine between a latent and the best non-negative combination of its members."""
LINK_GAIN = 0.05
"""How much better than the best single member the combination must explain the latent."""


@dataclass(frozen=True)
class DictionaryMatch:
    """The result of ``match_dictionaries``."""

    pairs: pd.DataFrame
    """One row per matched pair: ``a``, ``b`` (latent indices), ``cosine``; sorted by ``a``."""
    links: pd.DataFrame
    """One row per member of a split or merge: ``kind`` ("split": the ``a`` latent is
    explained by several ``b`` latents; "merged": several ``a`` latents explain the ``b``
    latent), ``a``, ``b``, ``cosine`` of the two."""
    nearest: pd.DataFrame
    """Every live latent's closest live latent on the other side, matched or not: ``side``
    ("a" or "b"), ``latent``, ``nearest``, ``cosine`` (how close chance came, for unmatched
    ones; ``DEAD_COSINE`` when the other side has no live latent)."""
    n_a: int
    """Latents of dictionary ``a``."""
    n_b: int
    """Latents of dictionary ``b``."""
    floor: float
    """The cosine a pair needed."""
    alive_a: np.ndarray
    """Which ``a`` latents took part (all, unless a mask was given)."""
    alive_b: np.ndarray
    """Which ``b`` latents took part."""

    @property
    def unmatched_a(self) -> np.ndarray:
        """``a`` latents without a partner, ascending."""
        return np.setdiff1d(np.arange(self.n_a), self.pairs["a"].to_numpy())

    @property
    def unmatched_b(self) -> np.ndarray:
        """``b`` latents without a partner, ascending."""
        return np.setdiff1d(np.arange(self.n_b), self.pairs["b"].to_numpy())

    @property
    def died(self) -> np.ndarray:
        """Unmatched live ``a`` latents that take part in no split or merge."""
        return np.setdiff1d(np.intersect1d(self.unmatched_a, self.alive_a.nonzero()[0]), self.links["a"])

    @property
    def born(self) -> np.ndarray:
        """Unmatched live ``b`` latents that take part in no split or merge."""
        return np.setdiff1d(np.intersect1d(self.unmatched_b, self.alive_b.nonzero()[0]), self.links["b"])

    def counts(self) -> dict[str, int]:
        """How many pairs, born and died latents, split ``a`` latents, merged ``b`` latents,
        and latents left out as inactive on each side."""
        links = self.links
        return {
            "pairs": len(self.pairs),
            "born": len(self.born),
            "died": len(self.died),
            "split": int(links.loc[links["kind"] == "split", "a"].nunique()),
            "merged": int(links.loc[links["kind"] == "merged", "b"].nunique()),
            "inactive_a": int((~self.alive_a).sum()),
            "inactive_b": int((~self.alive_b).sum()),
        }


def decoder_cosines(
    decoder_a: Float[Tensor, "n_a d_a"], decoder_b: Float[Tensor, "n_b d_b"]
) -> Float[Tensor, "n_a n_b"]:
    """Cosine of every ``a`` decoder row with every ``b`` decoder row (0 for zero rows), in
    float64 on the CPU. The widths ``d_a`` and ``d_b`` must agree (an ``RlinterpError`` if not:
    the annotation names them apart so that the error, not the type check, reports it)."""
    if decoder_a.ndim != 2 or decoder_b.ndim != 2:
        raise RlinterpError(
            f"decoders must be [latents, d_model] matrices, got shapes {tuple(decoder_a.shape)} "
            f"and {tuple(decoder_b.shape)}"
        )
    if decoder_a.shape[1] != decoder_b.shape[1]:
        raise RlinterpError(
            f"cannot match dictionaries of different widths: d_model {decoder_a.shape[1]} vs "
            f"{decoder_b.shape[1]}; were they trained on the same model and hook?"
        )
    return _unit(decoder_a) @ _unit(decoder_b).T


def match_dictionaries(
    decoder_a: Float[Tensor, "n_a d_a"],
    decoder_b: Float[Tensor, "n_b d_b"],
    floor: float = MATCH_FLOOR,
    alive_a: Bool[Tensor, " n_a"] | None = None,
    alive_b: Bool[Tensor, " n_b"] | None = None,
) -> DictionaryMatch:
    """Match two dictionaries' latents by decoder direction (see the module docstring).
    Decoders are given as rows, one per latent (SAELens' ``W_dec``; for a crosscoder, one
    model's slice ``W_dec[:, m]``); ``alive_a`` / ``alive_b`` mark the latents that fire."""
    if not -1.0 <= floor <= 1.0:
        raise RlinterpError(f"floor is a cosine and must lie in [-1, 1], got {floor}")
    cos = decoder_cosines(decoder_a, decoder_b)
    n_a, n_b = cos.shape
    if n_a == 0 or n_b == 0:
        raise RlinterpError(f"cannot match an empty dictionary ({n_a} and {n_b} latents)")
    live_a, live_b = (
        np.ones(n, dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
        for n, mask in ((n_a, alive_a), (n_b, alive_b))
    )
    # Inactive latents get a cosine below any real one: never paired, linked or nearest.
    cos[~torch.from_numpy(live_a)] = DEAD_COSINE
    cos[:, ~torch.from_numpy(live_b)] = DEAD_COSINE
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    values = cos.numpy()[rows, cols]
    keep = values >= floor
    pairs = pd.DataFrame({"a": rows[keep], "b": cols[keep], "cosine": values[keep]})
    pairs = pairs.sort_values("a", ignore_index=True).astype({"a": "int64", "b": "int64"})
    a_unit, b_unit = (_unit(d) for d in (decoder_a, decoder_b))
    split = [("split", x, y) for x, members in _explained(cos, a_unit, b_unit) for y in members]
    merged = [("merged", x, y) for y, members in _explained(cos.T, b_unit, a_unit) for x in members]
    records = [(kind, a, b, float(cos[a, b])) for kind, a, b in split + merged]
    links = pd.DataFrame(records, columns=["kind", "a", "b", "cosine"]).astype({"a": "int64", "b": "int64"})
    nearest = pd.concat(
        [
            pd.DataFrame(
                {"side": side, "latent": np.arange(len(c)), "nearest": c.argmax(1), "cosine": c.max(1)}
            )[live]
            for side, c, live in (("a", cos.numpy(), live_a), ("b", cos.numpy().T, live_b))
        ],
        ignore_index=True,
    )
    return DictionaryMatch(pairs, links, nearest, n_a, n_b, floor, live_a, live_b)


def _unit(decoder: Tensor) -> Tensor:
    return torch.nn.functional.normalize(decoder.detach().double().cpu(), dim=1)


def _explained(cos: Tensor, own_unit: Tensor, other_unit: Tensor) -> list[tuple[int, list[int]]]:
    """The row latents of ``cos`` (``[n_own, n_other]``) that several column latents explain
    together, per the link criterion of the module docstring, with those column latents."""
    out = []
    for x in torch.nonzero((cos >= LINK_COSINE).sum(1) >= 2)[:, 0].tolist():
        members = torch.nonzero(cos[x] >= LINK_COSINE)[:, 0]
        while len(members) >= 2:
            basis = other_unit[members]  # [members, d_model]
            weights = torch.from_numpy(nnls(basis.T.numpy(), own_unit[x].numpy())[0])
            share = weights * cos[x, members] / float(weights @ cos[x, members])
            keep = share >= LINK_MIN_SHARE
            if bool(keep.all()):
                break
            members = members[keep]
        if len(members) < 2:
            continue
        fit_cos = float(torch.nn.functional.cosine_similarity(weights @ basis, own_unit[x], dim=0))
        if fit_cos >= LINK_FIT and fit_cos - float(cos[x, members].max()) >= LINK_GAIN:
            out.append((x, members.tolist()))
    return out
