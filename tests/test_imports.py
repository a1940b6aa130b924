"""The package's import graph has no cycles and follows the table of layers (a module imports
only from its own layer or below: the folders in the order data flows), and ``import rlinterp``
is the one import the notebooks need.

The graph is read from the source with ``ast``: every ``import`` counts, at module level,
inside functions and under ``TYPE_CHECKING`` alike, since each of those is a dependency."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import rlinterp

PACKAGE = Path(rlinterp.__file__).parent
NOTEBOOKS = PACKAGE.parent / "notebooks"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The names an import statement in ``module`` asks for, resolved to absolute names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, node.module] if node.module else anchor)
    else:
        base = node.module or ""
    submodules = [f"{base}.{alias.name}" for alias in node.names]
    # ``from . import name`` names a submodule of the package; ``from pkg import name`` may
    if node.level and not node.module:
        return submodules
    return [base, *submodules]


def import_graph() -> dict[str, set[str]]:
    """``module -> rlinterp modules it imports``, the root package (the public facade, which
    imports everything and which no module may import) left out. Importing ``a.b.c`` runs
    ``a.b``'s ``__init__`` first, so it depends on that package too, unless the importer
    lives inside it."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        if module == "rlinterp":
            continue
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(module, is_package, node):
                    parts = name.split(".")
                    for i in range(2, len(parts) + 1):
                        prefix = ".".join(parts[:i])
                        inside = module == prefix or module.startswith(prefix + ".")
                        if prefix in files and not inside:
                            targets.add(prefix)
                    assert name != "rlinterp", f"{module} imports the package facade"
        graph[module] = targets
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 20 and "rlinterp.organism.build" in graph  # the walk found the package
    assert "rlinterp.diff.report" in graph["rlinterp.cli"]  # and resolves relative imports
    cycles = sorted(module for module in graph if module in _reachable(graph, module))
    assert cycles == [], f"modules on an import cycle: {cycles}"
    # the two that were cycles: computing a diff never imports the renderer, and the
    # series module never imports the activation store
    assert "rlinterp.diff.report" not in _reachable(graph, "rlinterp.diff.analysis")
    assert "rlinterp.activations.harvest" not in _reachable(graph, "rlinterp.models.series")


LAYERS = (
    ("errors",),
    ("core",),
    ("organism",),
    ("models",),
    ("activations",),
    ("diff",),
    ("readings",),
    ("dictionaries",),
    ("tracking",),
    ("selection",),
    ("circuits",),
    ("fidelity",),
    ("pipeline",),
    ("cli", "commands", "__main__"),
)
"""The layers of the package, bottom first: each top-level module or folder of ``rlinterp``
is in exactly one, and a module imports only from its own layer or those below it."""


def layer(module: str) -> int:
    """The layer of ``rlinterp.<top>...``."""
    top = module.split(".")[1]
    found = [i for i, names in enumerate(LAYERS) if top in names]
    assert found, f"rlinterp.{top} is in no layer of LAYERS; add it where it belongs"
    return found[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if layer(target) > layer(module)
    )


def test_no_module_imports_from_a_layer_above_its_own():
    graph = import_graph()
    assert upward_imports(graph) == []


FIDELITY_READS = {
    "rlinterp.errors",
    "rlinterp.core",
    "rlinterp.organism",
    "rlinterp.models",
    "rlinterp.activations",
    "rlinterp.selection.personas",
}
"""What ``fidelity`` reads: the series and the organism as data, on-policy samples and
harvests, and the persona directions of ``selection.personas`` (the persona shift). Its
layer sits above ``circuits`` (the order of the report), but it uses nothing of the
dictionary, tracking, index or circuits analyses."""


def test_fidelity_reads_models_organism_activations_and_persona_directions():
    graph = import_graph()
    outside = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("rlinterp.fidelity")
        for target in targets
        if not target.startswith("rlinterp.fidelity")
        and target != "rlinterp.selection"  # the lazy face, run before selection.personas
        and not any(target == r or target.startswith(r + ".") for r in FIDELITY_READS)
    )
    assert outside == []
    assert "rlinterp.selection.personas" in _reachable(graph, "rlinterp.fidelity.analysis")


def test_the_layer_check_sees_an_upward_import():
    graph = {"rlinterp.models.series": {"rlinterp.pipeline.runner"}, "rlinterp.pipeline.runner": set()}
    assert upward_imports(graph) == ["rlinterp.models.series -> rlinterp.pipeline.runner"]


def test_the_graph_sees_a_cycle_when_there_is_one(tmp_path, monkeypatch):
    """The check itself can fail: a two-module package that imports itself in a circle."""
    package = tmp_path / "rlinterp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from .a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    graph = import_graph()
    assert graph["rlinterp.a"] == {"rlinterp.b"} and graph["rlinterp.b"] == {"rlinterp.a"}


def _notebook_code() -> list[str]:
    cells = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                cells.append("".join(cell["source"]))
    return cells


