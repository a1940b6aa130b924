"""Paper figures: every figure exports to a valid PDF and SVG (kaleido + Chromium), the same
bytes for the same data, and ``rlinterp figures`` writes them for a run directory."""

import shutil
import xml.etree.ElementTree as ET

import pytest

from rlinterp.pipeline.figures import FIGURES, export_figures
from tests.run_fixtures import synthetic_run

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="static export needs Chromium: run `make setup` (apt-get install chromium)",
)


def test_pdf_and_svg_for_every_figure_byte_stable(tmp_path):
    run = synthetic_run(tmp_path, stages=True)  # every figure with data, tracking and index included
    for fmt in ("pdf", "svg"):
        first = export_figures(run, tmp_path / "a", fmt)
        again = export_figures(run, tmp_path / "b", fmt)
        assert [p.name for p in first] == [f"{name}.{fmt}" for name in FIGURES]
        for path, other in zip(first, again, strict=True):
            data = path.read_bytes()
            if fmt == "pdf":
                assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), path
            else:
                root = ET.fromstring(data)
                assert root.tag == "{http://www.w3.org/2000/svg}svg", path
                assert float(root.get("width")) in (252, 504)  # a paper column or the text width
            assert data == other.read_bytes(), f"{path.name} differs between two exports"


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from rlinterp.cli import main

    assert main(["figures", str(tmp_path), "--format", "svg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlinterp figures: error:") and "is not an rlinterp run directory" in err


def _legend_fits(svg: bytes) -> tuple[bool, str]:
    """Whether every legend entry of an exported SVG lies inside the legend's box, and the
    box inside the figure (plotly clips a legend taller than its room, silently)."""
    import re

    text = svg.decode()
    root = ET.fromstring(svg)
    width, height = float(root.get("width")), float(root.get("height"))
    legend = re.search(r'<g class="legend"[^>]*transform="translate\(([-\d.]+),([-\d.]+)\)"', text)
    if legend is None:
        return True, "no legend"
    x, y = map(float, legend.groups())
    box = re.search(r'<rect class="bg"[^>]*width="([\d.]+)" height="([\d.]+)"', text[legend.end() :])
    w, h = map(float, box.groups())
    entries = [
        tuple(map(float, m))
        for m in re.findall(r'class="traces" transform="translate\(([-\d.]+),([-\d.]+)\)"', text)
    ]
    fits = x + w <= width + 1 and y + h <= height + 1 and all(a <= w and b <= h for a, b in entries)
    return fits, f"legend at ({x}, {y}) size {w}x{h} in {width}x{height}, entries at {entries}"


def test_no_paper_figure_clips_its_legend(tmp_path):
    """Checked on the exported SVGs; the check sees the clipping of the old theme (a column
    of 8 entries beside the tracking panels at 211 pt height)."""
    import plotly.io as pio

    from rlinterp.pipeline.figures import paper, tracking_figure

    run = synthetic_run(tmp_path, stages=True)
    for path in export_figures(run, tmp_path / "svg", "svg"):
        fits, where = _legend_fits(path.read_bytes())
        assert fits, f"{path.name}: {where}"
    column = paper(tracking_figure(run))
    column.update_layout(legend={"orientation": "v", "yref": "paper", "y": 1, "yanchor": "top", "x": 1.02})
    old = pio.to_image(column, format="svg", width=column.layout.width, height=211)
    assert not _legend_fits(old)[0]
