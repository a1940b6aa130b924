"""The notebooks: stored without outputs, and every one executes top to bottom (nbclient) on
the tiny organism, from a copy of ``notebooks/`` whose ``../artifacts/organism/tiny-seed0``
is the session's tiny organism (so it is built once)."""

import json
import shutil
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_for_each_use():
    names = {p.stem for p in NOTEBOOKS}
    for expected in ("quickstart", "dictionaries", "tracking", "paper_figures", "own_checkpoints"):
        assert any(expected in name for name in names), expected


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_stored_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: strip outputs"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_organism):
    root = tmp_path_factory.mktemp("notebooks")
    shutil.copytree(NOTEBOOKS[0].parent, root / "notebooks")
    (root / "artifacts" / "organism").mkdir(parents=True)
    (root / "artifacts" / "organism" / "tiny-seed0").symlink_to(tiny_organism.root.resolve())
    return root / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, workdir):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(workdir / path.name, as_version=4)
    # The timeout guards against a hung kernel, not a speed target (those are benchmarks): the
    # quickstart's pipeline cell took 744 CPU-s (16.8 min wall at load 2-6) on this machine.
    NotebookClient(
        notebook, timeout=2400, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
