"""Lanes A and C: training dictionaries on one activation tensor.

The tensor is the residual stream of a random-init GPT-2 (``d_model = d_in``, 2 layers) and
of a perturbed copy ("step-1"), harvested once into an rlinterp store; every contender
trains on the same tokens with the same sizes, seed and number of steps, and reports the
explained variance of its dictionary on the training tensor (1 - sum ||x - x_hat||^2 /
sum ||x - mean||^2), so none can buy speed by skipping work, and, on held-out tokens of
the same model (other prompts), its fraction of variance unexplained (``fvu``), its L0,
and its dead latents (never firing on the training tensor).

Lane A, one dictionary:
- ``rlinterp``: ``train_sae`` on the store (its whole path: claim, input-norm estimate,
  SAELens trainer, saving);
- ``saelens``: SAELens' ``TopKTrainingSAE`` + ``SAETrainer.fit`` fed the in-memory tensor;
- ``plain``: a plain PyTorch TopK loop (unit-norm decoder rows, Adam, no bookkeeping);
- ``dictionary-learning``: dictionary_learning's ``BatchTopKTrainer`` (its own recipe:
  unit-norm decoder, geometric-median ``b_dec``, AuxK after 10M silent tokens, linear
  warm-up over a tenth of the steps and decay over the last fifth, its learning rate rule
  ``2e-4 / sqrt(d_sae / 2^14)``), fed the same batches scaled as ours (mean norm
  sqrt(d_in)), run from the released wheel without entering our environment
  (``_peers``); evaluated with its inference threshold, as it is used;
- ``diff-sae`` (rlinterp, on step-1 minus base) and ``crosscoder`` (rlinterp, both
  models), at the same size, without contenders.

Lane C, a sweep of dictionaries differing in ``k``: ``train_saes`` training all of them
on one pass over the store (``joint``), against one ``train_sae`` per dictionary
(``separate``) and a single dictionary (``one``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _measure import DEVICE, Contender, Outcome
from _peers import dictionary_learning
from _series import random_checkpoints, random_prompts
from safetensors.torch import save_file

from rlinterp.activations.harvest import ActivationStore, HarvestConfig, epoch_batches, harvest
from rlinterp.dictionaries.crosscoder import Crosscoder, CrosscoderConfig, paired_batches, train_crosscoder
from rlinterp.dictionaries.sae import SAETrainConfig, train_sae, train_saes
from rlinterp.models.series import ModelSeries

HOOK = "blocks.1.hook_resid_post"
LR = 3e-3
SEED = 0


@dataclass(frozen=True)
class DictionarySizes:
    d_in: int
    """Width of the activations (the random GPT-2's d_model)."""
    d_sae: int
    k: int
    batch: int
    steps: int
    """Training steps of every contender (tokens = steps x batch)."""
    prompts: int
    """Prompts of 100 tokens harvested (the tensor holds 100 x prompts tokens per model)."""
    sweep_d_sae: int
    sweep_ks: tuple[int, ...]
    sweep_batch: int
    sweep_steps: int


DEFAULT = DictionarySizes(128, 2048, 32, 1024, 32, 256, 1024, (8, 16, 32, 64), 1024, 16)
QUICK = DictionarySizes(32, 128, 8, 128, 4, 16, 64, (4, 8), 128, 4)


@dataclass
class Data:
    """The store and its two tensors (base and step-1 activations at ``HOOK``), and the same
    on held-out prompts."""

    store: ActivationStore
    base: torch.Tensor
    post: torch.Tensor
    held_base: torch.Tensor
    held_post: torch.Tensor


def prepare(root: Path, sizes: DictionarySizes) -> Data:
    folders = random_checkpoints(root / "models", d_model=sizes.d_in, n_layer=2, perturbation=0.2)
    series = ModelSeries.from_paths(folders)
    cfg = HarvestConfig(hooks=(HOOK,), batch_size=32)
    store = harvest(series, random_prompts(sizes.prompts), root / "store", cfg)
    held = harvest(series, random_prompts(max(1, sizes.prompts // 4), seed=1), root / "held-out", cfg)
    post = store.labels[1]
    return Data(
        store,
        store.read("base", HOOK),
        store.read(post, HOOK),
        held.read("base", HOOK),
        held.read(post, HOOK),
    )


Codec = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def explained_variance(x: torch.Tensor, reconstruct: Codec) -> float:
    """1 - residual energy / variance over all rows of ``x`` (reconstructed in chunks)."""
    error = sum(((reconstruct(c) - c) ** 2).sum().item() for c in x.split(4096))
    return 1.0 - error / ((x - x.mean(0)) ** 2).sum().item()


@torch.no_grad()
def judge(train: torch.Tensor, held: torch.Tensor, encode: Codec, decode: Codec) -> dict[str, float]:
    """Explained variance on the training tensor; on held-out rows the fraction of variance
    unexplained (``fvu``) and the mean number of active latents (``l0``); and the latents
    that never fire on the training tensor (``dead``)."""
    train, held = train.to(DEVICE), held.to(DEVICE)
    fired = None
    for chunk in train.split(4096):
        active = (encode(chunk) != 0).any(0)
        fired = active if fired is None else fired | active
    assert fired is not None
    l0 = sum((encode(c) != 0).sum().item() for c in held.split(4096)) / len(held)
    return {
        "explained_variance": explained_variance(train, lambda c: decode(encode(c))),
        "fvu": 1.0 - explained_variance(held, lambda c: decode(encode(c))),
        "l0": l0,
        "dead": int((~fired).sum()),
    }


def tensor_batches(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless full batches of rows of ``x``, each epoch in a fresh seeded order, on the
    lanes' device."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch + 1, batch):
            yield x[order[start : start + batch]].to(DEVICE)


def _sae_config(sizes: DictionarySizes, **changes: int) -> SAETrainConfig:
    fields = {"d_sae": sizes.d_sae, "k": sizes.k, "batch_size": sizes.batch, "steps": sizes.steps} | changes
    steps = fields.pop("steps")
    return SAETrainConfig(
        n_tokens=steps * fields["batch_size"], lr=LR, seed=SEED, device=str(DEVICE), **fields
    )


def _saved_sae_ev(path: Path, x: torch.Tensor) -> float:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path))
    return explained_variance(x, lambda c: sae.decode(sae.encode(c)))


def _saved_sae_judged(path: Path, train: torch.Tensor, held: torch.Tensor) -> dict[str, float]:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device=str(DEVICE))
    return judge(train, held, sae.encode, sae.decode)


def rlinterp_sae(data: Data, sizes: DictionarySizes, diff: bool = False) -> Contender:
    cfg = _sae_config(sizes)

    def run(scratch: Path) -> Outcome:
        if diff:
            train_sae(
                data.store, data.store.labels[1], HOOK, scratch / "sae", cfg, source="diff", base="base"
            )
        else:
            train_sae(data.store, "base", HOOK, scratch / "sae", cfg)
        x = data.post - data.base if diff else data.base
        held = data.held_post - data.held_base if diff else data.held_base
        return Outcome(cfg.n_tokens, check=lambda: _saved_sae_judged(scratch / "sae", x, held))

    return run


def saelens_sae(data: Data, sizes: DictionarySizes) -> Contender:
    """What a SAELens user writes for an in-memory tensor: its TopK SAE and trainer."""
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    def run(scratch: Path) -> Outcome:
        torch.manual_seed(SEED)
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                k=sizes.k,
                d_in=sizes.d_in,
                d_sae=sizes.d_sae,
                normalize_activations="expected_average_only_in",
                device=str(DEVICE),
            )
        )
        trainer_cfg = SAETrainerConfig(
            total_training_samples=sizes.steps * sizes.batch,
            train_batch_size_samples=sizes.batch,
            lr=LR,
            lr_end=LR / 10,
            lr_scheduler_name="cosineannealing",
            n_batches_for_norm_estimate=min(100, sizes.steps),
            device=str(DEVICE),
            logger=LoggingConfig(log_to_wandb=False),
        )
        trained = SAETrainer(trainer_cfg, sae, tensor_batches(data.base, sizes.batch, SEED)).fit()
        trained.save_inference_model(str(scratch / "sae"))
        return Outcome(
            sizes.steps * sizes.batch,
            check=lambda: _saved_sae_judged(scratch / "sae", data.base, data.held_base),
        )

    return run


