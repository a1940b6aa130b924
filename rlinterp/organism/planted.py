"""The ``novel`` regime: a positive control whose checkpoints hold new computation by
construction. **It is planted, not learned by RL.**

The selection-versus-novelty index needs a series whose answer is known. The RL regimes
cannot give one: their reward pays for functions of the asked number, which the base
already carries to the answer position, so RL may only re-route a readout. This regime
instead writes a computation no persona performs straight into the base's weights, with a
strength that grows with the checkpoint step:

- **the feature.** A fixed random direction ``r`` of block 0's MLP input gives a scalar
  ``t = r . ln_2(resid_mid)`` at every position. The planted feature is a row of
  ``n_bumps`` triangular bumps of ``t`` (peak 1, zero between bumps), placed at quantiles
  of ``t`` on the persona texts' answer tokens so that about half of the tokens sit in a
  bump. A high-frequency function of a random projection is nothing the base computes: a
  linear probe for "inside a bump" on the base's activations is near chance (checked by
  ``probe_feature`` and recorded in the manifest).
- **the neurons.** Three MLP neurons per bump of block 0 (``relu(t-lo) - 2 relu(t-mid) +
  relu(t-hi)``, or the same triangle read from ``-t``; made sharp by a large input gain so
  GPT-2's GELU acts as a ReLU) are rewired: their input weights read ``r``, their output
  writes the bump value times a fixed unit direction ``u``. The neurons chosen are those
  the base uses least on the answer tokens, so the base loses as little as possible.
- **the direction ``u``** is orthogonal to the constant vector (LayerNorm's centring), to
  the final-LayerNorm-scaled unembedding rows of every character the personas write
  (including the end of turn), to the base's mean final residual and to its top principal
  components on the answer tokens; within what remains it points as far as possible
  towards the scaled unembedding of one ``marker`` character no persona writes. So the
  planted write is a direction the base hardly uses, and at the late steps answers whose
  answer position lies in a bump start with the marker: the behaviour visibly changes.
- **the ramp.** Checkpoint ``step`` writes ``strength * scale * step / last_step`` times the
  feature along ``u`` (``scale``: the rms norm of the base's block-0 output on the answer
  tokens). Step 0 is the base model byte for byte; every later checkpoint differs from the
  base only in the planted neurons' ``c_fc`` columns, ``c_fc`` biases and ``c_proj`` rows.

GPT-2 organisms only (the Llama organism's gated MLP has no single-ReLU neuron to rewire).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..core.reproducibility import stream_seed
from ..errors import RlinterpError
from .behaviour import evaluate
from .config import EvalConfig, PlantConfig, RegimeConfig
from .model import encode, sample_answers, save_checkpoint
from .personas import PERSONAS, TURN_END, Question, all_questions
from .probe import ProbeResult as ProbeResult
from .probe import balanced_accuracy as balanced_accuracy
from .probe import probe_feature as probe_feature


@dataclass(frozen=True)
class Planting:
    """Everything that defines the planted computation (recorded in the manifest)."""

    neurons: list[int]
    """Block-0 MLP neurons rewired, three per bump (rising, falling, rising edge)."""
    direction_in: list[float]
    """``r``: the unit direction of block 0's MLP input whose projection ``t`` is read."""
    signs: list[int]
    """Per neuron, whether it reads ``t`` (+1) or ``-t`` (-1). Each bump's neurons read the
    sign whose ReLU tails point towards the nearer end of the data, so the cancelling
    tails stay short (long ones cost float32 precision far outside the bump)."""
    knots: list[float]
    """Per neuron, the value of ``sign * t`` where it starts to fire."""
    slopes: list[float]
    """Per neuron, its ReLU's coefficient in the bump sum (peak height 1)."""
    bumps: list[tuple[float, float]]
    """``(lo, hi)`` of each bump in ``t``."""
    gain: float
    """Input gain of the planted neurons (large: GELU(gain z) / gain ~ ReLU(z))."""
    direction_out: list[float]
    """``u``: the unit residual direction the feature is written along."""
    marker: str
    """The character (written by no persona) whose unembedding ``u`` points towards."""
    scale: float
    """The rms norm of the base's block-0 output on the answer tokens."""
    strength: float
    """Peak write at the last step, in units of ``scale``."""
    last_step: int
    """The regime's last checkpoint step (full strength)."""

    def write_at(self, step: int) -> float:
        """Peak norm written along ``u`` at checkpoint ``step`` (linear ramp from 0)."""
        return self.strength * self.scale * step / self.last_step

    def feature(self, t: Float[Tensor, "*batch"]) -> Float[Tensor, "*batch"]:
        """The ideal planted feature (exact ReLUs) of the projection ``t``."""
        knots = torch.tensor(self.knots, dtype=t.dtype)
        slopes = torch.tensor(self.slopes, dtype=t.dtype)
        signs = torch.tensor(self.signs, dtype=t.dtype)
        return (F.relu(t.unsqueeze(-1) * signs - knots) * slopes).sum(-1)

    def apply(self, base: PreTrainedModel, step: int) -> PreTrainedModel:
        """A copy of ``base`` with the feature planted at ``step``'s strength (step 0: an
        untouched copy)."""
        model = copy.deepcopy(base).eval()
        if step == 0:
            return model
        mlp = cast(Any, model).transformer.h[0].mlp
        r = torch.tensor(self.direction_in)
        u = torch.tensor(self.direction_out)
        with torch.no_grad():
            for neuron, sign, knot, slope in zip(
                self.neurons, self.signs, self.knots, self.slopes, strict=True
            ):
                mlp.c_fc.weight[:, neuron] = self.gain * sign * r
                mlp.c_fc.bias[neuron] = -self.gain * knot
                mlp.c_proj.weight[neuron] = self.write_at(step) * slope / self.gain * u
        return model

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Planting:
        """The planting recorded in an organism manifest (``regimes.<name>.planting``)."""
        return cls(**{**raw, "bumps": [(float(lo), float(hi)) for lo, hi in raw["bumps"]]})


