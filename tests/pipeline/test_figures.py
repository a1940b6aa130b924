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
