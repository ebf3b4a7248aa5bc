"""
The subpackages depend on each other in layers: a new import against them fails here, not in review.

From the bottom: core (skyblink/ without the CLI) -> storage, sim -> workers -> engines (the
worker side: the engines' training and gates run the workers' image steps; the actor is handed
its runners by the driver) -> reduce (the reduce science) -> cluster (the driver) -> evaluation (scores of what
the driver produced) -> cli. The driver side (core, storage, sim, reduce, cluster, the CLI, the
evaluation's truth scoring, SEP baseline and folds) imports no ML package anywhere, and the reduce
and the evaluation use the worker side only through its torch-free modules, named below.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Which subpackages each one may import (function-local and TYPE_CHECKING imports count too).
#: "core" is skyblink/ without the CLI (config, threads, psf_units, _version); "cli" the CLI modules.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "storage": {"core"},
    "sim": {"core"},
    # The actor is handed its runners' starter by the driver (skyblink.engines.backends.start_runner).
    "workers": {"core", "storage"},
    "engines": {"core", "storage", "sim", "workers"},
    # The reduce science: only the modules of LOWER_MODULES["reduce"] from the workers.
    "reduce": {"core", "storage", "workers"},
    "cluster": {"core", "storage", "sim", "workers", "engines", "reduce"},
    "evaluation": {"core", "storage", "sim", "workers", "engines", "reduce", "cluster"},
    "cli": {"core", "storage", "sim", "workers", "engines", "cluster", "reduce", "evaluation"},
}
SUBPACKAGES = {"cluster", "reduce", "evaluation", "workers", "engines", "storage", "sim"}

#: The only modules of the worker side (and of the driver) that the reduce and the evaluation may
#: import: torch-free ones (tests/toplevel/test_import_boundary.py imports them with torch refused).
LOWER_MODULES: dict[str, set[str]] = {
    "reduce": {
        # A CCD's PSF width where no header gives it, measured as the tile program measures it;
        # imported only at that call (reduce.measurement.measure_ccd_fwhm), never at module import.
        "skyblink.workers.source_detection",
    },
    "evaluation": {
        "skyblink.engines.stamps",  # survey stamps as the classifier's input
        "skyblink.workers.tile_unit",  # the SEP baseline runs the tile program's CPU preparation
        "skyblink.workers.program_config",  # the tile program's parameters (TileProgram), torch-free
    },
}
#: Modules of the driver's packages that run models (the ML extras installed): exempt from both rules.
WORKER_SIDE_MODULES = {"skyblink._cli_engines", "skyblink.evaluation.braai_port", "skyblink.evaluation.survey_scores"}
#: The ML packages the driver side never imports.
ML_PACKAGES = {"torch", "onnxruntime", "onnx", "onnxscript", "tensorrt", "tensorrt_rtx", "cuda", "cupy", "triton"}
DRIVER_LAYERS = {"core", "storage", "sim", "reduce", "cluster", "evaluation", "cli"}

#: Cycles between the packages that the code still has, each with the way out. A new cycle fails
#: `test_the_packages_import_each_other_without_a_new_cycle`, and so does one of these once it is
#: gone, so that its entry (and the ALLOWED edge that closed it) goes too.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _layer(path: Path) -> str:
    top = path.relative_to(ROOT).parts[0]
    if top == "skyblink":
        return "cli" if path.stem == "cli" or path.stem.startswith("_cli") else "core"
    return top


def _module_parts(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).with_suffix("").parts
    parts = ["skyblink", *rel] if rel[0] != "skyblink" else list(rel)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of ``path``: statements anywhere (function-local and
    TYPE_CHECKING ones included), each name of ``from package import name`` (it may be a module),
    and every `skyblink.lazy_import.lazy_module` call with a literal name."""
    parts = _module_parts(path)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base) if node.level else (node.module or "")
            found.append((node.lineno, name))
            found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            name = node.args[0].value
            found.append((node.lineno, importlib.util.resolve_name(name, ".".join(package)) if name.startswith(".") else name))
    return found


def _target_layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "skyblink" or len(parts) < 2:
        return None
    if parts[1] in SUBPACKAGES:
        return parts[1]
    return "cli" if parts[1] == "cli" or parts[1].startswith("_cli") else "core"


def test_every_import_between_subpackages_follows_the_layers() -> None:
    sources = [p for top in (*SUBPACKAGES, "skyblink") for p in (ROOT / top).rglob("*.py")]
    assert len(sources) > 50
    wrong = []
    for path in sources:
        layer = _layer(path)
        for line, name in _imported(path):
            target = _target_layer(name)
            if target is not None and target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {name} ({target})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def _package_graph() -> dict[str, set[str]]:
    """Which packages each package imports, read from the code (every kind of import)."""
    graph: dict[str, set[str]] = {layer: set() for layer in ALLOWED}
    for path in (p for top in (*SUBPACKAGES, "skyblink") for p in (ROOT / top).rglob("*.py")):
        layer = _layer(path)
        for _, name in _imported(path):
            target = _target_layer(name)
            if target is not None and target != layer:
                graph[layer].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The groups of two or more packages that import each other, directly or through others."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph.get(todo.pop(), set()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    return {frozenset({a, *(b for b in reach[a] if a in reach[b])}) for a in graph if a in reach[a]}


def test_cycles_are_found_through_any_number_of_packages() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == {frozenset({"a", "b", "c"}), frozenset({"e"})}
    assert _cycles({"a": {"b"}, "b": set()}) == set()


def test_the_packages_import_each_other_without_a_new_cycle() -> None:
    graph = _package_graph()
    assert graph["cluster"] and graph["engines"], "the import graph was not read"
    cycles = _cycles(graph)
    new = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"import cycles between the packages: {new} (graph: { {k: sorted(v) for k, v in graph.items()} })"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES and ALLOWED: {gone}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_the_layers_have_no_cycle(layer: str) -> None:
    # Only the documented cycles (KNOWN_CYCLES) may close in the table of allowed imports.
    seen, todo = set(), [layer]
    while todo:
        for nxt in ALLOWED[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    if layer in seen:
        assert any(layer in cycle for cycle in KNOWN_CYCLES)



def _module_name(path: Path) -> str:
    return ".".join(_module_parts(path))


def test_the_driver_side_imports_no_ml_package_anywhere() -> None:
    """Not even in a function: the head node and the submitter install no ML extra."""
    wrong = []
    for top in (*SUBPACKAGES, "skyblink"):
        for path in (ROOT / top).rglob("*.py"):
            if _layer(path) not in DRIVER_LAYERS or _module_name(path) in WORKER_SIDE_MODULES:
                continue
            for line, name in _imported(path):
                if name.split(".")[0] in ML_PACKAGES:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "ML packages on the driver side:\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", sorted(LOWER_MODULES))
def test_reduce_and_evaluation_use_only_torch_free_modules_of_the_worker_side(layer: str) -> None:
    lower = {"workers", "engines"}
    wrong = []
    for path in (ROOT / layer).rglob("*.py"):
        if _module_name(path) in WORKER_SIDE_MODULES:
            continue
        for line, name in _imported(path):
            if _target_layer(name) in lower and not any(name == m or name.startswith(m + ".") for m in LOWER_MODULES[layer]):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, f"{layer} reaches past its named modules:\n" + "\n".join(wrong)