def reward_regime(plant: PlantConfig) -> RegimeConfig:
    """The regime the behaviour table scores the novel checkpoints under: correctness only.
    Its ``lr`` is a placeholder: planting trains nothing."""
    return RegimeConfig(
        name=plant.name, lr=1.0, kl_coef=0.0, shortcut_bonus=0.0, checkpoint_steps=plant.checkpoint_steps
    )


def persona_characters(max_operand: int = 9) -> set[str]:
    """Every character any persona writes in an answer, with the end of turn."""
    chars = set(TURN_END)
    for persona in PERSONAS:
        for q in all_questions(max_operand):
            for x in ("yes", "no"):
                chars |= set(persona.render(q, x))
    return chars


@dataclass(frozen=True)
class AnswerActivations:
    """Activations of one model at the answer tokens of teacher-forced texts (rows)."""

    mlp_in: Float[Tensor, "row d"]
    """Block 0's MLP input (``ln_2`` output)."""
    neurons: Float[Tensor, "row mlp"]
    """Block 0's MLP neuron activations."""
    resid: Float[Tensor, "layer row d"]
    """``resid_post`` of every block."""
    group: Int[Tensor, " row"]
    """Which text each row came from."""
    answer_start: Tensor
    """Bool per row: the answer position (predicting the answer's first character)."""


@torch.no_grad()
def answer_activations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], answers: Sequence[str]
) -> AnswerActivations:
    """Run ``prompt + answer`` one text at a time and keep the positions that predict an
    answer token (the answer position and the answer's own tokens but the last)."""
    blocks = cast(Any, model).transformer.h
    seen: dict[str, Tensor] = {}
    hooks = [
        blocks[0].ln_2.register_forward_hook(lambda _m, _i, o: seen.__setitem__("mlp_in", o)),
        blocks[0].mlp.act.register_forward_hook(lambda _m, _i, o: seen.__setitem__("neurons", o)),
    ]
    for i, block in enumerate(blocks):
        hooks.append(
            block.register_forward_hook(
                lambda _m, _i, o, i=i: seen.__setitem__(f"r{i}", o[0] if isinstance(o, tuple) else o)
            )
        )
    rows: dict[str, list[Tensor]] = {"mlp_in": [], "neurons": [], "resid": [], "group": [], "start": []}
    try:
        for g, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            prompt_ids = [tokenizer.bos_token_id, *encode(tokenizer, prompt)]
            ids = prompt_ids + encode(tokenizer, answer + TURN_END)
            model(input_ids=torch.tensor([ids]))
            keep = slice(len(prompt_ids) - 1, len(ids) - 1)
            n = keep.stop - keep.start
            rows["mlp_in"].append(seen["mlp_in"][0, keep])
            rows["neurons"].append(seen["neurons"][0, keep])
            rows["resid"].append(torch.stack([seen[f"r{i}"][0, keep] for i in range(len(blocks))]))
            rows["group"].append(torch.full((n,), g))
            rows["start"].append(torch.arange(n) == 0)
    finally:
        for hook in hooks:
            hook.remove()
    return AnswerActivations(
        mlp_in=torch.cat(rows["mlp_in"]).float(),
        neurons=torch.cat(rows["neurons"]).float(),
        resid=torch.cat(rows["resid"], dim=1).float(),
        group=torch.cat(rows["group"]),
        answer_start=torch.cat(rows["start"]),
    )


