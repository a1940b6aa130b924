"""Lane B and the scaling lane: harvesting a checkpoint series.

Lane B runs K random-init GPT-2 checkpoints of a realistic width (d_model 1,024, 8 layers
by default) over a prompt set and keeps two hooks (one middle layer and the last, so
stopping at the deepest hook skips only the final norm and unembedding), at a short (100
tokens) and a long (1,024 tokens) context, with the same batch size for every contender:

- ``rlinterp``: ``harvest`` (each checkpoint loaded once through the series, the base's
  hook sites checked against TransformerLens; the plain ``transformers`` forward with
  hooks on the modules; one safetensors shard per model, hook and batch);
- ``tl-tuned``: the TransformerLens loop: load each checkpoint
  (``TransformerBridge.boot_transformers``), ``run_with_cache`` with ``names_filter``,
  ``stop_at_layer`` after the deepest hook and ``torch.inference_mode``, save the two hooks
  (safetensors, one file per batch); the reference every activation is compared with;
- ``tl-forward`` and ``hf-forward``: floors, a hook-free TransformerLens forward and a
  plain ``transformers`` forward (``AutoModelForCausalLM``), logits only, nothing kept.

Each run reports time per checkpoint, the time spent loading checkpoints (switching), for
rlinterp apart from its once-per-series setup (the base's bridge, built over the loaded
weights, and the check of the hook sites against it), peak memory, bytes written and, for
those that keep activations, the largest absolute difference from the tuned loop's.

The scaling lane runs rlinterp's ``harvest`` (one model loaded at a time:
``max_loaded=1``) and ``run_diff`` on 1x, 4x and 16x the prompts and on a growing number of
checkpoints, one forked run each, on the same wide model; beside each peak it reports the
bytes of one model's weights and of one batch's activations at the harvested hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _measure import DEVICE, DTYPE, Contender, Outcome
from _series import random_checkpoints, random_prompts
from safetensors.torch import load_file, save_file
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.diff.analysis import run_diff
from rlinterp.models import series as series_module
from rlinterp.models.hooked import HookMap
from rlinterp.models.series import ModelSeries


@dataclass(frozen=True)
class HarvestSizes:
    d_model: int
    n_layer: int
    checkpoints: int
    short: tuple[int, int, int]
    """(tokens per prompt with BOS, prompts, batch size) of the short-context shape."""
    long: tuple[int, int, int]
    """The same for the long-context shape."""
    scaling_prompts: int
    """1x of the scaling lane (prompts of the short length)."""
    scaling_batch: int
    scaling_checkpoints: tuple[int, ...]


DEFAULT = HarvestSizes(1024, 8, 2, (100, 16, 8), (1024, 1, 1), 2, 2, (2, 3))
QUICK = HarvestSizes(32, 2, 2, (20, 4, 2), (64, 2, 1), 1, 1, (2, 3))


@dataclass
class Shape:
    """One prompt set through the series."""

    folders: list[Path]
    prompts: PromptSet
    tokens: torch.Tensor
    """[prompts, pos]: BOS + one token per character (all prompts the same length)."""
    batch: int
    hooks: tuple[str, str]
    reference: dict[tuple[int, str], torch.Tensor] | None = None
    """(checkpoint index, hook) -> the tuned loop's activations, BOS dropped, rows in order."""

    @property
    def stop_at(self) -> int:
        return int(self.hooks[-1].split(".")[1]) + 1


def models(root: Path, sizes: HarvestSizes, n_steps: int, n_positions: int) -> list[Path]:
    return random_checkpoints(
        root, d_model=sizes.d_model, n_layer=sizes.n_layer, n_steps=n_steps, n_positions=n_positions
    )


