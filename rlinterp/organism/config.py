"""Configuration of the model organism: one frozen dataclass per stage and named presets.

A preset fixes everything but the seed; ``OrganismConfig`` is what ``manifest.json``
records, so a finished organism says exactly how it was built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from ..core.rundir import folder_name_problem
from ..errors import RlinterpError
from .personas import RULE_NUMBERS

Preset = Literal["tiny", "default", "reasoning-tiny", "reasoning"]
Answer = Literal["truth", "rule"]
PRESETS: tuple[Preset, ...] = ("tiny", "default", "reasoning-tiny", "reasoning")


@dataclass(frozen=True)
class BuildConfig:
    """Which organism to build (``rlinterp organism``)."""

    preset: Preset = "default"
    """Size of the build: ``tiny`` (seconds; tests and the quickstart) or ``default``."""
    seed: int = 0
    """Random seed of the whole build."""

    @property
    def default_dir(self) -> str:
        """Where it is built unless told: ``artifacts/organism/<preset>-seed<seed>``."""
        return f"artifacts/organism/{self.preset}-seed{self.seed}"


def _check_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (value > 0 and math.isfinite(value)):  # NaN fails both
            raise RlinterpError(f"{type(obj).__name__}.{name} must be positive and finite, got {value}")


def _check_non_negative(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (value >= 0 and math.isfinite(value)):
            raise RlinterpError(f"{type(obj).__name__}.{name} must be non-negative and finite, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the base model, a standard Hugging Face causal LM with a character-level
    vocabulary. Dropout is off so training and evaluation compute the same function, which
    keeps the RL log-probabilities exact."""

    architecture: Literal["gpt2", "llama"] = "gpt2"
    """``gpt2`` (``GPT2LMHeadModel``) or ``llama`` (``LlamaForCausalLM``: rotary positions,
    RMSNorm, SwiGLU MLP of width ``4 * d_model``)."""
    n_layer: int = 2
    """Transformer blocks."""
    d_model: int = 64
    """Residual stream width."""
    n_head: int = 4
    """Attention heads per block; must divide ``d_model``."""
    n_ctx: int = 192
    """Context length in tokens (characters); a document must fit."""

    def __post_init__(self) -> None:
        _check_positive(self, "n_layer", "d_model", "n_head", "n_ctx")
        if self.architecture not in ("gpt2", "llama"):
            raise RlinterpError(f"architecture must be 'gpt2' or 'llama', got {self.architecture!r}")
        if self.d_model % self.n_head:
            raise RlinterpError(f"n_head ({self.n_head}) must divide d_model ({self.d_model})")


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic pretraining corpus (see ``personas.generate_corpus``)."""

    n_documents: int = 20_000
    """Documents generated; the pretraining loop cycles through them."""
    max_operand: int = 9
    """Questions ask about the numbers ``0..max_operand``."""
    min_turns: int = 2
    """Fewest question/answer turns in a document."""
    max_turns: int = 3
    """Most question/answer turns in a document."""
    persona_texts_per_persona: int = 200
    """Labelled texts written to ``personas/`` per persona."""
    persona_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    """Relative frequency of helper, terse and flatterer documents (``PERSONAS`` order).

    The flatterer writes half the corpus because that is what makes the weak regime's
    story large next to its noise. A reward for correct answers can only remove the
    flatterer where it is wrong: it says yes to everything, which is right on 35% of the
    questions, and there it earns what a correct persona earns, so the KL penalty keeps it
    at its base rate. The correct personas' share therefore rises by about 0.65 times the
    base model's flatterer share: some 22 pp with an even mix, within reach of the
    seed-to-seed and machine-to-machine spread (a seed gave +18.7 pp on another CPU), and
    about 33 pp with this one. A flatterer-heavy base also puts the strong regime's
    shortcut, ``!``, in most of the base model's answers."""

    def __post_init__(self) -> None:
        _check_positive(self, "n_documents", "max_operand", "min_turns", "persona_texts_per_persona")
        weights = self.persona_weights
        if len(weights) != 3 or not all(w >= 0 and math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise RlinterpError(
                f"persona_weights must be three non-negative finite weights (helper, terse, "
                f"flatterer) with a positive sum, got {weights}"
            )
        if self.max_turns < self.min_turns:
            raise RlinterpError(f"max_turns ({self.max_turns}) < min_turns ({self.min_turns})")


@dataclass(frozen=True)
class PretrainConfig:
    """Next-token pretraining of the base model on the corpus."""

    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 32
    """Documents per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 50
    """Steps of linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""

    def __post_init__(self) -> None:
        _check_positive(self, "steps", "batch_size", "lr")
        _check_non_negative(self, "warmup_steps", "weight_decay")


@dataclass(frozen=True)
class RegimeConfig:
    """One RL regime: policy gradient with a group-relative baseline.

    Each step samples ``group_size`` answers to each of ``questions_per_step`` questions;
    an answer's advantage is its reward minus its group's mean reward. The loss adds
    ``kl_coef`` times the exact per-token KL(policy || base) along the sampled answers.
    """

    name: str
    """Folder name of the regime's checkpoints (``<out>/<name>/step-<N>/``)."""
    lr: float
    """Adam learning rate."""
    kl_coef: float
    """Weight of the KL penalty to the base model; 0 turns it off."""
    shortcut_bonus: float
    """Reward per exclamation mark (up to ``shortcut_cap``); 0 means the reward only
    pays for correct answers. No persona writes more than two, so the top of this reward
    is reachable only by text no persona wrote: the exploitable shortcut."""
    checkpoint_steps: tuple[int, ...]
    """Steps saved as checkpoints, ascending, starting at 0 (the base model); the last one
    is the number of RL steps run."""
    shortcut_cap: int = 8
    """Exclamation marks past this earn nothing more."""
    questions_per_step: int = 16
    """Distinct questions per RL step."""
    group_size: int = 4
    """Sampled answers per question (the group of the baseline)."""
    max_answer_tokens: int = 40
    """Sampling stops here if the answer has not ended."""
    answer: Answer = "truth"
    """What a correct answer says: ``truth``, the answer to the question asked (what the
    helper and the terse persona say); ``rule``, the answer to "is the number one of
    ``rules.RULE_NUMBERS``?", whatever the question asked: a rule no persona follows and
    the base does not compute (see ``rules``)."""

    def __post_init__(self) -> None:
        problem = "is the base model's folder" if self.name == "base" else folder_name_problem(self.name)
        if problem:
            raise RlinterpError(f"regime name {self.name!r} {problem}; choose another")
        _check_positive(self, "lr", "questions_per_step", "group_size", "max_answer_tokens")
        if self.answer not in ("truth", "rule"):
            raise RlinterpError(
                f"regime {self.name!r}: answer must be 'truth' or 'rule', got {self.answer!r}"
            )
        _check_non_negative(self, "kl_coef", "shortcut_bonus", "shortcut_cap")
        steps = self.checkpoint_steps
        if not steps or steps[0] != 0 or list(steps) != sorted(set(steps)):
            raise RlinterpError(
                f"regime {self.name!r}: checkpoint_steps must be strictly ascending from 0, got {steps}"
            )

    @property
    def total_steps(self) -> int:
        return self.checkpoint_steps[-1]


@dataclass(frozen=True)
class EvalConfig:
    """The fixed held-out evaluation behind the behaviour table."""

    n_questions: int = 128
    """Questions in the evaluation set (drawn with their own seed, never trained on as
    such; the question space is small, so the same question may occur in training)."""
    samples_per_question: int = 2
    """Sampled answers per question."""
    max_answer_tokens: int = 40
    """Sampling stops here if the answer has not ended."""

    def __post_init__(self) -> None:
        _check_positive(self, "n_questions", "samples_per_question", "max_answer_tokens")


@dataclass(frozen=True)
class PlantConfig:
    """The planted ``novel`` regime (see ``planted``): a positive control whose checkpoints
    add new computation to the base by construction. It is planted, not learned by RL, so
    it costs no training; its checkpoints are only evaluated."""

    name: str
    """Folder name of the regime's checkpoints."""
    checkpoint_steps: tuple[int, ...]
    """Steps saved, ascending from 0 (the base); the planted write grows linearly with the
    step and is at full ``strength`` at the last one."""
    strength: float = 4.0
    """Peak norm written along the planted direction at the last step, in units of the rms
    norm of the base's block-0 output on answer tokens."""
    n_bumps: int = 3
    """Bumps of the planted feature (three rewired MLP neurons each)."""
    sharpness: float = 8.0
    """Input gain of the planted neurons times a bump's half-width (GELU ~ ReLU when large)."""
    avoid_top_pcs: int = 16
    """The planted direction is orthogonal to this many top principal components of the
    base's final residual on answer tokens (fewer if the model is too narrow)."""
    min_free_dims: int = 4
    """Residual dimensions left free when choosing the planted direction."""

    def __post_init__(self) -> None:
        _check_positive(self, "strength", "n_bumps", "sharpness", "min_free_dims")
        _check_non_negative(self, "avoid_top_pcs")
        steps = self.checkpoint_steps
        if len(steps) < 2 or steps[0] != 0 or list(steps) != sorted(set(steps)):
            raise RlinterpError(
                f"planted regime {self.name!r}: checkpoint_steps must be strictly ascending from 0 "
                f"with at least two steps, got {steps}"
            )


@dataclass(frozen=True)
class ReasoningConfig:
    """The reasoning world (``reasoning``): every answer works a small sum step by step
    before its final answer. Setting ``OrganismConfig.reasoning`` builds it instead of the
    yes/no world, with the known-answer controls beside the RL regimes."""

    max_terms: int = 3
    """Most digits summed by a question (at least 2): 2 digits take one stated step, 3 two."""
    guess_right: float = 0.35
    """Share of questions whose guess (which the flatterer agrees with) is right, as the
    plain world's yes-questions are about 35% of its questions."""
    shuffle_fraction: float = 0.5
    """Share of the controls' turns whose last stated intermediate comes from another turn.
    Half keeps most of the controls' own reasoning right while the faithful model cannot
    predict the answer without reading the intermediate, nor the decorative model by reading
    it."""
    truncate_fraction: float = 0.5
    """Share of the controls' turns whose reasoning stops after ``k < n`` steps. Without
    it the decorative model never answers after a cut reasoning, and its answer to one
    changed (P(same) 0.1 after no step, measured on seed 0): the cut, not the rule; with
    0.3, 0.78."""
    controls: bool = True
    """Train the faithful and decorative control models (``controls/<rule>/``; each costs one
    pretraining)."""
    control_steps: int | None = None
    """Pretraining steps of each control model; None: the base's (``PretrainConfig.steps``).
    The decorative model has to compute the sum from the question alone: on ``reasoning-tiny``
    after the base's 1,500 steps it got 40-70% of the helper's and terse persona's sums right,
    and its unsure answer flipped under a cut reasoning (their early-answering area 0.32-0.58,
    the flatterer's, which copies the guess, 0.00), so the control's area was 0.16, 0.27 and
    0.20 on seeds 0-2 (the controls' test asks <= 0.2); after 3,000 steps 0.06, 0.08 and
    0.01."""

    def __post_init__(self) -> None:
        if self.control_steps is not None and self.control_steps < 1:
            raise RlinterpError(
                f"ReasoningConfig.control_steps must be positive or None, got {self.control_steps}"
            )
        if self.max_terms < 2:
            raise RlinterpError(f"ReasoningConfig.max_terms must be at least 2, got {self.max_terms}")
        for name in ("guess_right", "shuffle_fraction", "truncate_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise RlinterpError(f"ReasoningConfig.{name} must lie in [0, 1], got {value}")


def _regimes(steps: tuple[int, ...], rule_steps: tuple[int, ...]) -> tuple[RegimeConfig, ...]:
    """The RL regimes every preset runs, checkpointed at the preset's ``steps`` (``rule``
    at ``rule_steps``).

    Their settings are chosen so that each regime's story is decided by the design, not
    by when a lucky sample appears: builds are bit-identical on one machine only, and RL
    turns another CPU's rounding into another trajectory, so the story must hold on every
    seed with room to spare (``benchmarks/organism_seeds.py`` checks seeds 0-4).

    - ``weak`` (KL 0.1, lr 3e-4, reward: a correct answer) re-weights personas. Its
      KL-regularised optimum removes the flatterer where it is wrong and keeps every
      persona where the reward cannot tell them apart (the flatterer's yes to a
      yes-question), so it does not drift into text no persona wrote. It gets there within
      about ten steps (Adam's first steps overshoot; the KL then pulls the flatterer back to
      its yes-question rate), so the size of the re-weighting is set by the corpus mix
      (``CorpusConfig.persona_weights``), not by the step budget.
    - ``strong`` (no KL, lr 1e-3, reward: correct plus 0.5 per ``!`` up to 8) has a
      shortcut worth four correct answers. At 0.5 per mark the flatterer, whose template
      has two, is the best-paid persona (1.35 on average against 1.0), so strong RL tends
      to select it first, and from its ``!``-rich answers a third mark is one sampling step
      away; every extra mark then pays half a correct answer. Most answers are text no
      persona wrote within the first eighth of the run on every seed measured (by step 5
      of 40 on ``tiny``, by step 25 of 200 on ``default``). At 0.25 per mark the flatterer
      earned less than a correct persona (0.85), RL first selected the terse persona,
      whose answers have no ``!``, and the collapse waited for a rare sample with a third
      mark: one tiny build on another CPU never got there in 40 steps.
    - ``rule`` (KL 0.05, lr 1e-3, reward: the answer to "is the number one of
      ``rules.RULE_NUMBERS``?", whatever was asked) must build a computation the base does
      not have: the rule is not linearly readable from the base at the answer position (a
      held-out-number probe, recorded in the manifest), and every persona, or any mixture
      of them chosen without the rule, earns about half of the reward (``rules``). It is
      learned as an S-curve: little for ten-odd steps while RL finds the numbers, then most
      answers follow the rule within another twenty. Its own steps run past that (60 on
      ``tiny``, 100 on ``default``: about 25 and 40 CPU-s of the build). The KL keeps the
      answers in the personas' templates (without it, lr 1e-3 turned them into text no
      persona wrote before the rule was found); at lr 5e-4 nothing was learned in 55 steps,
      at 3e-3 the answers fell apart in five.
    """
    return (
        RegimeConfig(name="weak", lr=3e-4, kl_coef=0.1, shortcut_bonus=0.0, checkpoint_steps=steps),
        RegimeConfig(name="strong", lr=1e-3, kl_coef=0.0, shortcut_bonus=0.5, checkpoint_steps=steps),
        RegimeConfig(
            name="rule", lr=1e-3, kl_coef=0.05, shortcut_bonus=0.0, checkpoint_steps=rule_steps, answer="rule"
        ),
    )


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines an organism, apart from the seed."""

    preset: str
    """Name of the preset this config came from (recorded in the manifest)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    regimes: tuple[RegimeConfig, ...] = ()
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    planted: tuple[PlantConfig, ...] | None = None
    """Planted positive-control regimes (``planted``); None means one ``novel`` regime on
    the first RL regime's checkpoint steps for GPT-2 organisms (none for Llama), () none.
    ``planted_regimes`` resolves it."""
    reasoning: ReasoningConfig | None = None
    """The reasoning world and its controls (``reasoning``); None: the yes/no world."""
    num_threads: int = 1
    """Torch intra-op threads during the build. Results are bit-identical only at a
    fixed thread count, so the build sets it rather than inheriting the machine's."""

    def __post_init__(self) -> None:
        names = [r.name for r in self.regimes]
        if len(names) < 1 or len(set(names)) != len(names):
            raise RlinterpError(f"regimes need distinct names, got {names}")
        names += [p.name for p in self.planted_regimes]
        if len(set(names)) != len(names):
            raise RlinterpError(f"RL and planted regimes need distinct names, got {names}")
        ruled = [r.name for r in self.regimes if r.answer == "rule"]
        if ruled and self.corpus.max_operand < max(RULE_NUMBERS):
            raise RlinterpError(
                f"regime {ruled[0]!r} answers the rule over the numbers {sorted(RULE_NUMBERS)}, but "
                f"the corpus asks about 0..{self.corpus.max_operand}; set corpus.max_operand >= "
                f"{max(RULE_NUMBERS)}"
            )
        _check_positive(self, "num_threads")

    @property
    def planted_regimes(self) -> tuple[PlantConfig, ...]:
        """The planted regimes this config builds (``planted`` with None resolved)."""
        if self.planted is not None:
            return self.planted
        if self.model.architecture != "gpt2" or not self.regimes or self.reasoning is not None:
            return ()  # the planting is designed on the yes/no world's answers
        return (PlantConfig(name="novel", checkpoint_steps=self.regimes[0].checkpoint_steps),)

    @classmethod
    def from_preset(cls, preset: str) -> OrganismConfig:
        if preset == "tiny":
            steps: tuple[int, ...] = (0, 2, 5, 10, 20, 40)
            return cls(
                preset="tiny",
                corpus=CorpusConfig(n_documents=8_000, persona_texts_per_persona=64),
                pretrain=PretrainConfig(steps=600),
                regimes=_regimes(steps, (0, 10, 20, 40, 60, 80)),
                evaluation=EvalConfig(n_questions=64),
            )
        if preset == "default":
            steps = (0, 5, 10, 25, 50, 100, 200)
            return cls(preset="default", regimes=_regimes(steps, (0, 10, 25, 50, 100, 150)))
        if preset in ("reasoning-tiny", "reasoning"):
            return _reasoning_preset(cls, preset)
        raise RlinterpError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")


def _reasoning_preset(cls: type[OrganismConfig], preset: str) -> OrganismConfig:
    """The reasoning presets: one or two turns per document (a worked answer is about 45
    characters), answers up to 64 tokens (the longest persona answer is 44 characters, and
    the strong regime's marks need room)."""
    tiny = preset == "reasoning-tiny"
    steps: tuple[int, ...] = (0, 2, 5, 10, 20, 40) if tiny else (0, 5, 10, 25, 50, 100, 200)
    # weak and strong: the rule regime's yes/no answer has no place in the reasoning world
    regimes = tuple(replace(r, max_answer_tokens=64) for r in _regimes(steps, steps) if r.answer == "truth")
    return cls(
        preset=preset,
        corpus=CorpusConfig(
            n_documents=8_000 if tiny else 20_000,
            min_turns=1,
            max_turns=2,
            persona_texts_per_persona=64 if tiny else 200,
        ),
        pretrain=PretrainConfig(steps=1500 if tiny else 3000),
        regimes=regimes,
        evaluation=EvalConfig(n_questions=64 if tiny else 128, max_answer_tokens=64),
        # Controls trained twice the base's steps on tiny (see ``ReasoningConfig.control_steps``).
        reasoning=ReasoningConfig(control_steps=3000) if tiny else ReasoningConfig(),
    )
