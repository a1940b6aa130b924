"""What the base computes: the per-block read-out behind the selection-versus-novelty index.

**Definition.** RL changed block ``L`` of a checkpoint where, on the checkpoint's own input,
the block computes something else than the base's block does. For each sublayer ``s`` of the
block (attention, MLP) and each token, with ``h`` the checkpoint's input to that sublayer:

    local change   Delta_s = C_s(h) - B_s(h)

(``C_s`` / ``B_s``: the checkpoint's / the base's sublayer). One patched forward pass of the
base gives ``B_s(h)`` for every block at once: each block's residual input (and the MLP's) is
replaced by the checkpoint's. Holding the input fixed isolates each block: what the base's
later blocks do with a changed input is the base's own computation, so an amplification in
block 0 does not reappear as a change of block 1.

The change is **selection** when it is a re-weighting of what the base computes there: a
linear read-out of the base sublayer's own computation on the same input (its head outputs
``z`` before the output projection, or its MLP neurons, and the normalised input itself)
predicts it. Amplifying a neuron or a head, moving a neuron's write elsewhere, pushing a
direction the base represents up on some tokens and down on others (the mean shift cancels;
the weights may depend on the context as long as the base reads the context) are all exact
linear read-outs of that computation. The read-out is ridge regression (standardised
features, intercept, penalty chosen on a held-out fold) fitted on some texts and scored on the
others (``n_folds`` folds of texts): the **held-out residual energy** ``R_base``.

A block's neurons are many non-linear features of its input, so they predict part of any
function of that input, new or not. The **seed control** measures that part: the same
read-out from the base sublayer fed a seeded random rotation of its input (the same weights,
hence the same spectrum, biases and width, reading unrelated directions): ``R_control``. A
component's **novelty** is

    novelty = R_base / R_control   (summed over tokens and texts),

clipped to [0, 1]: 0 when the base's own computation predicts the change (selection), about
1 when it predicts it no better than an unrelated computation of the same size (novelty).
Where the control leaves less than ``min_control`` of the change unexplained (the change is
a near-linear function of the block's input, which the base represents), the denominator is
held at that floor (``IndexConfig.min_control``), so a change every computation predicts
reads selection rather than 0/0.

**Measured** (tiny random-init GPT-2 / Llama / Qwen2, ``tests/selection``; the organism,
``benchmarks/selection_readings.py``): a function of two random projections planted in any
block leaves 10-30% unexplained by the base and by the control alike (novelty ~1), the
organism's planted ``novel`` neurons about 40% of both, while amplified neurons and heads and
context-dependent re-weightings leave under 1% to the base against 5-25% to the control. On
the ``tiny`` organism (seeds 0-4, ``benchmarks/selection_organism.py``) the RL-trained
regimes read 0.10-0.43 in the attention and 0.00-0.05 in the MLPs, the planted ``novel``
regime 0.98-1.00 in block 0's MLP.

**Failure modes** (what this reading cannot tell):

- a new computation that lies in the span of the base's features *on the data* reads
  selection: on a character-level model whose width exceeds its vocabulary, any function of
  the current token alone is linear in the embedding;
- unstructured changes of a block's input weights (noise, rounding) are new functions of the
  input and read novelty in proportion to their share of the block's change; the size of
  the change is reported (``local_rms``) so that a tiny one is seen as tiny;
- a neuron that reads as before and writes elsewhere reads selection (the base computes its
  activation); lineage names the moved direction (``tracking.lineage``);
- changes to the embeddings and the unembedding are no block's computation and are not
  read; ``local_share`` says how much of the change at each layer its block made;
- the seed control changes attention patterns with the rotation, so an attention change
  that only re-weights where the base attends reads as selection only as far as the base's
  head outputs carry it; a head that reads other directions of the tokens it attends to
  (a changed value map) is a new function of its input, as a neuron with new input weights
  is. Training moves both, so RL-trained attention reads part novelty (0.10-0.43 on the
  organism's RL regimes, the source of their whole index there);
- each component reads on its own, so a component whose change is tiny reads as novel as its
  change is new, whatever its size: ``local_rms`` and ``local_share`` say how large it is.

Each component (attention, MLP) is read on its own: a block that re-weights in its attention
and computes something new in its MLP would otherwise read in between (measured: a planted
new computation in an MLP read undecided beside an amplified head of the same block, with
both components' residuals summed). Outputs are per-text sums (``BlockParts``, one per
component) so that ``selection.index`` can resample texts, fold partitions (read-out fit)
and control seeds together for its interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ..activations.harvest import ActivationStore
from ..errors import RlinterpError
from ..models.series import ModelSeries
from .config import ReadoutConfig as ReadoutConfig
from .personas import prompt_index
from .ridge import heldout_residuals

SUBLAYERS = {
    "attn": ("attn.hook_z", "ln1.hook_out", "hook_attn_out"),
    "mlp": ("mlp.hook_post", "ln2.hook_out", "hook_mlp_out"),
}
"""Per sublayer: the hook of its computation (head outputs / neurons), of its normalised
input, and of its output, under ``blocks.<layer>.``."""
PATCHED = ("hook_resid_pre", "hook_resid_mid")
"""The block inputs replaced by the checkpoint's in the patched base pass."""


