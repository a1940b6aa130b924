"""Persona features: the directions and dictionary latents that tell personas apart.

Input is an activation store harvested on persona-labelled texts (the organism's
``personas/*.jsonl``, or a user's labelled JSONL through ``PromptSet.from_file``) and the
label of each text. Every text becomes one vector per hook, read at one of two places:

- ``"response"`` (``persona_directions``): the mean of its kept tokens (response tokens only
  when the store was harvested with ``response_only``): the persona *as it writes*;
- ``"decision"`` (``decision_directions``): the activation at its *decision position*, the
  last prompt token, whose next-token distribution opens the response: the persona *as it
  is chosen*. The texts' prompts must carry the persona (e.g. an earlier turn by it, as the
  organism's two-turn persona texts do), or nothing tells the personas apart there.

Texts are split once, stratified by persona and seeded, into a *fit* part and a *held-out*
part:

- a **persona direction** is the difference between the mean of one persona's fit texts
  and the mean of all other personas' fit texts, normalised to unit length;
- a **persona latent** is a dictionary latent ranked by how well its mean activation over
  a text separates one persona from the others.

Both are scored only on held-out texts, one persona against the rest: ``auroc`` (the
probability that a random held-out text of the persona scores above a random text of the
others; 0.5 is chance, 1 perfect separation) and ``effect_size`` (Cohen's d with the pooled
standard deviation). Nothing fitted ever sees a held-out text.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..activations.harvest import ActivationStore, TokenBatch
from ..errors import RlinterpError

MIN_TEXTS_PER_PERSONA = 6
"""Fewest texts a persona needs: enough for at least two held-out and four fit texts at the
default held-out fraction, below which an AUROC is noise."""


@dataclass(frozen=True)
class PersonaSplit:
    """Which texts fit the persona features and which score them."""

    labels: tuple[str, ...]
    """Persona of every text, in store order."""
    personas: tuple[str, ...]
    """The distinct personas, sorted."""
    held_out: Bool[Tensor, " text"]
    """True for texts kept out of every fit."""

    @classmethod
    def make(cls, labels: Sequence[str], held_out_fraction: float = 0.3, seed: int = 0) -> PersonaSplit:
        """A stratified split: ``held_out_fraction`` of each persona's texts (at least one,
        and at least one left to fit) is held out, chosen with ``seed``."""
        if not 0 < held_out_fraction < 1:
            raise RlinterpError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
        counts = Counter(labels)
        if len(counts) < 2:
            raise RlinterpError(
                f"persona features need texts of at least two personas; got {sorted(counts) or 'none'}"
            )
        few = {p: n for p, n in counts.items() if n < MIN_TEXTS_PER_PERSONA}
        if few:
            raise RlinterpError(
                f"too few texts for personas {few}; each persona needs at least {MIN_TEXTS_PER_PERSONA}"
            )
        generator = torch.Generator().manual_seed(seed)
        held_out = torch.zeros(len(labels), dtype=torch.bool)
        for persona in counts:
            members = torch.tensor([i for i, p in enumerate(labels) if p == persona])
            n_out = min(max(1, round(held_out_fraction * len(members))), len(members) - 1)
            held_out[members[torch.randperm(len(members), generator=generator)[:n_out]]] = True
        return cls(tuple(labels), tuple(sorted(counts)), held_out)

    def mask(self, persona: str) -> Bool[Tensor, " text"]:
        return torch.tensor([p == persona for p in self.labels])


def text_means(
    store: ActivationStore, label: str, hook: str, transform: Callable[[Tensor], Tensor] | None = None
) -> Float[Tensor, "text d"]:
    """The mean over each text's kept tokens of ``label``'s activations at ``hook`` (after
    ``transform``, e.g. a dictionary's encoder), streamed shard by shard. Texts with no kept
    token are an error (they cannot be scored)."""
    prompt_of_row = prompt_index(store)
    n_texts = int(store.manifest["n_prompts"])
    sums: Tensor | None = None
    offset = 0
    for shard in store.shards(label, hook):
        values = (transform(shard) if transform is not None else shard).double().cpu()
        if sums is None:
            sums = torch.zeros(n_texts, values.shape[1], dtype=torch.float64)
        sums.index_add_(0, prompt_of_row[offset : offset + len(values)], values)
        offset += len(values)
    counts = torch.bincount(prompt_of_row, minlength=n_texts)
    if sums is None or (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise RlinterpError(f"texts {empty[:5]} of {store.root} have no kept tokens to average")
    return (sums / counts.unsqueeze(1)).float()


def auroc(scores: Float[Tensor, " n"], positive: Bool[Tensor, " n"]) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` items (ties count a half):
    the Mann-Whitney U statistic over ``n_pos * n_neg``."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise RlinterpError("AUROC needs at least one positive and one negative item")
    order = scores.double()
    greater = (order[positive].unsqueeze(1) > order[~positive].unsqueeze(0)).double().sum()
    ties = (order[positive].unsqueeze(1) == order[~positive].unsqueeze(0)).double().sum()
    return float((greater + 0.5 * ties) / (n_pos * n_neg))


def effect_size(scores: Float[Tensor, " n"], positive: Bool[Tensor, " n"]) -> float:
    """Cohen's d of ``scores`` between positive and negative items (pooled std; 0 when both
    groups are constant and equal)."""
    a, b = scores[positive].double(), scores[~positive].double()
    spread = (len(a) - 1) * a.var().nan_to_num() + (len(b) - 1) * b.var().nan_to_num()
    pooled = (spread / max(len(a) + len(b) - 2, 1)).sqrt().item()
    gap = (a.mean() - b.mean()).item()
    if pooled > 0:
        return gap / pooled
    return math.copysign(math.inf, gap) if gap else 0.0


@dataclass(frozen=True)
class PersonaDirections:
    """Persona directions at every hook, with their held-out scores."""

    split: PersonaSplit
    directions: dict[str, Float[Tensor, "persona d"]]
    """Hook -> unit directions, one row per persona of ``split.personas``."""
    table: pd.DataFrame
    """One row per (hook, persona): ``hook, persona, auroc, effect_size, n_fit, n_held_out``
    (scores on held-out texts only)."""

    @property
    def best_hook(self) -> str:
        """The hook whose worst persona separates best (max over hooks of min AUROC)."""
        worst = self.table.groupby("hook")["auroc"].min()
        return str(worst.idxmax())

    def basis(self, hook: str) -> Float[Tensor, "d k"]:
        """An orthonormal basis of the span of ``hook``'s persona directions."""
        q, r = torch.linalg.qr(self.directions[hook].double().T)
        rank = int((r.diagonal().abs() > 1e-8 * r.diagonal().abs().max()).sum())
        return q[:, :rank].float()


