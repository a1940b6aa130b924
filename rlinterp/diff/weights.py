"""What RL changed in the weights: base and RL checkpoints compared parameter by parameter.

Checkpoints are read straight from their safetensors files (``model.safetensors``, or a
sharded ``model.safetensors.index.json``; see ``models.weight_files``), never through
TransformerLens, so no loader folding or reshaping enters the difference. Plain state dicts
are accepted too. A PEFT LoRA adapter checkpoint (see ``adapters``) is compared as its base
with the adapter merged in float32; each weight it updates carries the update's rank r
(``adapter_rank``; the update ``delta`` has rank at most r, which its singular values show).
Half-precision weights are compared in float32 from their stored values.

For each parameter, with ``delta = post - base``:

- ``rel_frobenius`` = ||delta||_F / ||base||_F; 0 when delta is zero, ``inf`` when only the
  base is zero.
- ``frac_changed``: the fraction of entries with ``|delta| > eps / 2 * min(|base|, |post|)``,
  ``eps`` being the machine epsilon of the coarser stored dtype (0 for integer tensors).
  Rounding to nearest moves a value by at most that much, so re-saving a checkpoint in
  bf16 is not counted as change, while any change of one ulp or more is.
- For matrices only (``None`` otherwise): the singular values of ``delta``, its effective
  rank (exp of the entropy of the normalised singular values, Roy & Vetterli 2007; 0 for
  a zero update), and the largest principal angle between the top-k *left* singular
  subspaces of base and post. Left means the rows of the matrix as stored: the output
  space of an ``nn.Linear`` (Llama, Qwen2) but the input space of GPT-2's ``Conv1D``,
  which stores its weight as (in, out). k is ``top_k`` capped by both numerical ranks;
  once k reaches the row count the subspaces are the whole space and the angle is 0.

Invariants: a checkpoint compared with itself gives exactly zero on every metric; the two
sides must hold the same parameter names with the same shapes and only finite values,
otherwise ``diff_weights`` raises ``RlinterpError`` before computing anything (a non-finite
weight is named with its checkpoint). Work is done on CPU in float32 (float64 when a side
is float64); full SVDs make large matrices slow.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import RlinterpError
from ..models.adapters import LoraAdapter, is_adapter, merged_state_dict
from ..models.weight_files import load_state_dict

Component = Literal["attention", "mlp", "embedding", "norm", "unembedding", "other"]
Checkpoint = str | os.PathLike[str] | Mapping[str, Tensor]
FRAME_COLUMNS = (
    "parameter", "layer", "component", "shape", "numel", "rel_frobenius", "frac_changed",
    "effective_rank", "top_singular_value", "subspace_angle_deg",
    "base_norm", "delta_norm", "n_changed", "adapter_rank",
)  # fmt: skip
"""Columns of ``WeightDiff.to_frame``; ``base_norm``, ``delta_norm`` and ``n_changed`` let sums
over parameters be recomputed; ``adapter_rank`` is empty unless the post side is an adapter."""

_LAYER = re.compile(r"\.(?:h|layers|layer|blocks)\.(\d+)\.")
# Checked in order: norms first, since "post_attention_layernorm" is a norm, not attention.
_COMPONENT_PARTS: tuple[tuple[Component, tuple[str, ...]], ...] = (
    ("norm", ("ln_", "norm")),
    ("unembedding", ("lm_head", "embed_out")),
    ("embedding", ("wte", "wpe", "embed")),
    ("attention", ("attn", "attention")),
    ("mlp", ("mlp", "feed_forward")),
)


def parameter_site(name: str) -> tuple[int | None, Component]:
    """Layer index (None outside the blocks) and component of a Hugging Face parameter name,
    e.g. ``transformer.h.3.mlp.c_fc.weight`` -> (3, "mlp")."""
    found = _LAYER.search(f".{name}")
    layer = int(found.group(1)) if found else None
    parts = name.split(".")
    for component, markers in _COMPONENT_PARTS:
        if any(marker in part for part in parts for marker in markers):
            return layer, component
    return layer, "other"


def effective_rank(singular_values: Float[Tensor, " k"]) -> float:
    """exp of the Shannon entropy of ``singular_values / sum``; 0 when they are all zero."""
    total = singular_values.sum()
    if total == 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return math.exp(-float((p * p.log()).sum()))


def principal_angle_deg(
    base: Float[Tensor, "rows cols"], post: Float[Tensor, "rows cols"], top_k: int
) -> float:
    """Largest principal angle (degrees) between the spans of the top-k left singular vectors
    of ``base`` and of ``post``, k capped by both numerical ranks; NaN if either is zero."""
    if torch.equal(base, post):
        return 0.0
    u_base, s_base, _ = torch.linalg.svd(base, full_matrices=False)
    u_post, s_post, _ = torch.linalg.svd(post, full_matrices=False)
    k = min(top_k, _numerical_rank(s_base, base.shape), _numerical_rank(s_post, post.shape))
    if k == 0:
        return math.nan
    u_base, u_post = u_base[:, :k], u_post[:, :k]
    overlap = u_base.T @ u_post
    # cos from the overlap and sin from the residual, combined with atan2: arccos alone
    # loses all precision for small angles.
    cos = torch.linalg.svdvals(overlap).min()
    sin = torch.linalg.matrix_norm(u_post - u_base @ overlap, ord=2)
    return math.degrees(math.atan2(float(sin), float(cos)))


def _numerical_rank(singular_values: Tensor, shape: torch.Size) -> int:
    tol = singular_values.max() * max(shape) * torch.finfo(singular_values.dtype).eps
    return int((singular_values > tol).sum())


@dataclass(frozen=True)
class ParameterDiff:
    """How one parameter tensor changed between base and post."""

    name: str
    """The parameter's name in the checkpoint."""
    layer: int | None
    """Block index, None for parameters outside the blocks (embeddings, final norm)."""
    component: Component
    """What the parameter belongs to, from ``parameter_site``."""
    shape: tuple[int, ...]
    """Shape as stored (GPT-2's Conv1D weights are (in, out))."""
    base_norm: float
    """||base||_F."""
    delta_norm: float
    """||post - base||_F."""
    n_changed: int
    """Entries whose change exceeds rounding noise of the stored dtype."""
    top_singular_values: tuple[float, ...] | None
    """The largest ``top_k`` singular values of the update, descending; None unless 2-D."""
    effective_rank: float | None
    """Effective rank of the update (0 for a zero update); None unless 2-D."""
    subspace_angle_deg: float | None
    """Largest principal angle between base's and post's top-k left singular subspaces;
    None unless 2-D, NaN if either matrix is zero."""
    adapter_rank: int | None = None
    """Rank r of the LoRA update of this weight when post is an adapter checkpoint that
    updates it; None otherwise."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rel_frobenius(self) -> float:
        return _relative(self.delta_norm, self.base_norm)

    @property
    def frac_changed(self) -> float:
        return self.n_changed / self.numel if self.numel else 0.0


def _nan(value: float | tuple[float, ...] | None) -> float:
    """A matrix metric for a table cell: NaN for non-matrices, the first of several values."""
    if value is None:
        return math.nan
    return value[0] if isinstance(value, tuple) else value


def _relative(delta: float, base: float) -> float:
    if delta == 0:
        return 0.0
    return delta / base if base > 0 else math.inf


@dataclass(frozen=True)
class WeightDiff:
    """The per-parameter change between two checkpoints, in checkpoint-name order."""

    parameters: tuple[ParameterDiff, ...]
    """One entry per parameter, sorted by name."""
    top_k: int
    """How many singular values and subspace directions the matrix metrics used."""

    def __getitem__(self, name: str) -> ParameterDiff:
        for row in self.parameters:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_frame(self) -> pd.DataFrame:
        """One row per parameter; matrix metrics are NaN for non-matrices."""
        rows = [
            (p.name, p.layer, p.component, str(p.shape), p.numel, p.rel_frobenius, p.frac_changed)
            + (_nan(p.effective_rank), _nan(p.top_singular_values), _nan(p.subspace_angle_deg))
            + (p.base_norm, p.delta_norm, p.n_changed, p.adapter_rank)
            for p in self.parameters
        ]
        return pd.DataFrame(rows, columns=FRAME_COLUMNS).astype({"layer": "Int64", "adapter_rank": "Int64"})

    def by_component(self) -> pd.DataFrame:
        """One row per (layer, component): relative Frobenius norm of the concatenated update,
        numel-weighted ``frac_changed`` and the largest subspace angle among its matrices."""
        frame = self.to_frame()
        frame = frame.assign(delta_sq=frame["delta_norm"] ** 2, base_sq=frame["base_norm"] ** 2)
        groups = frame.groupby(["layer", "component"], dropna=False, sort=True)
        summed = groups[["numel", "delta_sq", "base_sq", "n_changed"]].sum()
        out = pd.DataFrame(
            {
                "numel": summed["numel"],
                "rel_frobenius": [
                    _relative(math.sqrt(d), math.sqrt(b))
                    for d, b in zip(summed["delta_sq"], summed["base_sq"], strict=True)
                ],
                "frac_changed": summed["n_changed"] / summed["numel"].clip(lower=1),
                "max_subspace_angle_deg": groups["subspace_angle_deg"].max(),
            },
            index=summed.index,
        )
        return out.reset_index()


def diff_weights(base: Checkpoint, post: Checkpoint, top_k: int = 8) -> WeightDiff:
    """Compare two checkpoints (folders or state dicts) parameter by parameter; ``post`` may
    be an adapter checkpoint folder over the ``base`` folder."""
    if top_k < 1:
        raise RlinterpError(f"top_k must be at least 1, got {top_k}")
    ranks: dict[str, int] = {}
    if not isinstance(post, Mapping) and is_adapter(post):
        if isinstance(base, Mapping):
            raise RlinterpError(f"{post} is an adapter checkpoint; diff it against its base folder")
        ranks = LoraAdapter.open(post).ranks()
        post = merged_state_dict(base, post)
    base_sd, post_sd = (c if isinstance(c, Mapping) else load_state_dict(c) for c in (base, post))
    base_name, post_name = (
        n if isinstance(c, Mapping) else str(c) for c, n in ((base, "base"), (post, "post"))
    )
    _validate(base_sd, post_sd, base_name, post_name)
    rows = tuple(
        _diff_parameter(name, base_sd[name], post_sd[name], top_k, ranks.get(name))
        for name in sorted(base_sd)
    )
    return WeightDiff(parameters=rows, top_k=top_k)


def _validate(
    base: Mapping[str, Tensor], post: Mapping[str, Tensor], base_name: str = "base", post_name: str = "post"
) -> None:
    only_base, only_post = sorted(base.keys() - post.keys()), sorted(post.keys() - base.keys())
    if only_base or only_post:
        raise RlinterpError(
            f"the checkpoints hold different parameters: only in base {only_base}, only in post {only_post}"
        )
    for name in sorted(base):
        if base[name].shape != post[name].shape:
            raise RlinterpError(
                f"parameter {name} has shape {tuple(base[name].shape)} in base "
                f"but {tuple(post[name].shape)} in post"
            )
    for side, state in ((base_name, base), (post_name, post)):
        for name in sorted(state):
            if not bool(torch.isfinite(state[name]).all()):
                raise RlinterpError(
                    f"weight {name} of {side} holds NaN or Inf values; the checkpoint is damaged"
                )


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point else 0.0


def _diff_parameter(
    name: str, base: Tensor, post: Tensor, top_k: int, adapter_rank: int | None
) -> ParameterDiff:
    work = torch.float64 if torch.float64 in (base.dtype, post.dtype) else torch.float32
    b, p = base.detach().cpu().to(work), post.detach().cpu().to(work)
    delta = p - b
    # eps is a power of two, so the tolerance is exact in the working dtype.
    tol = max(_eps(base.dtype), _eps(post.dtype)) / 2 * torch.minimum(b.abs(), p.abs())
    top_singular_values = rank = angle = None
    if delta.ndim == 2 and delta.numel() > 0:
        singular_values = torch.linalg.svdvals(delta)
        top_singular_values = tuple(float(s) for s in singular_values[:top_k])
        rank = effective_rank(singular_values)
        angle = principal_angle_deg(b, p, top_k)
    layer, component = parameter_site(name)
    return ParameterDiff(
        name=name,
        layer=layer,
        component=component,
        shape=tuple(base.shape),
        base_norm=float(torch.linalg.vector_norm(b)),
        delta_norm=float(torch.linalg.vector_norm(delta)),
        n_changed=int((delta.abs() > tol).sum()),
        top_singular_values=top_singular_values,
        effective_rank=rank,
        subspace_angle_deg=angle,
        adapter_rank=adapter_rank,
    )