@dataclass(frozen=True)
class BlockParts:
    """Per-text sums of one checkpoint's reading of one component (attention or MLP) of one
    block (rows: texts)."""

    label: str
    step: int
    layer: int
    component: str
    """``attn`` or ``mlp`` (``SUBLAYERS``)."""
    change_sq: Float[Tensor, " prompt"]
    """Sum over the text's tokens of ``||y - x||^2`` at the block's output (the whole change
    there, made here or upstream)."""
    local_sq: Float[Tensor, " prompt"]
    """Sum of the component's local change's squared norm."""
    base_residual: Float[Tensor, "repeat prompt"]
    """Held-out residual energy of the base read-out, per fold partition."""
    control_residual: Float[Tensor, "control repeat prompt"]
    """The same for each seed of the control."""
    n_tokens: Float[Tensor, " prompt"]


@dataclass
class _Sample:
    """One sublayer's rows of one checkpoint: the local change and the features."""

    target: list[Tensor]
    base: list[Tensor]
    controls: list[list[Tensor]]


def rotation(d: int, seed: int) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal ``[d, d]`` matrix, deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def readout_parts(
    series: ModelSeries, store: ActivationStore, cfg: ReadoutConfig | None = None
) -> list[BlockParts]:
    """The read-out of every checkpoint of ``series`` (the base included: zero change) at
    every block of ``cfg.layers``, on the tokens of ``store`` (see the module docstring)."""
    cfg = cfg or ReadoutConfig()
    base = series.load(series.base)
    layers = list(range(base.cfg.n_layers)) if cfg.layers is None else sorted(set(cfg.layers))
    if not layers or any(not 0 <= layer < base.cfg.n_layers for layer in layers):
        raise RlinterpError(f"layers must name blocks 0..{base.cfg.n_layers - 1}, got {cfg.layers}")
    prompts = prompt_index(store)
    n_prompts = int(store.manifest["n_prompts"])
    chosen = _token_sample(len(prompts), cfg)
    rows = prompts[chosen]
    folds = _fold_partitions(n_prompts, cfg)
    d = base.cfg.d_model
    rotations = {
        (i, layer, s): rotation(d, _seed(cfg.seed, i, layer, s))
        for i in range(cfg.n_controls)
        for layer in layers
        for s in range(len(SUBLAYERS))
    }
    parts = [_unchanged(series.base, layer, c, rows, n_prompts, cfg) for layer in layers for c in SUBLAYERS]
    for checkpoint in series.checkpoints[1:]:
        samples, change = _collect(series, store, checkpoint.label, layers, rotations, chosen, cfg)
        for layer in layers:
            for component in SUBLAYERS:
                sample = samples[(layer, component)]
                parts.append(
                    _component_parts(
                        checkpoint, layer, component, sample, change[layer], rows, folds, n_prompts, cfg
                    )
                )
    return parts


def _unchanged(
    checkpoint: Any, layer: int, component: str, rows: Tensor, n_prompts: int, cfg: ReadoutConfig
) -> BlockParts:
    """The base against itself: no change anywhere (not computed)."""
    zeros = torch.zeros(n_prompts, dtype=torch.float64)
    return BlockParts(
        label=checkpoint.label,
        step=int(checkpoint.step),
        layer=layer,
        component=component,
        change_sq=zeros,
        local_sq=zeros,
        base_residual=torch.zeros(cfg.n_repeats, n_prompts, dtype=torch.float64),
        control_residual=torch.zeros(cfg.n_controls, cfg.n_repeats, n_prompts, dtype=torch.float64),
        n_tokens=torch.zeros(n_prompts, dtype=torch.float64).index_add_(
            0, rows, torch.ones(len(rows), dtype=torch.float64)
        ),
    )


def _seed(seed: int, control: int, layer: int, sublayer: int) -> int:
    return 1_000_003 * (seed + 1) + 1_009 * control + 17 * layer + sublayer


def _token_sample(n: int, cfg: ReadoutConfig) -> Tensor:
    """Store rows read: all, or a seeded sorted sample of ``max_tokens``."""
    if cfg.max_tokens is None or n <= cfg.max_tokens:
        return torch.arange(n)
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randperm(n, generator=g)[: cfg.max_tokens].sort().values


def _fold_partitions(n_prompts: int, cfg: ReadoutConfig) -> Int[Tensor, "repeat prompt"]:
    """Per repeat, each text's fold (seeded, balanced)."""
    rng = np.random.default_rng(cfg.seed)
    return torch.from_numpy(
        np.stack([rng.permutation(n_prompts) % cfg.n_folds for _ in range(cfg.n_repeats)])
    )


def _hook(layer: int, name: str) -> str:
    return f"blocks.{layer}.{name}"