def persona_directions(
    store: ActivationStore,
    labels: Sequence[str],
    model: str | None = None,
    hooks: Sequence[str] | None = None,
    held_out_fraction: float = 0.3,
    seed: int = 0,
) -> PersonaDirections:
    """Difference-of-class-means persona directions of ``model`` (default: the store's base)
    at ``hooks`` (default: all harvested), read over each text's kept tokens, fitted and
    scored as the module docstring says."""
    labels = _check_labels(store, labels)
    model = model or store.labels[0]
    means = {hook: text_means(store, model, hook) for hook in hooks or store.hooks}
    return _fit_directions(means, PersonaSplit.make(labels, held_out_fraction, seed))


@torch.no_grad()
def decision_directions(
    store: ActivationStore,
    labels: Sequence[str],
    model: Any,
    hooks: Sequence[str],
    held_out_fraction: float = 0.3,
    seed: int = 0,
) -> PersonaDirections:
    """Persona directions read at each text's decision position (the token before its first
    kept token) by running ``model`` (a hooked model, e.g. ``series.load(series.base)``) on
    ``store``'s tokens; fitted and scored like ``persona_directions``, on the same split."""
    labels = _check_labels(store, labels)
    means = decision_activations(store, model, hooks)
    return _fit_directions(means, PersonaSplit.make(labels, held_out_fraction, seed))


@torch.no_grad()
def decision_activations(
    store: ActivationStore, model: Any, hooks: Sequence[str]
) -> dict[str, Float[Tensor, "text d"]]:
    """``model``'s activation at every hook at each text's decision position (see
    ``decision_positions``), in text order."""
    rows: dict[str, list[Tensor]] = {hook: [] for hook in hooks}
    device = str(model.cfg.device)
    for batch, position in decision_batches(store):
        _, cache = model.run_with_cache(
            batch.tokens.to(device), names_filter=lambda name: name in rows, return_type=None
        )
        for hook in hooks:
            if hook not in cache:
                raise RlinterpError(f"the model has no hook {hook!r}")
            rows[hook].append(cache[hook][torch.arange(len(position)), position].float().cpu())
    return {hook: torch.cat(values) for hook, values in rows.items()}


