"""A run result built from hand-written tables (no model): for report, card, figure and
browser tests that need known values and hostile text."""

from pathlib import Path

import pandas as pd

from rlinterp.pipeline.result import RunResult
from rlinterp.tracking.lineage import CLASSES
from tests.diff.test_report import _diff

EVIL = '<script>alert("x")</script>\' onmouseover=\'alert(1)"'
"""Model text that would run script or break out of an attribute if not escaped."""
HOOK = "blocks.0.hook_resid_post"
SERIES = ("weak", "strong")
N_LATENTS = 5


def stage_tables() -> dict[str, pd.DataFrame]:
    """The tables the tracking, selection and circuits stages leave, with known values: in
    ``strong`` at step 5, latent 4 is amplified and one latent born (3 changed latents),
    the index is 0.8 (block 1 of blocks 0-1) with a transition at step 5, and the shortcut's
    carriers are new; in ``weak`` nothing changed class, the index is 0.1 and the carriers
    were already used.
    One persona is named ``EVIL`` (labels come from the user's data)."""
    classes = tuple(c for c in CLASSES if c != "new_direction")  # as written before that class
    summary = pd.DataFrame(
        [
            {
                "series": r,
                "source": "on-policy",
                "label": "base" if s == 0 else "step-5",
                "step": s,
                "explained_variance": 0.9,
                **{f"n_{c}": 0 for c in classes},
                **({"n_amplified": 2, "n_born": 1} if (r, s) == ("strong", 5) else {}),
                "born": 1,
                "noise_born": 0,
                "novel_born": 0,
                "seed_born": 0,
            }
            for r in SERIES
            for s in (0, 5)
        ]
    )
    lineage = pd.DataFrame(
        [
            {
                "series": r,
                "evidence": "tracked",
                "source": "on-policy",
                "step": s,
                "latent": j,
                "class": "amplified" if (r, s, j) == ("strong", 5, 4) else "stable",
                "frequency_ratio": 1.0,
                "activity_ratio": 1.5 if (r, s, j) == ("strong", 5, 4) else 1.0,
                "dec_cos_base": 1.0,
            }
            for r in SERIES
            for s in (0, 5)
            for j in range(N_LATENTS)
        ]
    )
    index = pd.DataFrame(
        [
            {
                "series": r,
                "label": "base" if s == 0 else "step-5",
                "step": s,
                "index": 0.0 if s == 0 else (0.1 if r == "weak" else 0.8),
                "index_lo": 0.0 if s == 0 else (0.0 if r == "weak" else 0.7),
                "index_hi": 0.0 if s == 0 else (0.2 if r == "weak" else 0.9),
                "side": "selection" if s == 0 or r == "weak" else "novelty",
                "layer": 1 if (r, s) == ("strong", 5) else 0,
                "fvu_drift": 0.0,
                "persona_share": 0.5,
                "persona_baseline": 0.1,
            }
            for r in SERIES
            for s in (0, 5)
        ]
    )
    layers = pd.DataFrame(
        [
            {
                "series": r,
                "label": "base" if s == 0 else "step-5",
                "step": s,
                "layer": layer,
                "novelty": novelty,
                "novelty_lo": max(novelty - 0.1, 0.0),
                "novelty_hi": novelty + 0.1 if novelty else 0.0,
                "side": "novelty" if novelty > 0.6 else "selection",
                "component": "mlp",
                "local_share": 0.5,
                "local_rms": 0.2,
            }
            for r in SERIES
            for s in (0, 5)
            for layer in (0, 1)
            for novelty in [0.8 if (r, s, layer) == ("strong", 5, 1) else 0.1 if s else 0.0]
        ]
    )
    transition = pd.DataFrame(
        [
            {
                "series": "weak",
                "hook": HOOK,
                "index_found": False,
                "index_step": None,
                "index_layer": None,
                "behavioural_step": None,
            },
            {
                "series": "strong",
                "hook": HOOK,
                "index_found": True,
                "index_step": 5,
                "index_step_lo": 5,
                "index_step_hi": 5,
                "index_layer": 1,
                "behavioural_step": 5,
            },
        ]
    )
    personas = pd.DataFrame(
        [
            {"series": r, "persona": p, "rank": 0, "latent": j, "auroc": 0.9}
            for r in SERIES
            for j, p in enumerate(("helper", EVIL))
        ]
    )
    steps = pd.DataFrame(
        [
            {
                "series": r,
                "metric": "shortcut",
                "label": "step-5",
                "step": 5,
                "change": 1.0,
                "carriers": "L1 MLP",
                "joint_recovery": 0.9,
                "overlap": 1.0 if r == "weak" else 0.0,
                "chance_overlap": 0.2,
                "cancellation": 1.0,
                "verdict": "enhanced" if r == "weak" else "new",
                "top_sufficiency": "L1 MLP (0.90)",
            }
            for r in SERIES
        ]
    )
    readings = _readings_tables()
    return {
        **readings,
        "tracking/summary": summary,
        "tracking/lineage": lineage,
        "selection/index": index,
        "selection/index_layers": layers,
        "selection/transition": transition,
        "selection/persona_latents": personas,
        "circuits/steps": steps,
    }


