"""Stage-wise fine-tuning: the base SAE warm-started on each successive checkpoint with a
small token budget, so that one dictionary follows the series and each latent keeps its
index (its identity) from stage to stage.

Stage 0 is the base dictionary itself; stage ``i`` is stage ``i - 1`` trained for
``n_tokens`` more tokens on checkpoint ``i``'s activations (SAELens' trainer, warm start
``SAETrainConfig.init_from``). Recorded:

- per (source, step, latent), ``STAGEWISE_COLUMNS``: cosine of the latent's decoder row and
  encoder column to the base dictionary's and to the previous stage's, and how often and how
  strongly the stage's latent fires on its checkpoint. A latent that keeps both cosines near
  1 was only re-weighted; one whose decoder turned away was rotated into something else;
- per (source, step), ``STAGE_FIT_COLUMNS``: explained variance of the previous stage on this
  checkpoint before the fine-tune (``ev_before``) and of the new stage after it
  (``ev_after``): how much the dictionary had to change to keep up.

The fine-tune noise itself is measured by ``fine_tune`` on the base (a stage of the base on
the base): the self-control that calibrates what "turned away" means.

Each stage is saved as an SAE folder (``<out>/<label>/``) and reused when found finished
with the same warm start and budget, so an interrupted run resumes stage by stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from ..activations.harvest import ActivationStore
from ..core.artifacts import read_json_object
from ..errors import RlinterpError
from .config import StagewiseConfig as StagewiseConfig
from .evaluation import evaluate_sae
from .sae import MANIFEST, SAETrainConfig, TrainedSAE, train_sae

STAGEWISE_COLUMNS = [
    "source",
    "label",
    "step",
    "latent",
    "dec_cos_base",
    "dec_cos_prev",
    "enc_cos_base",
    "enc_cos_prev",
    "frequency",
    "mean_activation",
]
"""``frequency`` and ``mean_activation`` (when firing) are the stage's own dictionary's, on
its checkpoint's tokens: whether a latent whose decoder moved still fires as before."""
STAGE_FIT_COLUMNS = ["source", "label", "step", "ev_before", "ev_after", "n_tokens"]


@dataclass(frozen=True)
class Stage:
    """One checkpoint to fine-tune on: its label and step, and a store holding it."""

    label: str
    """Names the stage in the tables and its folder."""
    step: int
    store: ActivationStore
    model: str | None = None
    """The model inside ``store`` to train on; None: ``label`` (a control stage names the
    base here under another label)."""

    @property
    def trained_on(self) -> str:
        return self.model or self.label


@dataclass(frozen=True)
class Stagewise:
    """The tables of one stage-wise run (``STAGEWISE_COLUMNS``, ``STAGE_FIT_COLUMNS``) and
    the folder of every stage's SAE, by label (stage 0 is the base dictionary)."""

    table: pd.DataFrame
    fit: pd.DataFrame
    paths: dict[str, Path]


