"""Feature cards: what one dictionary latent is, on the base model and after RL.

A card shows, for one latent (after SAE dashboards such as SAEDashboard):

- its trajectory: mean activation and firing rate at every RL step of every series;
- its top-activating contexts on the base model and on an RL checkpoint, side by side,
  each token shaded by the latent's activation there;
- the tokens its decoder direction promotes and suppresses through the unembedding;
- its lineage across checkpoints, once the tracking stage provides one.

The cards are ours, not SAEDashboard's: ``sae-dashboard`` 0.8 resolves only with
transformer-lens 2.x, transformers 4.x and numpy 1.x, which conflict with our pins
(transformer-lens 3.9, transformers 5, sae-lens 6.54), and it renders through its own
templates where ours must share the report's single plotly.js and escaping.

The tables behind the cards are computed here (``top_contexts``) and by
``diff.outputs.logit_tokens`` (the decoder read through the unembedding), written by the
``dictionaries`` stage; ``FeatureCard`` renders one latent from them with the report kit.
All model text is escaped (``core.report.esc``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from sae_lens import SAE
from transformers import PreTrainedTokenizerBase

from ..activations.harvest import ActivationStore
from ..core.report import empty, esc, fmt, fragment, highlighted, sparkline, table
from .train import top_activations

BEFORE, AFTER = 16, 4
"""Tokens shown before and after a context's peak token."""


@torch.no_grad()
def top_contexts(
    sae: SAE[Any],
    store: ActivationStore,
    label: str,
    hook: str,
    tokenizer: PreTrainedTokenizerBase,
    top_k: int = 8,
) -> pd.DataFrame:
    """The ``top_k`` tokens of ``label`` that activate each latent most (distinct windows
    only: a repeated text shows once), each with a window
    of ``BEFORE`` tokens before and ``AFTER`` after: ``latent, rank, activation, prompt,
    position, tokens`` (list of decoded tokens), ``values`` (the latent's activation on each,
    0 where the store kept no activation) and ``peak`` (index of the top token in the window).
    Two passes over the shards; memory holds only the windows' (row, latent) values."""
    # Prompt sets repeat texts; ask for more tops than shown and keep distinct windows.
    tops = top_activations((sae.encode(x.to(sae.device)) for x in store.shards(label, hook)), k=4 * top_k)
    tokenized = store.tokens()
    where = tokenized.keep.nonzero()
    row_of = torch.full(tokenized.tokens.shape, -1, dtype=torch.long)
    row_of[tokenized.keep] = torch.arange(len(where))
    windows, wanted = [], defaultdict(set)
    for top in tops.itertuples():
        prompt, position = (int(v) for v in where[int(top.row)])
        lo = max(1, position - BEFORE)  # position 0 is BOS
        hi = min(int(tokenized.lengths[prompt]), position + AFTER + 1)
        rows = row_of[prompt, lo:hi].tolist()
        windows.append((top, prompt, position, lo, hi, rows))
        for row in rows:
            if row >= 0:
                wanted[row].add(int(top.latent))
    values = _values_at(sae, store, label, hook, wanted)
    records = []
    for top, prompt, position, lo, hi, rows in windows:
        ids = tokenized.tokens[prompt, lo:hi].tolist()
        records.append(
            {
                "latent": int(top.latent),
                "rank": int(top.rank),
                "activation": float(top.activation),
                "prompt": prompt,
                "position": position,
                "tokens": [tokenizer.decode([i]) for i in ids],
                "values": [values.get((row, int(top.latent)), 0.0) for row in rows],
                "peak": position - lo,
            }
        )
    columns = ["latent", "rank", "activation", "prompt", "position", "tokens", "values", "peak"]
    frame = pd.DataFrame(records, columns=columns)
    window = frame["tokens"].map(tuple)
    frame = frame[~pd.DataFrame({"latent": frame["latent"], "window": window}).duplicated()]
    frame = frame.groupby("latent", sort=False).head(top_k).copy()
    frame["rank"] = frame.groupby("latent", sort=False).cumcount()
    return frame.reset_index(drop=True)


def _values_at(
    sae: SAE[Any], store: ActivationStore, label: str, hook: str, wanted: dict[int, set[int]]
) -> dict[tuple[int, int], float]:
    """The activation of each wanted (store row, latent), shard by shard."""
    values: dict[tuple[int, int], float] = {}
    offset = 0
    for shard in store.shards(label, hook):
        rows = [r for r in range(offset, offset + len(shard)) if r in wanted]
        if rows:
            latents = sae.encode(shard[[r - offset for r in rows]].to(sae.device)).cpu()
            for i, row in enumerate(rows):
                for latent in wanted[row]:
                    values[(row, latent)] = float(latents[i, latent])
        offset += len(shard)
    return values


@dataclass(frozen=True)
class FeatureCard:
    """Everything shown for one latent (slices of the ``dictionaries`` stage's tables)."""

    latent: int
    activity: pd.DataFrame
    """``latent_steps`` rows of this latent: series, step, mean_activation, firing_rate."""
    contexts: pd.DataFrame
    """``contexts`` rows of this latent: series (``base`` or a series), label, windows."""
    decoder: pd.DataFrame
    """``decoder_tokens`` rows of this latent (``diff.outputs.logit_tokens`` of its decoder)."""
    lineage: pd.DataFrame | None = None
    """Rows of a tracking stage's lineage table for this latent, when there is one."""

    @property
    def anchor(self) -> str:
        return f"latent-{self.latent}"

    def to_html(self) -> str:
        trajectory = {
            f"{name} mean act.": (group["step"].tolist(), group["mean_activation"].tolist())
            for name, group in self.activity.sort_values("step").groupby("series", sort=False)
        }
        columns = []
        for (series, label), group in self.contexts.groupby(["series", "label"], sort=False):
            scale = float(group["activation"].max()) if len(group) else 0.0
            shown = "".join(
                highlighted(list(r.tokens), [float(v) for v in r.values], scale, int(r.peak))
                for r in group.sort_values("rank").itertuples()
            )
            columns.append(
                f"<div><h4>{esc(series)}: {esc(label)}</h4>{shown or empty('never fires here')}</div>"
            )
        return (
            f"<div class='card' id='{esc(self.anchor)}'><h3>Latent {self.latent}</h3>"
            f"<div class='side'><div><h4>Trajectory over RL steps</h4>{sparkline(trajectory)}</div>"
            f"<div><h4>Decoder through W_U</h4>{self._decoder_html()}</div></div>"
            f"<h4>Top-activating contexts</h4><div class='side'>{''.join(columns)}</div>"
            f"<h4>Lineage</h4>{self._lineage_html()}</div>"
        )

    def _decoder_html(self) -> str:
        parts = []
        for direction in ("promoted", "suppressed"):
            rows = self.decoder[self.decoder["direction"] == direction].sort_values("rank")
            tokens = " ".join(
                f"<code>{esc(repr(t))}</code> ({esc(fmt(v))})"
                for t, v in zip(rows["token"], rows["logit"], strict=True)
            )
            parts.append(f"<p><b>{direction}</b>: {tokens}</p>")
        return "".join(parts)

    def _lineage_html(self) -> str:
        if self.lineage is None or self.lineage.empty:
            return empty("No lineage yet: it appears once the tracking stage has run.")
        return table(self.lineage)

    def _repr_html_(self) -> str:
        return fragment([self.to_html()])