def _readings_tables() -> dict[str, pd.DataFrame]:
    """The readings stage's tables: in ``strong`` the amplified models leave the personas
    (``share_none`` 0.9 at alpha 2), the first component explains 0.8, and the patchscope,
    lens and topics read ``!`` and ``EVIL`` (model text)."""
    hook = HOOK
    amplified = pd.DataFrame(
        [
            {"series": r, "label": "step-5", "step": 5, "alpha": a, "n_answers": 8, "base_logprob_mean": -a,
             "answer_tokens": 10.0, "stopped": 1.0, "reward": 1.0, "accuracy": 0.5,
             "share_none": (0.9 if r == "strong" else 0.1) * a / 2}
            for r in SERIES
            for a in (0.0, 1.0, 2.0)
        ]
    )  # fmt: skip
    pca = pd.DataFrame(
        [
            {"series": r, "label": "step-5", "step": 5, "hook": hook, "layer": 0, "component": c,
             "variance": 1.0, "explained": (0.8 if r == "strong" else 0.3) / (c + 1),
             "cumulative": 0.9, "cos_mean_diff": 0.5, "n_tokens": 100}
            for r in SERIES
            for c in (0, 1)
        ]
    )  # fmt: skip
    patchscope = pd.DataFrame(
        [
            {"series": r, "label": "step-5", "step": 5, "direction": "mean", "hook": hook, "scale": scale,
             "norm": scale, "top_tokens": ["!", EVIL], "top_probs": [0.6, 0.1], "continuation": EVIL,
             "lens": [EVIL, "!"]}
            for r in SERIES
            for scale in (1.0, 2.0)
        ]
    )  # fmt: skip
    topics = pd.DataFrame(
        [
            {"series": r, "label": "step-5", "step": 5, "topic": t, "share": 0.5, "n_positions": 4,
             "top_promoted": ["!", EVIL], "top_context": [EVIL], "examples": [f"wow|{EVIL} -> !"]}
            for r in SERIES
            for t in (0, 1)
        ]
    )  # fmt: skip
    return {
        "readings/amplified": amplified,
        "readings/pca": pca,
        "readings/patchscope": patchscope,
        "readings/topics": topics,
    }


def synthetic_run(root: Path, stages: bool = False) -> RunResult:
    """Two series sharing one diff; five latents, each with a base and a per-series top
    context holding ``EVIL``; latent j's mean activation at the last step is j / 10 higher
    in ``strong`` (so the latent table sorts them 4, 3, 2, 1, 0). ``stages``: with the
    later stages' tables (``stage_tables``)."""
    diff = _diff()
    steps = [0, 5]
    behaviour = pd.DataFrame(
        [
            {"regime": r, "step": s, "accuracy": 0.5, "share_helper": 0.5, "share_none": 0.5}
            for r in SERIES
            for s in steps
        ]
    )
    fvu = pd.DataFrame(
        [
            {
                "series": r,
                "label": "base" if s == 0 else "step-5",
                "step": s,
                "fvu": 0.1 if s == 0 else (0.2 if r == "weak" else 0.4),
                "explained_variance": 0.9,
                "l0": 4.0,
                "dead_fraction": 0.0,
                "dense_fraction": 0.0,
                "n_tokens": 100,
            }
            for r in SERIES
            for s in steps
        ]
    )
    activity = pd.DataFrame(
        [
            {
                "series": r,
                "label": "base" if s == 0 else "step-5",
                "step": s,
                "latent": j,
                "mean_activation": 1.0 + (j / 10 if (r == "strong" and s == 5) else 0.0),
                "firing_rate": 0.1,
            }
            for r in SERIES
            for s in steps
            for j in range(N_LATENTS)
        ]
    )
    contexts = pd.DataFrame(
        [
            {
                "latent": j,
                "rank": 0,
                "activation": 2.0,
                "prompt": 0,
                "position": 4,
                "tokens": ["Q", ":", " ", EVIL, '"', "'"],
                "values": [0.0, 0.0, 0.5, 2.0, 0.0, 0.0],
                "peak": 3,
                "series": series,
                "label": "base" if series == "base" else "step-5",
            }
            for j in range(N_LATENTS)
            for series in ("base", *SERIES)
        ]
    )
    decoder = pd.DataFrame(
        [
            {"latent": j, "direction": d, "rank": 0, "token": EVIL, "logit": 1.0 if d == "promoted" else -1.0}
            for j in range(N_LATENTS)
            for d in ("promoted", "suppressed")
        ]
    )
    return RunResult(
        root=root,
        config={"dictionaries": {"cards": 3}},
        diffs={r: diff for r in SERIES},
        behaviour=behaviour,
        fvu_drift=fvu,
        latent_steps=activity,
        contexts=contexts,
        decoder_tokens=decoder,
        dictionary_info={"hook": HOOK},
        tables=stage_tables() if stages else {},
    )