@torch.no_grad()
def _collect(
    series: ModelSeries,
    store: ActivationStore,
    label: str,
    layers: list[int],
    rotations: dict[tuple[int, int, int], Tensor],
    chosen: Tensor,
    cfg: ReadoutConfig,
) -> tuple[dict[tuple[int, str], _Sample], dict[int, list[Tensor]]]:
    """Stream the store's token batches through the checkpoint, the patched base and the
    rotated (control) patched base: the local change and the features per sublayer, and
    the whole change's squared norm per token at each block's output."""
    base = series.load(series.base)
    model = series.load(next(c for c in series if c.label == label))
    device = base.cfg.device
    wanted = torch.zeros(int(chosen.max()) + 1 if len(chosen) else 0, dtype=torch.bool)
    wanted[chosen] = True
    samples = {
        (layer, s): _Sample([], [], [[] for _ in range(cfg.n_controls)])
        for layer in layers
        for s in SUBLAYERS
    }
    change: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    own_names = [
        _hook(layer, h)
        for layer in layers
        for h in (*PATCHED, "hook_attn_out", "hook_mlp_out", "hook_resid_post")
    ]
    base_names = [_hook(layer, h) for layer in layers for hooks in SUBLAYERS.values() for h in hooks]
    stop = max(layers) + 1
    offset = 0
    for batch in store.token_batches():
        keep = batch.keep.to(device)
        n_kept = int(batch.keep.sum())
        take = wanted[offset : offset + n_kept]
        offset += n_kept
        if not take.any():
            continue
        tokens = batch.tokens.to(device)
        _, own = model.run_with_cache(tokens, names_filter=own_names, stop_at_layer=_stop(model, stop))
        _, plain = base.run_with_cache(
            tokens,
            names_filter=[_hook(layer, "hook_resid_post") for layer in layers],
            stop_at_layer=_stop(base, stop),
        )
        patch = [
            (name, _replace(own[name])) for layer in layers for name in (_hook(layer, h) for h in PATCHED)
        ]
        patched = _run(base, tokens, patch, base_names, stop)
        controls = []
        for i in range(cfg.n_controls):
            rotate = [
                (_hook(layer, SUBLAYERS[s][1]), _rotate(rotations[(i, layer, j)].to(device)))
                for layer in layers
                for j, s in enumerate(SUBLAYERS)
            ]
            controls.append(_run(base, tokens, patch + rotate, base_names, stop))

        def rows(cache: Any, name: str, keep: Tensor = keep, take: Tensor = take) -> Tensor:
            values = cache[name][keep]
            return values.reshape(len(values), -1)[take].float().cpu()

        for layer in layers:
            for s, (feature, normalised, output) in SUBLAYERS.items():
                sample = samples[(layer, s)]
                out = _hook(layer, output)
                sample.target.append(rows(own, out) - rows(patched, out))
                inputs = rows(patched, _hook(layer, normalised))
                sample.base.append(torch.cat([rows(patched, _hook(layer, feature)), inputs], 1))
                for i, cache in enumerate(controls):
                    sample.controls[i].append(torch.cat([rows(cache, _hook(layer, feature)), inputs], 1))
            post = _hook(layer, "hook_resid_post")
            change[layer].append((rows(own, post) - rows(plain, post)).pow(2).sum(-1))
    return samples, change


def _stop(model: TransformerBridge, stop: int) -> int | None:
    return stop if stop < model.cfg.n_layers else None


def _replace(value: Tensor) -> Any:
    return lambda _act, hook: value  # noqa: ARG005 - TransformerLens passes the hook


def _rotate(matrix: Tensor) -> Any:
    return lambda act, hook: act @ matrix  # noqa: ARG005


def _run(
    model: TransformerBridge, tokens: Tensor, hooks: list[tuple[str, Any]], names: list[str], stop: int
) -> Any:
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=_stop(model, stop))
    return cache


def _component_parts(
    checkpoint: Any,
    layer: int,
    component: str,
    sample: _Sample,
    change: list[Tensor],
    rows: Tensor,
    folds: Tensor,
    n_prompts: int,
    cfg: ReadoutConfig,
) -> BlockParts:
    def per_prompt(values: Tensor) -> Tensor:
        return torch.zeros(n_prompts, dtype=torch.float64).index_add_(0, rows, values)

    target = torch.cat(sample.target)
    energy = target.double().pow(2).sum(-1)
    base_res = torch.zeros(cfg.n_repeats, n_prompts, dtype=torch.float64)
    control_res = torch.zeros(cfg.n_controls, cfg.n_repeats, n_prompts, dtype=torch.float64)
    if float(energy.sum()) > 0:  # else nothing changed here: nothing to read
        fold = folds[:, rows]
        base_res = torch.stack(
            [per_prompt(r) for r in heldout_residuals(torch.cat(sample.base), target, fold, cfg.ridge)]
        )
        for i, features in enumerate(sample.controls):
            residuals = heldout_residuals(torch.cat(features), target, fold, cfg.ridge)
            control_res[i] = torch.stack([per_prompt(r) for r in residuals])
    return BlockParts(
        label=checkpoint.label,
        step=int(checkpoint.step),
        layer=layer,
        component=component,
        change_sq=per_prompt(torch.cat(change).double()),
        local_sq=per_prompt(energy),
        base_residual=base_res,
        control_residual=control_res,
        n_tokens=per_prompt(torch.ones(len(rows), dtype=torch.float64)),
    )