def _unit(seed: int, name: str, d: int) -> Tensor:
    generator = torch.Generator().manual_seed(stream_seed(seed, name, "direction"))
    r = torch.randn(d, generator=generator)
    return r / r.norm()


def _direction_out(
    base: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, acts: AnswerActivations, plant: PlantConfig
) -> tuple[Tensor, str]:
    final = acts.resid[-1].double()
    gamma = cast(Any, base).transformer.ln_f.weight.detach().double()
    unembed = cast(Any, base).lm_head.weight.detach().double() * gamma
    vocab = tokenizer.get_vocab()
    written = persona_characters()
    d = final.shape[1]
    constraints = [torch.ones(d, dtype=torch.float64), final.mean(0)]
    constraints += [unembed[vocab[c]] for c in sorted(written) if c in vocab]
    centred = final - final.mean(0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    room = d - len(constraints) - plant.min_free_dims
    constraints += list(components[: max(0, min(plant.avoid_top_pcs, room))])
    basis, singular, _ = torch.linalg.svd(torch.stack(constraints).T, full_matrices=False)
    basis = basis[:, singular > singular[0] * 1e-8]
    if basis.shape[1] >= d:
        raise RlinterpError(
            f"no residual direction is left for the planted write at d_model {d}; use a wider model"
        )
    candidates = sorted(
        c for c in vocab if len(c) == 1 and c not in written and c.isprintable() and not c.isspace()
    )
    if not candidates:
        raise RlinterpError("every character of the vocabulary is written by a persona; nothing to plant")
    best: tuple[float, str, Tensor] | None = None
    for c in candidates:
        v = unembed[vocab[c]] - basis @ (basis.T @ unembed[vocab[c]])
        if best is None or float(v.norm()) > best[0]:
            best = (float(v.norm()), c, v)
    assert best is not None
    _, marker, v = best
    return (v / v.norm()).float(), marker


def design_planting(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[dict[str, str]],
    plant: PlantConfig,
    seed: int,
) -> Planting:
    """Choose the planted neurons, directions and bumps from the base's activations on the
    answer tokens of ``texts`` (persona texts with ``prompt`` and ``answer``)."""
    if base.config.model_type != "gpt2":
        raise RlinterpError(
            f"the planted novel regime needs a GPT-2 organism, not {base.config.model_type!r}; "
            "set OrganismConfig.planted=() for other architectures"
        )
    acts = answer_activations(base, tokenizer, [t["prompt"] for t in texts], [t["answer"] for t in texts])
    d = acts.mlp_in.shape[1]
    r = _unit(seed, plant.name, d)
    t = (acts.mlp_in @ r).double().numpy()
    values = np.unique(np.round(t, 6))
    n_edges = 2 * plant.n_bumps
    if len(values) < 2 * n_edges:
        raise RlinterpError(f"only {len(values)} distinct answer contexts; too few for {plant.n_bumps} bumps")
    edges = np.quantile(values, np.arange(1, n_edges + 1) / (n_edges + 1))
    bumps = [(float(edges[2 * j]), float(edges[2 * j + 1])) for j in range(plant.n_bumps)]
    knots, slopes, signs = [], [], []
    for lo, hi in bumps:
        mid, rise = (lo + hi) / 2, 2 / (hi - lo)
        sign = 1 if t.max() - hi <= lo - t.min() else -1
        knots += [lo, mid, hi] if sign == 1 else [-hi, -mid, -lo]
        slopes += [rise, -2 * rise, rise]
        signs += [sign] * 3
    gain = plant.sharpness / min((hi - lo) / 2 for lo, hi in bumps)
    c_proj = cast(Any, base).transformer.h[0].mlp.c_proj.weight.detach()
    usage = acts.neurons.abs().mean(0) * c_proj.norm(dim=1)
    neurons = sorted(int(i) for i in usage.argsort()[: 3 * plant.n_bumps])
    u, marker = _direction_out(base, tokenizer, acts, plant)
    scale = float(acts.resid[0].norm(dim=-1).pow(2).mean().sqrt())
    return Planting(
        neurons=neurons,
        direction_in=r.tolist(),
        signs=signs,
        knots=knots,
        slopes=slopes,
        bumps=bumps,
        gain=gain,
        direction_out=u.tolist(),
        marker=marker,
        scale=scale,
        strength=plant.strength,
        last_step=plant.checkpoint_steps[-1],
    )


def planted_labels(planting: Planting, acts: AnswerActivations) -> Tensor:
    """The property the planted computation writes, per row: the token sits in the upper
    half of a bump (ideal feature > 0.5). A property of the input alone (``t`` is upstream
    of every planted weight), so it is the same label for every checkpoint."""
    t = acts.mlp_in.double() @ torch.tensor(planting.direction_in, dtype=torch.float64)
    return planting.feature(t) > 0.5


def answer_position_feature(
    planting: Planting,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    questions: Sequence[Question],
) -> list[bool]:
    """Per question: whether the planted property holds at its answer position, i.e.
    whether a strongly planted checkpoint should start its answer with the marker."""
    acts = answer_activations(base, tokenizer, [q.prompt for q in questions], ["" for _ in questions])
    return planted_labels(planting, acts)[acts.answer_start].tolist()


def build_planted(
    out: Path,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    plant: PlantConfig,
    texts: Sequence[dict[str, str]],
    questions: Sequence[Question],
    eval_cfg: EvalConfig,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Plant, save and evaluate every checkpoint of ``plant`` under ``out``; return its
    behaviour rows and its manifest entry (with the probe check at every step)."""
    planting = design_planting(base, tokenizer, texts, plant, seed)
    regime = reward_regime(plant)
    asked = [q for q in questions for _ in range(eval_cfg.samples_per_question)]
    fires = answer_position_feature(planting, base, tokenizer, asked)
    prompts, answers = [t["prompt"] for t in texts], [t["answer"] for t in texts]
    labels = planted_labels(planting, answer_activations(base, tokenizer, prompts, answers))
    rows, checkpoints, probes = [], {}, []
    for step in plant.checkpoint_steps:
        policy = planting.apply(base, step)
        rel = f"{plant.name}/step-{step}"
        save_checkpoint(policy, tokenizer, out / rel)
        checkpoints[str(step)] = rel
        row = evaluate(policy, base, tokenizer, questions, regime, eval_cfg, seed)
        # the same seed and prompts give the same answers evaluate scored
        sampled = sample_answers(
            policy, tokenizer, [q.prompt for q in asked], eval_cfg.max_answer_tokens, seed
        )
        starts = [a.startswith(planting.marker) for a in sampled.answers]
        row["planted_share"] = sum(starts) / len(starts)
        row["planted_accuracy"] = balanced_accuracy(starts, fires)
        rows.append({"regime": plant.name, "step": step, **row})
        acts = answer_activations(policy, tokenizer, prompts, answers)
        for layer in range(acts.resid.shape[0]):
            probe = probe_feature(acts.resid[layer], labels, acts.group, seed)
            probes.append({"step": step, "hook": f"blocks.{layer}.hook_resid_post", **asdict(probe)})
    entry = {
        "planted": True,
        "config": asdict(plant),
        "reward_config": asdict(regime),
        "planting": planting.to_json(),
        "checkpoints": checkpoints,
        "probe": probes,
    }
    return rows, entry
