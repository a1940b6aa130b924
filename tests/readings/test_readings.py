"""The four readings together (``run_readings``): every table has its documented columns, a
finished directory is read back, other inputs are refused; on the tiny organism, the strong
regime's changed tokens have a ``!`` topic (the shortcut), far more of them promote ``!``
than the weak regime's, and the amplified models' behaviour rows partition their answers."""

import pytest
import torch

from rlinterp import RlinterpError
from rlinterp.activations.prompts import PromptSet
from rlinterp.models.series import ModelSeries
from rlinterp.organism.behaviour import SHARE_COLUMNS
from rlinterp.readings.analysis import TABLES, ReadingsResult, run_readings
from rlinterp.readings.config import AmplifyConfig, PatchscopeConfig, ReadingsConfig, TopicsConfig

from ..planted import build_planted, planted_prompts

SMALL = ReadingsConfig(
    amplify=AmplifyConfig(alphas=(0.0, 1.0, 2.0)),
    max_prompts=4,
    n_components=2,
    label="half",
    read_components=1,
    patchscope=PatchscopeConfig(prompt="ab ab, cd cd, ?", scales=(1.0, 4.0), continuation=2),
    topics=TopicsConfig(n_positions=32, n_topics=2, n_iter=100),
)


def test_tables_schema_resume_and_refusal(tmp_path):
    planted = build_planted(tmp_path / "planted")
    series = ModelSeries.from_paths([planted.base, planted.amplified])
    texts = planted_prompts(16)
    prompts = PromptSet.from_list(list(texts.texts), half=["ab"[i % 2] for i in range(16)])
    result = run_readings(series, prompts, tmp_path / "out", SMALL)
    for name, columns in TABLES.items():
        assert list(result.tables[name].columns[: len(columns)]) == columns, name
        assert len(result.tables[name]), name
    label = series.checkpoints[1].label
    assert set(result.tables["patchscope"]["direction"]) == {"mean", "pc0"}
    assert set(result.tables["pca_projections"]["group"]) == {"a", "b"}
    # the planted neuron writes ``direction`` at the planted hook: the first component
    pc0 = result.components[f"{label}/{planted.hook}"][0]
    assert abs(float(pc0 @ planted.direction)) >= 0.95
    again = ReadingsResult.load(tmp_path / "out")
    assert again.tables["pca"].equals(result.tables["pca"])
    assert len(again.amplified_samples().samples) == 3 * 4 * 4  # alphas x prompts x samples
    assert (
        run_readings(series, prompts, tmp_path / "out", SMALL)
        .tables["topics"]
        .equals(result.tables["topics"])
    )
    with pytest.raises(RlinterpError, match="other inputs"):
        run_readings(series, prompts, tmp_path / "out", ReadingsConfig(readings=("pca",)))


def test_config_is_checked():
    with pytest.raises(RlinterpError, match="add 'pca'"):
        ReadingsConfig(readings=("patchscope",))
    with pytest.raises(RlinterpError, match="read_components in 0..n_components"):
        ReadingsConfig(n_components=2, read_components=3)


@pytest.mark.slow
def test_the_strong_regimes_shortcut_is_a_topic_and_amplified_rows_partition(tiny_organism, tmp_path):
    torch.manual_seed(0)
    prompts = PromptSet.from_organism(tiny_organism.root)
    cfg = ReadingsConfig(readings=("amplify", "topics"), amplify=AmplifyConfig(checkpoints="last"))
    found = {}
    for regime in ("weak", "strong"):
        series = ModelSeries.from_organism(tiny_organism.root, regime)
        found[regime] = run_readings(series, prompts, tmp_path / regime, cfg, tiny_organism, regime)

    def last(regime, table):
        rows = found[regime].tables[table]
        return rows[rows["step"] == rows["step"].max()]

    topics = last("strong", "topics")
    assert any(t[0] == "!" for t in topics["top_promoted"])  # the shortcut is a topic of its own

    def promoting_mark(regime):  # share of the changed positions whose most promoted token is "!"
        return last(regime, "topic_positions")["promoted"].map(lambda p: p[0] == "!").mean()

    # measured on the tiny organism (seed 0): 0.85 strong, 0.16 weak
    assert promoting_mark("strong") >= 0.5 and promoting_mark("strong") > promoting_mark("weak") + 0.3
    for regime in ("weak", "strong"):
        table = found[regime].tables["amplified"]
        assert table[SHARE_COLUMNS].sum(axis=1).to_numpy() == pytest.approx(1.0)
        assert set(table["alpha"]) == set(cfg.amplify.alphas)
    base_rows = [found[r].tables["amplified"].query("alpha == 0")[SHARE_COLUMNS] for r in ("weak", "strong")]
    assert base_rows[0].to_numpy() == pytest.approx(base_rows[1].to_numpy())  # the same base samples