def decision_batches(store: ActivationStore) -> Iterator[tuple[TokenBatch, Int[Tensor, " prompt"]]]:
    """Each token batch of ``store`` with its prompts' decision positions. The store must have
    been harvested with ``response_only`` (texts with a prompt/response split)."""
    if not store.manifest.get("response_only"):
        raise RlinterpError(
            f"decision positions need texts with a prompt/response split, harvested with "
            f"response_only; {store.root} was harvested on whole texts"
        )
    for batch in store.token_batches():
        yield batch, decision_positions(batch.keep, batch.prompts.start)


def decision_positions(keep: Bool[Tensor, "prompt pos"], first_prompt: int = 0) -> Int[Tensor, " prompt"]:
    """The position before each prompt's first kept token: where the response's first token
    is predicted. A prompt whose first kept token is its first token (no prompt part) or
    that has no kept token is an error naming it."""
    has_kept = keep.any(1)
    first = keep.int().argmax(1)
    bad = (~has_kept | (first == 0)).nonzero().flatten()
    if len(bad):
        raise RlinterpError(
            f"texts {[first_prompt + int(i) for i in bad[:5]]} have no prompt before their response "
            "(or no response); a decision position is the last prompt token"
        )
    return first - 1


def _fit_directions(means: dict[str, Float[Tensor, "text d"]], split: PersonaSplit) -> PersonaDirections:
    directions, rows = {}, []
    for hook, values in means.items():
        units = []
        for persona in split.personas:
            inside = split.mask(persona)
            fit_in, fit_out = inside & ~split.held_out, ~inside & ~split.held_out
            direction = values[fit_in].mean(0) - values[fit_out].mean(0)
            unit = direction / direction.norm().clamp_min(1e-12)
            units.append(unit)
            scores = values[split.held_out] @ unit
            truth = inside[split.held_out]
            rows.append(
                {
                    "hook": hook,
                    "persona": persona,
                    "auroc": auroc(scores, truth),
                    "effect_size": effect_size(scores, truth),
                    "n_fit": int(fit_in.sum()),
                    "n_held_out": int(truth.sum()),
                }
            )
        directions[hook] = torch.stack(units)
    return PersonaDirections(split, directions, pd.DataFrame(rows))


def persona_latents(
    store: ActivationStore,
    labels: Sequence[str],
    hook: str,
    encode: Callable[[Float[Tensor, "token d"]], Float[Tensor, "token d_sae"]],
    model: str | None = None,
    held_out_fraction: float = 0.3,
    seed: int = 0,
    top: int = 10,
) -> pd.DataFrame:
    """Dictionary latents that separate each persona from the others, best first.

    ``encode`` maps activations to latent activations (e.g. ``sae.encode``). A latent's
    score for a text is its mean activation over the text's kept tokens; latents are ranked
    per persona by held-out AUROC (one persona against the rest; the latent must be *more*
    active on the persona), ties broken by effect size. Returns the ``top`` latents per
    persona: ``persona, rank, latent, auroc, effect_size, mean_in, mean_out``; the split is
    the same as ``persona_directions``' for the same labels, fraction and seed.
    """
    labels = _check_labels(store, labels)
    split = PersonaSplit.make(labels, held_out_fraction, seed)
    with torch.no_grad():
        latents = text_means(store, model or store.labels[0], hook, encode)
    held = latents[split.held_out]
    rows = []
    for persona in split.personas:
        truth = split.mask(persona)[split.held_out]
        scores = [(auroc(held[:, j], truth), effect_size(held[:, j], truth), j) for j in range(held.shape[1])]
        scores.sort(key=lambda s: (-s[0], -s[1]))
        for rank, (area, size, j) in enumerate(scores[:top]):
            rows.append(
                {
                    "persona": persona,
                    "rank": rank,
                    "latent": j,
                    "auroc": area,
                    "effect_size": size,
                    "mean_in": float(held[truth, j].mean()),
                    "mean_out": float(held[~truth, j].mean()),
                }
            )
    return pd.DataFrame(rows)


def _check_labels(store: ActivationStore, labels: Sequence[str]) -> tuple[str, ...]:
    n_texts = int(store.manifest["n_prompts"])
    if len(labels) != n_texts:
        raise RlinterpError(f"got {len(labels)} persona labels for the {n_texts} texts of {store.root}")
    return tuple(str(label) for label in labels)


def prompt_index(store: ActivationStore) -> Int[Tensor, " row"]:
    """The text (prompt) each kept token of ``store`` belongs to, in store row order (the
    store's token-batch rule)."""
    return torch.cat([b.keep.nonzero()[:, 0] + b.prompts.start for b in store.token_batches()])