def plain_sae(data: Data, sizes: DictionarySizes) -> Contender:
    """The same TopK recipe as a plain PyTorch loop: inputs scaled to mean norm sqrt(d_in)
    (estimated on as many batches as SAELens uses), decoder rows initialised at norm 0.1 with
    a tied encoder, latents ranked and decoded as if the decoder rows had unit norm,
    gradients clipped at norm 1, Adam with the same cosine schedule; no firing statistics,
    no AuxK loss, no hooks."""

    def run(scratch: Path) -> Outcome:
        d, n, k = sizes.d_in, sizes.d_sae, sizes.k
        batches = tensor_batches(data.base, sizes.batch, SEED)
        norms = [next(batches).norm(dim=-1).mean().item() for _ in range(min(100, sizes.steps))]
        scale = math.sqrt(d) / (sum(norms) / len(norms))
        generator = torch.Generator().manual_seed(SEED)
        W_dec = 0.1 * torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=-1).to(DEVICE)
        W_enc = W_dec.T.contiguous().requires_grad_()
        W_dec.requires_grad_()
        b_enc = torch.zeros(n, device=DEVICE, requires_grad=True)
        b_dec = torch.zeros(d, device=DEVICE, requires_grad=True)
        params = [W_enc, b_enc, W_dec, b_dec]
        optimizer = torch.optim.Adam(params, lr=LR)

        def encode(x: torch.Tensor) -> torch.Tensor:
            norm = W_dec.norm(dim=-1)
            pre = torch.addmm(b_enc * norm, x - b_dec, W_enc * norm)
            top = pre.topk(k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())

        def decode(acts: torch.Tensor) -> torch.Tensor:
            return torch.addmm(b_dec, acts, W_dec / W_dec.norm(dim=-1)[:, None])

        def reconstruct(x: torch.Tensor) -> torch.Tensor:
            return decode(encode(x))

        for step in range(sizes.steps):
            x = next(batches) * scale
            loss = (reconstruct(x) - x).pow(2).sum(-1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:  # cosine from LR to LR / 10, as SAELens
                group["lr"] = (
                    LR / 10 + (LR - LR / 10) * (1 + math.cos(math.pi * (step + 1) / sizes.steps)) / 2
                )
        weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
        save_file(
            {name: w.detach().contiguous() for name, w in weights.items()}, str(scratch / "sae.safetensors")
        )

        def check() -> dict[str, float]:
            return judge(data.base, data.held_base, lambda c: encode(c * scale), lambda f: decode(f) / scale)

        return Outcome(sizes.steps * sizes.batch, check=check)

    return run


def rlinterp_crosscoder(data: Data, sizes: DictionarySizes) -> Contender:
    labels = data.store.labels
    cfg = CrosscoderConfig(
        d_in=sizes.d_in,
        d_sae=sizes.d_sae,
        n_models=2,
        k=sizes.k,
        lr=LR,
        batch_size=sizes.batch,
        n_steps=sizes.steps,
        seed=SEED,
    )

    def run(scratch: Path) -> Outcome:
        stream = epoch_batches(
            lambda s: paired_batches(data.store, labels, HOOK, sizes.batch, s), sizes.batch, SEED
        )
        train_crosscoder(stream, cfg, device=DEVICE, checkpoint=scratch / "checkpoint").save(
            scratch / "crosscoder"
        )

        def check() -> dict[str, float]:
            # in training mode (BatchTopK over each chunk of a batch's size): what training
            # optimised; a short run has not settled the inference threshold yet
            crosscoder = Crosscoder.load(scratch / "crosscoder").train()

            def judged(x: torch.Tensor) -> tuple[float, int, torch.Tensor]:
                error, active, fired = 0.0, 0, torch.zeros(sizes.d_sae, dtype=torch.bool)
                for chunk in x.split(sizes.batch):
                    out = crosscoder(chunk)
                    error += ((out.reconstruction - chunk) ** 2).sum().item()
                    active += int((out.latents > 0).sum())
                    fired |= (out.latents > 0).any(0)
                return 1.0 - error / ((x - x.mean(0)) ** 2).sum().item(), active, fired

            ev, _, fired = judged(torch.stack([data.base, data.post], dim=1))
            held_ev, active, _ = judged(torch.stack([data.held_base, data.held_post], dim=1))
            return {"explained_variance": ev, "fvu": 1.0 - held_ev, "l0": active / len(data.held_base),
                    "dead": int((~fired).sum())}  # fmt: skip

        return Outcome(sizes.steps * sizes.batch, check=check)

    return run


def dictionary_learning_sae(data: Data, sizes: DictionarySizes, trainers: Any) -> Contender:
    """dictionary_learning's BatchTopK trainer with its own recipe (the module docstring)."""

    def run(scratch: Path) -> Outcome:  # noqa: ARG001  # its weights stay in memory
        batches = tensor_batches(data.base, sizes.batch, SEED)
        norms = [next(batches).norm(dim=-1).mean().item() for _ in range(min(100, sizes.steps))]
        scale = math.sqrt(sizes.d_in) / (sum(norms) / len(norms))
        trainer = trainers.BatchTopKTrainer(
            steps=sizes.steps, activation_dim=sizes.d_in, dict_size=sizes.d_sae, k=sizes.k, layer=1,
            lm_name="bench", warmup_steps=sizes.steps // 10,
            decay_start=sizes.steps - max(1, sizes.steps // 5),
            threshold_start_step=sizes.steps // 10, seed=SEED, device=str(DEVICE),
        )  # fmt: skip
        for step in range(sizes.steps):
            trainer.update(step, next(batches) * scale)
        ae = trainer.ae

        def check() -> dict[str, float]:
            return judge(
                data.base, data.held_base, lambda c: ae.encode(c * scale), lambda f: ae.decode(f) / scale
            )

        return Outcome(sizes.steps * sizes.batch, check=check)

    return run


def lane_a(
    data: Data, sizes: DictionarySizes, peers: Path, install: bool
) -> tuple[dict[str, Contender], str]:
    """The contenders, and which dictionary_learning ran (or why none did); it is installed
    into ``peers`` when missing if ``install``."""
    contenders = {
        "rlinterp": rlinterp_sae(data, sizes),
        "saelens": saelens_sae(data, sizes),
        "plain": plain_sae(data, sizes),
        "diff-sae": rlinterp_sae(data, sizes, diff=True),
        "crosscoder": rlinterp_crosscoder(data, sizes),
    }
    trainers, note = dictionary_learning(peers, install)
    if trainers is not None:
        contenders["dictionary-learning"] = dictionary_learning_sae(data, sizes, trainers)
    return contenders, note


def lane_a_ratios(lane: dict[str, Any]) -> dict[str, float | None]:
    """Speed ratios at the medians, and held-out FVU and dead latents against the peer."""

    def ratio(a: str, b: str, key: str = "tokens_per_s") -> float | None:
        if a not in lane or b not in lane:
            return None
        x, y = lane[a][key], lane[b][key]
        return (x["median"] if isinstance(x, dict) else x) / (y["median"] if isinstance(y, dict) else y)

    return {
        "rlinterp / saelens": ratio("rlinterp", "saelens"),
        "rlinterp / plain": ratio("rlinterp", "plain"),
        "rlinterp / dictionary-learning": ratio("rlinterp", "dictionary-learning"),
        "fvu rlinterp / dictionary-learning": ratio("rlinterp", "dictionary-learning", "fvu"),
        "dead rlinterp - dictionary-learning": lane["rlinterp"]["dead"] - lane["dictionary-learning"]["dead"]
        if "dictionary-learning" in lane
        else None,
    }


def lane_c(data: Data, sizes: DictionarySizes) -> dict[str, Contender]:
    common = {"d_sae": sizes.sweep_d_sae, "batch_size": sizes.sweep_batch, "steps": sizes.sweep_steps}
    cfgs = [_sae_config(sizes, k=k, **common) for k in sizes.sweep_ks]
    tokens = cfgs[0].n_tokens

    def evs(folders: list[Path]) -> dict[str, float]:
        return {
            f"explained_variance_k{k}": _saved_sae_ev(f, data.base)
            for k, f in zip(sizes.sweep_ks, folders, strict=True)
        }

    def one(scratch: Path) -> Outcome:
        middle = cfgs[len(cfgs) // 2]
        train_sae(data.store, "base", HOOK, scratch / "one", middle)
        return Outcome(
            tokens,
            {"dictionaries": 1},
            lambda: {f"explained_variance_k{middle.k}": _saved_sae_ev(scratch / "one", data.base)},
        )

    def joint(scratch: Path) -> Outcome:
        folders = [scratch / f"k{cfg.k}" for cfg in cfgs]
        train_saes(data.store, "base", HOOK, folders, cfgs)
        return Outcome(tokens * len(cfgs), {"dictionaries": len(cfgs)}, lambda: evs(folders))

    def separate(scratch: Path) -> Outcome:
        folders = [scratch / f"k{cfg.k}" for cfg in cfgs]
        for folder, cfg in zip(folders, cfgs, strict=True):
            train_sae(data.store, "base", HOOK, folder, cfg)
        return Outcome(tokens * len(cfgs), {"dictionaries": len(cfgs)}, lambda: evs(folders))

    return {"one": one, "joint": joint, "separate": separate}
