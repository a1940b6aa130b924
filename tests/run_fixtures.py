"""A run result built from hand-written tables (no model): for report, card, figure and
browser tests that need known values and hostile text."""

from pathlib import Path

import pandas as pd

from rlinterp.run_result import RunResult
from tests.test_report import _diff

EVIL = '<script>alert("x")</script>\' onmouseover=\'alert(1)"'
"""Model text that would run script or break out of an attribute if not escaped."""
HOOK = "blocks.0.hook_resid_post"
SERIES = ("weak", "strong")
N_LATENTS = 5


def synthetic_run(root: Path) -> RunResult:
    """Two series sharing one diff; five latents, each with a base and a per-series top
    context holding ``EVIL``; latent j's mean activation at the last step is j / 10 higher
    in ``strong`` (so the latent table sorts them 4, 3, 2, 1, 0)."""
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
    )