def test_notebooks_need_only_import_rlinterp():
    cells = _notebook_code()
    assert cells, f"no notebooks found in {NOTEBOOKS}"
    used = set()
    for node in ast.walk(ast.parse("\n".join(cells))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlinterp"):
            raise AssertionError(f"a notebook imports from {node.module}; use `import rlinterp`")
        if isinstance(node, ast.Import):
            assert all(a.name == "rlinterp" or not a.name.startswith("rlinterp") for a in node.names)
        is_name = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if is_name and node.value.id == "rlinterp":
            used.add(node.attr)
    missing = sorted(name for name in used if not hasattr(rlinterp, name))
    assert missing == [], f"notebooks use rlinterp.{missing}, which `import rlinterp` does not expose"
    for name in ("train_dictionary", "evaluate_dictionary", "DictionaryConfig", "write_report", "SeriesDiff"):
        assert hasattr(rlinterp, name)


ORGANISM_DATA = (
    "rlinterp.organism.layout",
    "rlinterp.organism.config",
    "rlinterp.organism.personas",
    "rlinterp.organism.reasoning",
)
"""What the library reads of the organism: its layout on disk, its configs and its worlds
(the questions, personas and rewards of the yes/no and the reasoning world), none of which
imports torch."""
ORGANISM_BUILDERS = (
    "rlinterp.cli",
    "rlinterp.pipeline.runner",
    "rlinterp.selection.steering",
    "rlinterp.readings.amplify",
)
"""The only modules outside ``organism`` that may import the code that builds or runs its
models (``build``, ``model``, ``rl``, ``behaviour``, ``planted``): ``rlinterp organism``,
``rlinterp run`` when the organism is missing, the causal checks' behaviour re-sampling
(steered models answer the behaviour table's questions), and amplified sampling (amplified
models' answers are scored as the behaviour table scores them, and by the base's log-probs
through the organism's answer batches)."""


def organism_imports(graph: dict[str, set[str]], faces: dict[str, set[str]]) -> list[str]:
    """Imports of the organism's builder modules, or of its package face (whose names include
    the builder), from modules that are neither the organism's nor its builders."""
    found = []
    for module in sorted(set(graph) | set(faces)):
        targets = graph.get(module, set())
        if module.startswith("rlinterp.organism") or module in (*ORGANISM_BUILDERS, "rlinterp"):
            continue  # the organism itself, its builders and the public facade
        found += [
            f"{module} -> {t}"
            for t in sorted(targets)
            if t.startswith("rlinterp.organism.") and t not in ORGANISM_DATA
        ]
        found += [f"{module} -> rlinterp.organism ({name})" for name in sorted(faces.get(module, ()))]
    return found


def face_imports(package: str = "rlinterp.organism") -> dict[str, set[str]]:
    """``module -> names`` it imports from ``package``'s face (``from ..organism import X``)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _imported(module, is_package, node)[0] == package:
                found.setdefault(module, set()).update(alias.name for alias in node.names)
    return found


def test_the_library_reads_the_organism_as_data():
    assert organism_imports(import_graph(), face_imports()) == []


def test_the_organism_rule_sees_a_trainer_import():
    graph = {"rlinterp.models.series": {"rlinterp.organism.build", "rlinterp.organism.layout"}}
    faces = {"rlinterp.pipeline.stages": {"Organism"}}
    assert organism_imports(graph, faces) == [
        "rlinterp.models.series -> rlinterp.organism.build",
        "rlinterp.pipeline.stages -> rlinterp.organism (Organism)",
    ]


HEAVY = (
    "torch",
    "transformers",
    "transformer_lens",
    "sae_lens",
    "pandas",
    "numpy",
    "pyarrow",
    "plotly",
    "scipy",
)
"""Libraries whose import takes seconds (all of them together ~8 CPU-s on this machine)."""


def _imported_after(code: str) -> list[str]:
    """The ``HEAVY`` modules a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_the_command_line_and_the_facade_answer_without_heavy_imports():
    """``--help``, argument and config errors and ``--print-config`` build every command's
    options and config without importing a heavy library; ``import rlinterp`` neither."""
    code = (
        "import contextlib, io, rlinterp\n"
        "from rlinterp.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['diff', '--bogus'], ['run', '--print-config'],\n"
        "             ['run', '--dictionaries-k', 'x'], ['circuits', '--series', 'a', 'b', '--metric', 'm',\n"
        "              '--out', 'o', '--exact-prompts', '0']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "assert len(dir(rlinterp)) > 70"
    )
    assert _imported_after(code) == []
    assert "torch" in _imported_after("import rlinterp\nrlinterp.ModelSeries")  # names resolve when used


def test_reading_an_organism_imports_none_of_its_trainer(tmp_path, micro_config):
    from rlinterp import build_organism

    root = build_organism(tmp_path / "organism", config=micro_config).root
    code = (
        "from rlinterp.organism.layout import Organism\n"
        f"organism = Organism.load({str(root)!r})\n"
        "assert organism.checkpoints(organism.regimes[0]) and organism.question_prompts()\n"
    )
    assert _imported_after(code) == []


def test_a_name_shared_with_its_submodule_stays_the_name():
    """``harvest`` is a function in ``activations/harvest.py``: importing that module first
    (which binds ``rlinterp.activations.harvest`` to it, as Python does) must not make the
    faces hand out the module, and a string path through the module still reaches it."""
    code = (
        "import importlib, types, rlinterp\n"
        "module = importlib.import_module('rlinterp.activations.harvest')\n"
        "from rlinterp import harvest\n"
        "assert harvest is module.harvest, harvest\n"
        "assert not isinstance(harvest, types.ModuleType)\n"
        "import rlinterp.activations.harvest as again\n"
        "assert again is module and again.HarvestConfig is rlinterp.HarvestConfig\n"
        "import rlinterp.pipeline\n"
        "assert isinstance(rlinterp.pipeline.figures, types.ModuleType)  # a submodule export\n"
    )
    _imported_after(code)


def test_a_subpackage_is_an_attribute_of_a_bare_import():
    """Notebooks write ``import rlinterp`` then ``rlinterp.organism.build_tokenizer``."""
    code = (
        "import rlinterp, types\n"
        "assert isinstance(rlinterp.organism, types.ModuleType)\n"
        "assert callable(rlinterp.organism.build_tokenizer)\n"
        "assert isinstance(rlinterp.tracking, types.ModuleType)\n"
        "try:\n"
        "    rlinterp.no_such_thing\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('a missing name must raise AttributeError')\n"
    )
    _imported_after(code)
