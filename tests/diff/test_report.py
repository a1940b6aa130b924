"""Figures are built from tables alone, and the report escapes model-generated text."""

import pandas as pd

from rlinterp.diff.analysis import SeriesDiff
from rlinterp.diff.report import activation_heatmap, kl_figure, render_report, weight_heatmap

EVIL = "<script>alert(1)</script>"


def _diff() -> SeriesDiff:
    labels, steps = ["base", "step-5"], [0, 5]
    weights = pd.DataFrame(
        {
            "label": labels,
            "step": steps,
            "parameter": ["w", "w"],
            "base_norm": [2.0, 2.0],
            "delta_norm": [0.0, 1.0],
            "rel_frobenius": [0.0, 0.5],
        }
    )
    by_component = pd.DataFrame(
        {
            "label": labels * 2,
            "step": steps * 2,
            "layer": pd.array([0, 0, 1, 1], dtype="Int64"),
            "component": ["mlp"] * 4,
            "rel_frobenius": [0.0, 0.1, 0.0, 0.3],
        }
    )
    activations = pd.DataFrame(
        {
            "label": labels,
            "step": steps,
            "hook": ["blocks.0.hook_resid_post"] * 2,
            "rel_diff_norm": [0.0, 0.25],
            "cka": [1.0, 0.9],
        }
    )
    outputs = pd.DataFrame({"label": labels, "step": steps, "kl_mean": [0.0, 0.7], "kl_p90": [0.0, 1.5]})
    lens = pd.DataFrame(
        {
            "label": ["step-5"] * 2,
            "hook": ["blocks.0.hook_resid_post"] * 2,
            "direction": ["promoted", "suppressed"],
            "rank": [0, 0],
            "token": [EVIL, "&"],
            "logit": [3.0, -2.0],
        }
    )
    tops = pd.DataFrame(
        {
            "label": ["step-5"],
            "source": ["kl"],
            "kl": [1.5],
            "diff_norm": [float("nan")],
            "context": [EVIL],
            "token": ["<b>"],
            "base_top": ["</td>"],
            "post_top": ["!"],
        }
    )
    return SeriesDiff(weights, by_component, activations, outputs, lens, tops)


def test_figures_carry_the_table_values():
    diff = _diff()
    heat = weight_heatmap(diff).data[0]
    assert list(heat.y) == ["L0 mlp", "L1 mlp"] and list(heat.x) == ["0", "5"]
    assert heat.z.tolist() == [[0.0, 0.1], [0.0, 0.3]]
    assert activation_heatmap(diff).data[0].z.tolist() == [[0.0, 0.25]]
    assert list(kl_figure(diff).data[0].y) == [0.0, 0.7]


def test_summary_and_escaping():
    diff = _diff()
    assert diff.summary()[1]["weight_rel_frobenius"] == 0.5
    page = render_report(diff, title="t")
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    tokens_section = page.split("<h2>Tokens that changed most</h2>")[1]
    assert "<b>" not in tokens_section.replace("<b>step-5</b>", "")
    assert "&#x27;&lt;/td&gt;&#x27; -&gt; &#x27;!&#x27;" in tokens_section
    assert page.count("* plotly.js v") == 1  # plotly.js inlined, once