def cosines(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    """Row-wise cosine similarity (0 where a row is zero)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).float()


STAGE_DECODER_NORM = 0.1
"""Row norm a stage's warm start gives the decoder (see ``fine_tune``)."""


def fine_tune(
    dictionary: str | Path,
    base: Stage,
    stages: list[Stage],
    out: str | Path,
    source: str,
    cfg: StagewiseConfig | None = None,
) -> Stagewise:
    """Warm-start the SAE at ``dictionary`` on each of ``stages`` in turn (see the module
    docstring); stage folders go to ``out/<label>/``. The first rows describe stage 0 on
    ``base``: cosines 1, and the dictionary's explained variance there as both ``ev_before``
    and ``ev_after``."""
    cfg = cfg or StagewiseConfig()
    dictionary, out = Path(dictionary), Path(out)
    start = TrainedSAE.load(dictionary)
    hook = start.manifest["hook"]
    train_cfg = SAETrainConfig.recorded(start.manifest["config"])
    # A stage's rows restart at SAELens' 0.1 norm, whatever the dictionary started from:
    # with decoder-norm rescaling a row's norm only sets how fast Adam turns it, and a stage
    # has a small budget to follow a rewired feature (at unit norm the planted rewired
    # latent turned only to cosine 0.52 with its new direction in a stage).
    train_cfg = dataclasses.replace(
        train_cfg,
        n_tokens=cfg.n_tokens,
        lr=cfg.lr_scale * train_cfg.lr,
        init_from=None,
        decoder_init_norm=STAGE_DECODER_NORM,
    )
    dec0, enc0 = _weights(start)
    rows = [_cosine_rows(source, base.label, base.step, dec0, enc0, dec0, enc0, dec0, enc0)]
    rows[0] = rows[0].assign(**latent_activity(start.sae, base.store, base.trained_on, hook))
    ev = evaluate_sae(start.sae, base.store, base.trained_on, hook).explained_variance
    fits = [_fit_row(source, base.label, base.step, ev, ev, 0)]
    paths, previous = {base.label: dictionary}, start
    for stage in stages:
        folder = out / stage.label
        stage_cfg = dataclasses.replace(train_cfg, init_from=str(previous.path))
        trained = _reuse(folder, stage_cfg) or train_sae(
            stage.store, stage.trained_on, hook, folder, stage_cfg
        )
        before = evaluate_sae(previous.sae, stage.store, stage.trained_on, hook).explained_variance
        after = evaluate_sae(trained.sae, stage.store, stage.trained_on, hook).explained_variance
        dec, enc = _weights(trained)
        dec_prev, enc_prev = _weights(previous)
        row = _cosine_rows(source, stage.label, stage.step, dec, enc, dec0, enc0, dec_prev, enc_prev)
        rows.append(row.assign(**latent_activity(trained.sae, stage.store, stage.trained_on, hook)))
        fits.append(_fit_row(source, stage.label, stage.step, before, after, cfg.n_tokens))
        paths[stage.label], previous = folder, trained
    return Stagewise(
        table=pd.concat(rows, ignore_index=True)[STAGEWISE_COLUMNS],
        fit=pd.DataFrame(fits, columns=STAGE_FIT_COLUMNS),
        paths=paths,
    )


@torch.no_grad()
def latent_activity(sae: SAE[Any], store: ActivationStore, label: str, hook: str) -> dict[str, Any]:
    """Per latent of ``sae`` on ``label``'s tokens: ``frequency`` (fraction of tokens where it
    fires) and ``mean_activation`` (mean where it fires, 0 if never), streamed by shard."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    total = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = 0
    for x in store.shards(label, hook):
        latents = sae.encode(x.to(sae.device)).cpu().double()
        fired += (latents > 0).sum(0)
        total += latents.sum(0)
        n += len(x)
    mean = torch.where(fired > 0, total / fired.clamp(min=1), torch.zeros_like(total))
    return {"frequency": (fired / max(n, 1)).numpy(), "mean_activation": mean.numpy()}


def _reuse(folder: Path, cfg: SAETrainConfig) -> TrainedSAE | None:
    """The finished stage in ``folder`` if it was trained with ``cfg``; None if there is
    none; an error if it was trained otherwise."""
    if not (folder / MANIFEST).is_file():
        return None
    done = read_json_object(folder / MANIFEST, f"delete {folder} to train this stage again")
    if done.get("config") != dataclasses.asdict(cfg):
        raise RlinterpError(
            f"{folder} holds a stage trained with another warm start or budget; "
            "choose another output directory"
        )
    return TrainedSAE.load(folder)


def _weights(trained: TrainedSAE) -> tuple[Tensor, Tensor]:
    """Decoder rows and encoder columns, both ``[d_sae, d_in]``."""
    sae = trained.sae
    return sae.W_dec.detach().float().cpu(), sae.W_enc.detach().float().cpu().T


def _cosine_rows(
    source: str,
    label: str,
    step: int,
    dec: Tensor,
    enc: Tensor,
    dec0: Tensor,
    enc0: Tensor,
    dec_prev: Tensor,
    enc_prev: Tensor,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": source,
            "label": label,
            "step": step,
            "latent": range(len(dec)),
            "dec_cos_base": cosines(dec, dec0).numpy(),
            "dec_cos_prev": cosines(dec, dec_prev).numpy(),
            "enc_cos_base": cosines(enc, enc0).numpy(),
            "enc_cos_prev": cosines(enc, enc_prev).numpy(),
        }
    )


def _fit_row(
    source: str, label: str, step: int, before: float, after: float, n_tokens: int
) -> dict[str, Any]:
    return {
        "source": source,
        "label": label,
        "step": step,
        "ev_before": before,
        "ev_after": after,
        "n_tokens": n_tokens,
    }