def shape(folders: list[Path], length: int, n_prompts: int, batch: int, n_layer: int) -> Shape:
    prompts = random_prompts(n_prompts, length=length - 1)
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    tokens = prompts.tokenize(tokenizer, length).tokens
    assert tokens.shape == (n_prompts, length), tokens.shape
    hooks = (f"blocks.{n_layer // 2 - 1}.hook_resid_post", f"blocks.{n_layer - 1}.hook_resid_post")
    return Shape(folders, prompts, tokens, batch, hooks)


def weights_bytes(folder: Path) -> int:
    """Bytes of one checkpoint's weights (its safetensors file)."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def forward_flops_per_token(folder: Path, context: int) -> float:
    """``calibration.FLOPS["forward"]`` for the checkpoint in ``folder``."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    blocks = sum(p.numel() for n, p in model.transformer.h.named_parameters() if p.ndim == 2)
    unembed = model.lm_head.weight.numel()
    cfg = model.config
    return 2.0 * (blocks + unembed) + 2.0 * cfg.n_layer * context * cfg.n_embd


class _Clock:
    """Seconds spent inside the functions it wraps (a wrapped call inside another counts
    once)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.depth = 0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed


def _max_difference(shape: Shape, read: Callable[[int, str], torch.Tensor]) -> dict[str, float]:
    assert shape.reference is not None
    worst = max(
        (read(i, hook) - shape.reference[i, hook]).abs().max().item()
        for i in range(len(shape.folders))
        for hook in shape.hooks
    )
    return {"max_abs_diff_vs_tuned": worst}


def rlinterp_harvest(shape: Shape) -> Contender:
    def run(scratch: Path) -> Outcome:
        # switching: every checkpoint load; setup: the base's bridge and hook check, once
        # per series (a forked child's own copies of the patched functions)
        clock, setup = _Clock(), _Clock()
        entry, bridge_over, build = ModelSeries._entry, series_module.bridge_over, HookMap.build
        ModelSeries._entry = clock.wrap(entry)  # type: ignore[method-assign]
        series_module.bridge_over = setup.wrap(bridge_over)
        HookMap.build = setup.wrap(build)  # type: ignore[method-assign]
        try:
            series = ModelSeries.from_paths(shape.folders, device=str(DEVICE), dtype=DTYPE)
            store = harvest(
                series,
                shape.prompts,
                scratch / "store",
                HarvestConfig(hooks=shape.hooks, batch_size=shape.batch),
            )
        finally:
            ModelSeries._entry = entry  # type: ignore[method-assign]
            series_module.bridge_over, HookMap.build = bridge_over, build  # type: ignore[method-assign]
        k = len(shape.folders)
        return Outcome(
            shape.tokens.numel() * k,
            {"switch_seconds_per_checkpoint": clock.seconds / k, "setup_seconds": setup.seconds},
            lambda: _max_difference(shape, lambda i, hook: store.read(store.labels[i], hook)),
        )

    return run


def tl_tuned(shape: Shape) -> Contender:
    def run(scratch: Path) -> Outcome:
        clock = _Clock()
        boot = clock.wrap(TransformerBridge.boot_transformers)
        for i, folder in enumerate(shape.folders):
            model = boot(str(folder), device=str(DEVICE), dtype=DTYPE)
            for b, tokens in enumerate(shape.tokens.to(DEVICE).split(shape.batch)):
                with torch.inference_mode():
                    _, cache = model.run_with_cache(
                        tokens,
                        names_filter=list(shape.hooks),
                        stop_at_layer=shape.stop_at if shape.stop_at < model.cfg.n_layers else None,
                    )
                kept = {
                    hook: cache[hook][:, 1:].reshape(-1, cache[hook].shape[-1]).float().cpu().contiguous()
                    for hook in shape.hooks
                }
                save_file(kept, str(scratch / f"{i}-{b}.safetensors"))
                del cache
            del model
        k = len(shape.folders)
        n_batches = len(shape.tokens.split(shape.batch))

        def read(i: int, hook: str) -> torch.Tensor:
            return torch.cat([load_file(scratch / f"{i}-{b}.safetensors")[hook] for b in range(n_batches)])

        return Outcome(
            shape.tokens.numel() * k,
            {"switch_seconds_per_checkpoint": clock.seconds / k},
            None if shape.reference is None else lambda: _max_difference(shape, read),
        )

    return run


def set_reference(shape: Shape, scratch: Path) -> None:
    """Run the tuned loop once and keep its activations as the reference."""
    tl_tuned(shape)(scratch)
    n_batches = len(shape.tokens.split(shape.batch))
    shape.reference = {
        (i, hook): torch.cat([load_file(scratch / f"{i}-{b}.safetensors")[hook] for b in range(n_batches)])
        for i in range(len(shape.folders))
        for hook in shape.hooks
    }


def _floor(shape: Shape, load: Callable[[Path], Callable[[torch.Tensor], object]]) -> Contender:
    def run(scratch: Path) -> Outcome:  # noqa: ARG001  # a floor writes nothing
        clock = _Clock()
        for folder in shape.folders:
            forward = clock.wrap(load)(folder)
            with torch.inference_mode():
                for tokens in shape.tokens.to(DEVICE).split(shape.batch):
                    forward(tokens)
        k = len(shape.folders)
        return Outcome(shape.tokens.numel() * k, {"switch_seconds_per_checkpoint": clock.seconds / k})

    return run


def tl_forward(shape: Shape) -> Contender:
    return _floor(
        shape,
        lambda folder: TransformerBridge.boot_transformers(str(folder), device=str(DEVICE), dtype=DTYPE),
    )


def hf_forward(shape: Shape) -> Contender:
    def load(folder: Path) -> Callable[[torch.Tensor], object]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPE).to(DEVICE).eval()
        return lambda tokens: model(input_ids=tokens).logits

    return _floor(shape, load)


def lane_b(shape: Shape) -> dict[str, Contender]:
    return {
        "rlinterp": rlinterp_harvest(shape),
        "tl-tuned": tl_tuned(shape),
        "tl-forward": tl_forward(shape),
        "hf-forward": hf_forward(shape),
    }


def scaling(folders: list[Path], sizes: HarvestSizes) -> dict[str, Contender]:
    """One contender per (tool, axis, size): ``harvest`` and ``run_diff`` at 1x/4x/16x the
    prompts (2 checkpoints) and at each checkpoint count (1x the prompts)."""
    cfg = HarvestConfig(batch_size=sizes.scaling_batch)
    points = [(f"prompts={m}x", 2, m * sizes.scaling_prompts) for m in (1, 4, 16)]
    points += [(f"checkpoints={k}", k, sizes.scaling_prompts) for k in sizes.scaling_checkpoints]

    weights = weights_bytes(folders[0])

    def contender(tool: str, n_checkpoints: int, n_prompts: int) -> Contender:
        def run(scratch: Path) -> Outcome:
            prompts = random_prompts(n_prompts, length=99)
            if tool == "harvest":
                harvest(
                    ModelSeries.from_paths(
                        folders[:n_checkpoints], max_loaded=1, device=str(DEVICE), dtype=DTYPE
                    ),
                    prompts,
                    scratch / "out",
                    cfg,
                )
            else:
                series = ModelSeries.from_paths(folders[:n_checkpoints], device=str(DEVICE), dtype=DTYPE)
                run_diff(series, prompts, scratch / "out", cfg)
            # float32 activations of one batch at the default hooks (every block's output)
            batch = min(sizes.scaling_batch, n_prompts) * 100 * sizes.d_model * 4 * sizes.n_layer
            return Outcome(
                100 * n_prompts * n_checkpoints,
                {
                    "checkpoints": n_checkpoints,
                    "prompts": n_prompts,
                    "weights_mib": weights / 2**20,
                    "batch_mib": batch / 2**20,
                },  # fmt: skip
            )

        return run

    return {f"{tool} {name}": contender(tool, k, p) for tool in ("harvest", "diff") for name, k, p in points}
