"""The comparative benchmark harness (benchmarks/bench.py) in its quick mode: one run
writes a JSON with every lane, in which the numbers that are exact by construction hold
(activations identical to the tuned TransformerLens loop's, a sweep trained on one stream
identical to separate runs) and the rest are sane. Speeds are not asserted."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _contenders(lane: dict) -> dict[str, dict]:
    return {
        name: stats for name, stats in lane.items() if isinstance(stats, dict) and "tokens_per_s" in stats
    }


def test_quick_benchmark_reports_every_lane(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert "plotly" in (tmp_path / "bench.html").read_text()[:100_000].lower()

    assert result["settings"]["quick"] and result["settings"]["repeats"] == 2
    assert result["machine"]["torch_threads"] == 1 and result["machine"]["cpu_count"] >= 1
    assert len(result["machine"]["load_average"]) == 3
    assert set(result["flops_per_token"]) == {"sae", "crosscoder", "forward"}
    assert all(lane["gflops"] > 0 for lane in result["calibration"].values())

    lanes = result["lanes"]
    assert set(lanes) == {"A", "B", "C", "scaling", "cli"} and set(lanes["B"]) == {"short", "long"}
    # the command line: every contender measured in fresh interpreters, the answering ones 5 times
    for name in ("python", "import", "help", "run-help", "wrong-option", "print-config", "library"):
        stats = lanes["cli"][name]
        assert len(stats["wall"]["values"]) == (2 if name == "library" else 5)
        assert stats["cpu"]["median"] > 0 and stats["wall"]["median"] > 0
    assert lanes["cli"]["library"]["cpu"]["median"] > lanes["cli"]["help"]["cpu"]["median"]
    assert set(lanes["cli"]["within_target"]) == {"help", "run-help", "wrong-option", "print-config"}
    expected = {
        "A": {"rlinterp", "saelens", "plain", "diff-sae", "crosscoder"},
        "C": {"one", "joint", "separate"},
        "B": {"rlinterp", "tl-tuned", "tl-forward", "hf-forward"},
    }
    # the peer contender runs where make bench installed it (a quick run never downloads)
    assert set(_contenders(lanes["A"])) - {"dictionary-learning"} == expected["A"]
    peer = lanes["A"]["dictionary_learning"]  # the version it ran, or why it did not run
    ran = peer == "dictionary-learning==0.1.0"
    assert ("dictionary-learning" in lanes["A"]) == ran and (ran or "install" in peer), peer
    for lane in (lanes["A"], lanes["B"]["short"], lanes["B"]["long"], lanes["C"]):
        contenders = _contenders(lane)
        assert set(contenders) - {"dictionary-learning"} in expected.values()
        for stats in contenders.values():
            assert len(stats["seconds"]["values"]) == 2
            assert (
                0
                < stats["tokens_per_s"]["min"]
                <= stats["tokens_per_s"]["median"]
                <= stats["tokens_per_s"]["max"]
            )
            assert stats["eta"] > 0 and math.isfinite(stats["eta"])
            if result["machine"]["forked_runs"]:
                assert stats["peak_mib"]["median"] >= 0
    for stats in _contenders(lanes["A"]).values():
        assert -1 < stats["explained_variance"] <= 1
        assert stats["fvu"] >= 0 and stats["l0"] > 0 and 0 <= stats["dead"] <= lanes["A"]["sizes"]["d_sae"]
    assert {"rlinterp / saelens", "rlinterp / plain", "fvu rlinterp / dictionary-learning"} <= set(
        lanes["A"]["ratios"]
    )

    for shape in ("short", "long"):
        lane = lanes["B"][shape]
        for name in ("rlinterp", "tl-tuned"):
            assert lane[name]["max_abs_diff_vs_tuned"] < 1e-4, (shape, name)
            assert lane[name]["written_mib"] > 0
        for stats in _contenders(lane).values():
            assert 0 < stats["switch_fraction"] < 1
        assert lane["hf-forward"]["written_mib"] == 0

    # the sweep trained on one stream is, dictionary for dictionary, the separate runs
    assert lanes["C"]["max_explained_variance_difference_joint_vs_separate"] == 0
    assert lanes["C"]["joint"]["dictionaries"] == len(lanes["C"]["sizes"]["ks"])

    points = lanes["scaling"]["points"]
    for tool in ("harvest", "diff"):
        assert {f"{tool} prompts={m}x" for m in (1, 4, 16)} <= set(points)
        tokens = [points[f"{tool} prompts={m}x"]["tokens"] for m in (1, 4, 16)]
        assert tokens[1] == 4 * tokens[0] and tokens[2] == 16 * tokens[0]
        assert (
            points[f"{tool} prompts=1x"]["weights_mib"] > 0 and points[f"{tool} prompts=1x"]["batch_mib"] > 0
        )
