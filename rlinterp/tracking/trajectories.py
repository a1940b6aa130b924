"""Feature trajectories: one dictionary applied to every checkpoint of a series, on each
token source, latent by latent.

A *token source* says which tokens a checkpoint is measured on: fixed prompts, fixed
texts (prompt + a given answer) or the checkpoint's own on-policy samples. It maps each
checkpoint label to an activation store holding that checkpoint *and the base* on the
same tokens (one store for a fixed source; one per checkpoint on-policy).

Per (source, step, latent), over the kept tokens of the source at that step
(``TRAJECTORY_COLUMNS``):

- ``frequency``: fraction of tokens where the latent fires (activation > 0);
- ``mean_activation``: mean activation over the tokens where it fires (0 if it never does);
- ``mass``: mean activation over all tokens (= frequency x mean_activation);
- ``logit_norm``: L2 norm of the latent's decoder direction read through that
  checkpoint's unembedding (``unembedding``: final-norm scale folded into W_U);
- ``logit_contribution``: mass x logit_norm, the latent's average direct effect on logits.

Beside it: ``FIT_COLUMNS`` (explained variance and L0 of the dictionary on each source and
step), ``TOKEN_COLUMNS`` (the tokens each latent's decoder promotes and suppresses most
through each checkpoint's unembedding) and ``CONTEXT_COLUMNS`` (each latent's top
activating contexts at the steps asked for).

Invariants: memory is bounded by one shard (statistics and top contexts are streamed);
a checkpoint compared with itself gives identical rows; the dictionary is never trained
here. The decoder used is the *effective* one, ``decode(e_j) - decode(0)``, so an SAE that
rescales activations by decoder norm and one that does not are read alike; a crosscoder
(over two models) reads ``[base, checkpoint]`` and decodes into the checkpoint's slot.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ..activations.harvest import ActivationStore
from ..dictionaries.crosscoder import Crosscoder
from ..dictionaries.sae import TrainedSAE
from ..dictionaries.train import top_activations
from ..diff.outputs import logit_tokens
from ..errors import RlinterpError
from ..models.series import ModelSeries
from .lineage import TRAJECTORY_COLUMNS as LINEAGE_INPUT

TRAJECTORY_COLUMNS = list(LINEAGE_INPUT)
"""The trajectory table's columns, in order: what ``lineage.lineage_table`` reads."""
FIT_COLUMNS = ["source", "label", "step", "n_tokens", "explained_variance", "l0"]
TOKEN_COLUMNS = ["label", "step", "latent", "direction", "rank", "token_id", "token", "logit"]
CONTEXT_COLUMNS = ["source", "label", "step", "latent", "rank", "activation", "context", "token"]
TOP_TOKENS = 5
"""Promoted and suppressed tokens kept per latent and checkpoint."""
TOP_CONTEXTS = 5
"""Top activating contexts kept per latent, source and step."""
CONTEXT_TOKENS = 12
"""Tokens of context shown before each top activation."""


