"""The tracking report on hand-made tables: it draws the latents whose mass changed most in
each class, shows their evidence and contexts, and escapes every piece of model text."""

import pandas as pd

from rlinterp.tracking.lineage import LINEAGE_COLUMNS
from rlinterp.tracking.report import chosen_latents, render_tracking_report
from rlinterp.tracking.result import TrackResult
from rlinterp.tracking.trajectories import CONTEXT_COLUMNS, FIT_COLUMNS, TRAJECTORY_COLUMNS

EVIL = "<script>alert(1)</script>"


def result() -> TrackResult:
    """Latents 0-2 amplified by 2x, 3x and 1.5x mass, latent 3 suppressed; steps 0 and 10."""
    mass = {0: (1.0, 2.0), 1: (1.0, 3.0), 2: (1.0, 1.5), 3: (1.0, 0.2)}
    trajectories, lineage = [], []
    for latent, (before, after) in mass.items():
        for step, value in ((0, before), (10, after)):
            label = "base" if step == 0 else "step-10"
            row = dict.fromkeys(TRAJECTORY_COLUMNS, 1.0)
            trajectories.append(
                {**row, "source": "on-policy", "label": label, "step": step, "latent": latent, "mass": value}
            )
            cls = "stable" if step == 0 else ("suppressed" if latent == 3 else "amplified")
            evidence = dict.fromkeys(LINEAGE_COLUMNS)
            lineage.append(
                {
                    **evidence,
                    "evidence": "tracked",
                    "source": "on-policy",
                    "step": step,
                    "label": label,
                    "latent": latent,
                    "class": cls,
                    "activity_ratio": value / before,
                    "frequency_ratio": 1.0,
                    "activation_ratio": value / before,
                    "dec_cos_base": float("nan"),
                }
            )
    contexts = [
        {"source": "on-policy", "label": "step-10", "step": 10, "latent": 1, "rank": 0, "activation": 2.0}
        | {"context": f"A: {EVIL}", "token": "<b>"},
        {"source": "on-policy", "label": "base", "step": 0, "latent": 1, "rank": 0, "activation": 1.0}
        | {"context": "A: sure", "token": "!"},
    ]
    samples = pd.DataFrame(
        [
            {"prompt_index": 0, "sample": 0, "prompt": "Q: <i>?", "response": EVIL, "step": s, "label": "x"}
            for s in (0, 10)
        ]
    )
    fit = pd.DataFrame(
        [
            {
                "source": "on-policy",
                "label": lab,
                "step": s,
                "n_tokens": 10,
                "explained_variance": ev,
                "l0": 4.0,
            }
            for lab, s, ev in (("base", 0, 0.9), ("step-10", 10, 0.5))
        ],
        columns=FIT_COLUMNS,
    )
    empty = pd.DataFrame()
    return TrackResult(
        trajectories=pd.DataFrame(trajectories),
        trajectory_fit=fit,
        logit_tokens=empty,
        contexts=pd.DataFrame(contexts, columns=CONTEXT_COLUMNS),
        stagewise=empty,
        stagewise_fit=empty,
        matches=pd.DataFrame(columns=["source", "comparison", "step", "relation"]),
        lineage=pd.DataFrame(lineage),
        controls=pd.DataFrame(columns=["control", "source", "label", "step", "measure", "value"]),
        samples=samples,
    )


def test_the_latents_that_changed_most_are_drawn_per_class():
    chosen = chosen_latents(result(), "on-policy")
    assert chosen["amplified"] == [1, 0, 2] and chosen["suppressed"] == [3]
    assert chosen["born"] == [] and chosen["died"] == []


def test_model_text_is_escaped():
    page = render_tracking_report(result(), title="track <report>")
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<mark>&lt;b&gt;</mark>" in page and "Q: &lt;i&gt;?" in page
    assert "<title>track &lt;report&gt;</title>" in page
    assert "activity_ratio: 3" in page  # the evidence is shown beside the class
