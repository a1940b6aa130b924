"""Evaluating an SAE on any model of a series: reconstruction, sparsity, downstream
fidelity.

For activations ``x`` at the SAE's hook (streamed from the activation store):

- ``explained_variance`` = 1 - FVU, FVU = sum ||x - sae(x)||^2 / sum ||x - mean(x)||^2;
- ``l0``: mean number of active latents per token; ``dead_fraction``: latents that never
  fire on these tokens; ``dense_fraction``: latents firing on more than ``DENSE`` of them;
- downstream, with the model: the reconstruction is spliced into the forward pass at the
  kept positions, and ``ce_recovered`` = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean),
  ``kl_spliced`` = mean KL(clean || spliced) of the next-token distribution. The ablation
  is zeros for an SAE on activations, and the base model's activation for a diff-SAE (the
  splice is then base + sae(post - base)).

Evaluating a *base* SAE on every RL checkpoint gives the FVU drift curve: how much of each
RL model the base dictionary no longer explains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from sae_lens import SAE
from torch import Tensor

from ..activations.harvest import ActivationStore
from ..errors import RlinterpError
from ..models.series import ModelSeries

DENSE = 0.1
"""Firing rate above which a latent counts as dense."""


@dataclass(frozen=True)
class SAEEval:
    """One SAE evaluated on one model's activations."""

    label: str
    hook: str
    n_tokens: int
    explained_variance: float
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_ablated: float | None = None
    ce_recovered: float | None = None
    kl_spliced: float | None = None


@torch.no_grad()
def evaluate_sae(
    sae: SAE[Any],
    store: ActivationStore,
    label: str,
    hook: str,
    series: ModelSeries | None = None,
    base: str | None = None,
) -> SAEEval:
    """Evaluate ``sae`` on ``label``'s activations at ``hook``; with ``base``, as a diff-SAE
    on ``label - base``. With ``series``, also splice it into the model (CE, KL)."""
    width = next(store.shards(label, hook)).shape[1]
    if width != sae.cfg.d_in:
        raise RlinterpError(
            f"the SAE has d_in {sae.cfg.d_in} but {label} at {hook} has activations of width {width}"
        )
    n, total_sq, err_sq = 0, 0.0, 0.0
    sums = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    active = 0.0
    post_shards = store.shards(label, hook)
    base_shards = store.shards(base, hook) if base is not None else None
    for post in post_shards:
        x = post - next(base_shards) if base_shards is not None else post
        latents = sae.encode(x.to(sae.device))
        recon = sae.decode(latents).cpu().double()
        x64 = x.double()
        n += len(x)
        sums += x64.sum(0)
        total_sq += (x64**2).sum().item()
        err_sq += ((x64 - recon) ** 2).sum().item()
        on = (latents > 0).cpu()
        fired += on.sum(0).double()
        active += on.sum().item()
    variance = total_sq - (sums**2).sum().item() / n
    fvu = err_sq / variance if variance > 0 else float("nan")
    rate = fired / n
    result = SAEEval(
        label=label,
        hook=hook,
        n_tokens=n,
        explained_variance=1 - fvu,
        fvu=fvu,
        l0=active / n,
        dead_fraction=(rate == 0).double().mean().item(),
        dense_fraction=(rate > DENSE).double().mean().item(),
    )
    if series is None:
        return result
    return SAEEval(**{**asdict(result), **_downstream(sae, store, label, hook, series, base)})


def _downstream(
    sae: SAE[Any], store: ActivationStore, label: str, hook: str, series: ModelSeries, base: str | None
) -> dict[str, float]:
    checkpoint = next(c for c in series if c.label == label)
    # The forward the store was harvested with (``models.hooked``), so an exact SAE splices
    # back exactly what it read; the bridge for a hook that is no module's input or output.
    model: Any = series.hooked(checkpoint) if hook in series.hook_map().sites else series.load(checkpoint)
    ce = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}
    kl_sum, n_targets = 0.0, 0
    base_shards = store.shards(base, hook) if base is not None else None
    for batch, post in zip(store.token_batches(), store.shards(label, hook), strict=True):
        if len(post) != batch.rows.stop - batch.rows.start:
            raise RlinterpError(
                f"shard {batch.shard} of {label} at {hook} holds {len(post)} tokens, its prompts "
                f"{batch.rows.stop - batch.rows.start}; the store in {store.root} is damaged"
            )
        tokens, keep = batch.tokens.to(model.cfg.device), batch.keep.to(model.cfg.device)
        width = tokens.shape[1]
        floor = next(base_shards) if base_shards is not None else torch.zeros_like(post)
        x = post - floor if base_shards is not None else post
        spliced_values = (floor + sae.decode(sae.encode(x.to(sae.device))).cpu()).to(model.cfg.device)
        # a position predicts the next token; the last real position of a row has none
        lengths = batch.lengths.to(model.cfg.device)
        has_next = torch.arange(width, device=model.cfg.device).unsqueeze(0) < (lengths.unsqueeze(1) - 1)
        targets = tokens[:, 1:][(keep & has_next)[:, :-1]]
        logits = {}
        for name, values in (
            ("clean", None),
            ("spliced", spliced_values),
            ("ablated", floor.to(model.cfg.device)),
        ):
            hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = (
                [] if values is None else [(hook, _replace(keep, values))]
            )
            out = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits").float()
            logits[name] = out[:, :-1][(keep & has_next)[:, :-1]]
            ce[name] += F.cross_entropy(logits[name], targets, reduction="sum").item()
        clean, spliced = F.log_softmax(logits["clean"], -1), F.log_softmax(logits["spliced"], -1)
        kl_sum += (clean.exp() * (clean - spliced)).sum().item()
        n_targets += len(targets)
    mean = {name: total / max(n_targets, 1) for name, total in ce.items()}
    gap = mean["ablated"] - mean["clean"]
    return {
        "ce_clean": mean["clean"],
        "ce_spliced": mean["spliced"],
        "ce_ablated": mean["ablated"],
        "ce_recovered": (mean["ablated"] - mean["spliced"]) / gap if gap != 0 else float("nan"),
        "kl_spliced": kl_sum / max(n_targets, 1),
    }


def _replace(keep: Tensor, values: Tensor) -> Any:
    """A forward hook that writes ``values`` (kept positions, row-major) into the activation."""

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        del hook
        activation = activation.clone()
        activation[keep] = values.to(activation.dtype)
        return activation

    return hook_fn


def fvu_drift(
    sae: SAE[Any], store: ActivationStore, hook: str, series: ModelSeries | None = None
) -> pd.DataFrame:
    """A (base) SAE evaluated on every model of the store: one row per model, by step."""
    steps = {c["label"]: c["step"] for c in store.manifest["checkpoints"]}
    rows = [
        {"step": steps[label], **asdict(evaluate_sae(sae, store, label, hook, series))}
        for label in store.labels
    ]
    return pd.DataFrame(rows)