@dataclass(frozen=True)
class TrackedDictionary:
    """A finished base SAE or two-model crosscoder, as tracking uses it."""

    path: Path
    method: Literal["sae", "crosscoder"]
    hook: str
    d_in: int
    d_sae: int
    manifest: dict[str, Any]
    sae: SAE[Any] | None = None
    crosscoder: Crosscoder | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrackedDictionary:
        path = Path(path)
        manifest_path = path / "rlinterp.json"
        if not manifest_path.is_file():
            raise RlinterpError(f"{path} is not a finished rlinterp dictionary (no rlinterp.json)")
        manifest = json.loads(manifest_path.read_text())
        method, hook = manifest.get("method", manifest.get("kind")), manifest["hook"]
        if method == "crosscoder":
            crosscoder = Crosscoder.load(path)
            if crosscoder.cfg.n_models != 2:
                raise RlinterpError(
                    f"{path} is a crosscoder over {crosscoder.cfg.n_models} models; tracking reads "
                    "[base, checkpoint] pairs, so give a crosscoder over two models"
                )
            cfg = crosscoder.cfg
            return cls(path, "crosscoder", hook, cfg.d_in, cfg.d_sae, manifest, crosscoder=crosscoder)
        if method != "sae":
            raise RlinterpError(
                f"{path} is a {method}; tracking applies an SAE trained on one model's activations "
                "(method sae) or a crosscoder"
            )
        sae = TrainedSAE.load(path).sae
        return cls(path, "sae", hook, sae.cfg.d_in, sae.cfg.d_sae, manifest, sae=sae)

    @torch.no_grad()
    def encode(
        self, base: Float[Tensor, "token d"] | None, acts: Float[Tensor, "token d"]
    ) -> Float[Tensor, "token d_sae"]:
        """Latents of a checkpoint's activations ``acts`` (``base``: the base model's on the
        same tokens, read by a crosscoder only)."""
        if self.crosscoder is not None:
            if base is None:
                raise ValueError("a crosscoder needs the base activations too")
            return self.crosscoder.encode(torch.stack([base, acts], dim=1))
        assert self.sae is not None
        return self.sae.encode(acts)

    @torch.no_grad()
    def decode(self, latents: Float[Tensor, "token d_sae"]) -> Float[Tensor, "token d"]:
        """Reconstruction of the checkpoint's activations (the crosscoder's second slot)."""
        if self.crosscoder is not None:
            return self.crosscoder.decode(latents)[:, 1]
        assert self.sae is not None
        return self.sae.decode(latents)

    @torch.no_grad()
    def decoder(self) -> Float[Tensor, "d_sae d"]:
        """The effective decoder: row j is what one unit of latent j adds to the output."""
        eye = torch.eye(self.d_sae)
        return self.decode(eye) - self.decode(torch.zeros(1, self.d_sae))


@dataclass(frozen=True)
class TokenSource:
    """Named tokens and, per checkpoint label, the store holding it and the base on them."""

    name: str
    stores: dict[str, ActivationStore]

    @classmethod
    def fixed(cls, name: str, store: ActivationStore) -> TokenSource:
        """A source whose tokens are the same for every checkpoint (one store of the series)."""
        return cls(name, {label: store for label in store.labels})

    def base_label(self, label: str) -> str:
        """The label of the base model inside ``label``'s store (its first model)."""
        return self.stores[label].labels[0]


@dataclass(frozen=True)
class Trajectories:
    """The tables of one tracking pass (see the module docstring for their columns)."""

    table: pd.DataFrame
    fit: pd.DataFrame
    tokens: pd.DataFrame
    contexts: pd.DataFrame


def unembedding(model: TransformerBridge) -> Float[Tensor, "d_model d_vocab"]:
    """``W_U`` with the final norm's scale folded in (and, for LayerNorm, the centering):
    a residual direction ``d`` writes ``d @ unembedding(model)`` into the logits, up to the
    norm's division by the token's scale, as in direct logit attribution."""
    W_U = model.W_U.detach().float().cpu()
    norm = getattr(model, "ln_final", None)
    weight = None if norm is None else getattr(norm, "weight", None)
    if weight is None and norm is not None:
        weight = dict(norm.named_parameters()).get("_original_component.weight")
    if weight is not None:
        W_U = weight.detach().float().cpu()[:, None] * W_U
    if str(getattr(model.cfg, "normalization_type", "")).startswith("LN"):
        W_U = W_U - W_U.mean(0, keepdim=True)  # LayerNorm removes a direction's mean first
    return W_U