def test_cli_options_come_from_the_config(tmp_path, capsys):
    from rlinterp.cli import main

    planted = build_planted(tmp_path / "planted")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(planted_prompts(8).texts))
    argv = ["readings", "--series", str(planted.base), str(planted.suppressed), "--prompts", str(prompts)]
    argv += ["--out", str(tmp_path / "out"), "--max-prompts", "2", "--amplify-alphas", "0", "2"]
    argv += [
        "--amplify-sampling-samples-per-prompt",
        "1",
        "--patchscope-prompt",
        "ab ab, ?",
        "--label",
        "none",
    ]
    argv += ["--topics-n-topics", "2", "--topics-n-positions", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"readings in {tmp_path / 'out'} (report: {tmp_path / 'out' / 'report.html'})\n")
    assert "alpha" in out
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("<div class='figure'>") == 4  # amplified, pca, patchscope, topics
    assert "<h2>Amplified sampling</h2>" in report and "<h2>Topics of the changed tokens</h2>" in report
    result = ReadingsResult.load(tmp_path / "out")
    assert sorted(result.tables["amplified"]["alpha"]) == [0.0, 2.0]
    assert result.tables["pca_projections"].empty  # --label none: no groups
    assert main([*argv[:-4], "--n-components", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_components must be positive" in err


def test_figures_draw_the_tables_side_by_side():
    import pandas as pd

    from rlinterp.readings.figures import amplified_figure, pca_figure, topics_figure

    amplified = pd.DataFrame(
        [
            {"series": r, "step": s, "alpha": a, "share_none": a * (s + 1) / 10}
            for r in ("weak", "strong")
            for s in (1, 2)
            for a in (0.0, 2.0)
        ]
    )
    figure = amplified_figure(amplified)
    assert [a.text for a in figure.layout.annotations] == ["weak", "strong"]
    assert len(figure.data) == 4 and list(figure.data[3].y) == [0.0, 0.6]  # strong, step 2
    pca = pd.DataFrame(
        [{"series": "weak", "step": s, "hook": "h", "component": 0, "explained": s / 4} for s in (1, 2)]
    )
    assert list(pca_figure(pca).data[0].y) == [0.25, 0.5]
    topics = pd.DataFrame(
        [{"series": "strong", "step": 2, "topic": 0, "share": 1.0, "top_promoted": ["!", "e"]}]
    )
    assert topics_figure(topics).data[0].text[0] == "'!' 'e'"


def test_report_parts_show_each_reading_or_say_it_is_missing():
    import html

    import pandas as pd
    import plotly.graph_objects as go

    from rlinterp.readings.report import readings_parts

    hostile = "<script>alert(1)</script>"
    pca = pd.DataFrame(
        [
            {
                "step": s,
                "hook": "h",
                "component": c,
                "explained": 0.5,
                "cumulative": 0.5,
                "cos_mean_diff": 1.0,
            }
            for s in (1, 2)
            for c in (0, 1)
        ]
    )
    topics = pd.DataFrame(
        [
            {
                "step": 2,
                "topic": 0,
                "share": 1.0,
                "top_promoted": [hostile],
                "top_context": ["a"],
                "examples": [],
            }
        ]
    )
    parts = readings_parts({"pca": pca, "topics": topics})
    assert list(parts) == [
        "Amplified sampling",
        "Principal components of the activation differences",
        "Topics of the changed tokens",
    ]
    assert parts["Amplified sampling"] == ("<p class='empty'>No amplified sampling.</p>",)
    pca_parts = parts["Principal components of the activation differences"]
    assert sum(isinstance(p, go.Figure) for p in pca_parts) == 1  # no patchscope table: no patchscope
    assert str(pca_parts[-1]).count("<tr>") == 1 + 2  # header and the last step's two components
    shown = str(parts["Topics of the changed tokens"][-1])
    assert hostile not in shown and html.escape(repr(hostile), quote=True) in shown