def compute_trajectories(
    dictionary: TrackedDictionary,
    sources: list[TokenSource],
    series: ModelSeries,
    context_steps: tuple[int, ...] | None = None,
) -> Trajectories:
    """Apply ``dictionary`` to every checkpoint of ``series`` on every source. Top contexts
    are kept at ``context_steps`` (default: the first and last step)."""
    steps = [c.step for c in series]
    wanted = set(context_steps if context_steps is not None else (steps[0], steps[-1]))
    tokenizer = series.tokenizer()
    decoder = dictionary.decoder()
    rows, fits, tokens, contexts = [], [], [], []
    for checkpoint in series:
        logits = decoder @ unembedding(series.load(checkpoint))
        # every token, special ones too: ``logit_norm`` counts the whole readout
        found = logit_tokens(logits, tokenizer, TOP_TOKENS, skip_special=False)
        tokens.append(found.assign(label=checkpoint.label, step=checkpoint.step))
        logit_norm = logits.norm(dim=-1)
        for source in sources:
            if checkpoint.label not in source.stores:
                raise RlinterpError(f"token source {source.name!r} has no store for {checkpoint.label}")
            store = source.stores[checkpoint.label]
            meta = {"source": source.name, "label": checkpoint.label, "step": checkpoint.step}
            stats, top = _statistics(
                dictionary,
                store,
                source.base_label(checkpoint.label),
                checkpoint.label,
                checkpoint.step in wanted,
            )
            frame = pd.DataFrame({"latent": range(dictionary.d_sae), **stats.per_latent()})
            frame["logit_norm"] = logit_norm.numpy()
            frame["logit_contribution"] = frame["mass"] * frame["logit_norm"]
            rows.append(frame.assign(**meta))
            fits.append({**meta, **stats.fit()})
            if top is not None and len(top):
                context = store.token_contexts(top["row"].tolist(), tokenizer, CONTEXT_TOKENS)
                contexts.append(
                    pd.concat([top.drop(columns="row"), context[["context", "token"]]], axis=1).assign(**meta)
                )
    return Trajectories(
        table=pd.concat(rows, ignore_index=True)[TRAJECTORY_COLUMNS],
        fit=pd.DataFrame(fits, columns=FIT_COLUMNS),
        tokens=pd.concat(tokens, ignore_index=True)[TOKEN_COLUMNS],
        contexts=(
            pd.concat(contexts, ignore_index=True) if contexts else pd.DataFrame(columns=CONTEXT_COLUMNS)
        )[CONTEXT_COLUMNS],
    )


class _Statistics:
    """Running sums over streamed shards (float64, so long streams do not drift)."""

    def __init__(self, d_sae: int, d_in: int):
        self.n = 0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.sums = torch.zeros(d_in, dtype=torch.float64)
        self.total_sq = 0.0
        self.err_sq = 0.0

    def update(self, x: Tensor, latents: Tensor, recon: Tensor) -> None:
        x64 = x.double()
        self.n += len(x)
        self.fired += (latents > 0).sum(0).double()
        self.total += latents.double().sum(0)
        self.sums += x64.sum(0)
        self.total_sq += (x64**2).sum().item()
        self.err_sq += ((x64 - recon.double()) ** 2).sum().item()

    def per_latent(self) -> dict[str, Any]:
        n = max(self.n, 1)
        mean_on = torch.where(
            self.fired > 0, self.total / self.fired.clamp(min=1), torch.zeros_like(self.total)
        )
        return {
            "frequency": (self.fired / n).numpy(),
            "mean_activation": mean_on.numpy(),
            "mass": (self.total / n).numpy(),
        }

    def fit(self) -> dict[str, float | int]:
        variance = self.total_sq - (self.sums**2).sum().item() / max(self.n, 1)
        return {
            "n_tokens": self.n,
            "explained_variance": 1 - self.err_sq / variance if variance > 0 else float("nan"),
            "l0": self.fired.sum().item() / max(self.n, 1),
        }


def _statistics(
    dictionary: TrackedDictionary, store: ActivationStore, base_label: str, label: str, keep_top: bool
) -> tuple[_Statistics, pd.DataFrame | None]:
    """One streamed pass over ``label``'s shards: statistics, and top activations if asked."""
    stats = _Statistics(dictionary.d_sae, dictionary.d_in)

    def encoded() -> Iterator[Tensor]:
        acts = store.shards(label, dictionary.hook)
        bases = store.shards(base_label, dictionary.hook) if dictionary.crosscoder is not None else None
        for x in acts:
            base = next(bases) if bases is not None else None
            latents = dictionary.encode(base, x)
            stats.update(x, latents, dictionary.decode(latents))
            yield latents

    if keep_top:
        return stats, top_activations(encoded(), TOP_CONTEXTS)
    deque(encoded(), maxlen=0)
    return stats, None
