"""The subpackages depend on each other in layers: a new import against them fails here, not in review."""

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
    # workers -> engines closes the one remaining cycle (KNOWN_CYCLES).
    "workers": {"core", "storage", "engines"},
    "engines": {"core", "storage", "sim", "workers"},
    "cluster": {"core", "storage", "sim", "workers", "engines"},
    "cli": {"core", "storage", "sim", "workers", "engines", "cluster"},
}
SUBPACKAGES = {"cluster", "workers", "engines", "storage", "sim"}

#: Cycles between the packages that the code still has, each with the way out. A new cycle fails
#: `test_the_packages_import_each_other_without_a_new_cycle`, and so does one of these once it is
#: gone, so that its entry (and the ALLOWED edge that closed it) goes too.
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset({"workers", "engines"}): (
        "workers.actor (the one workers module that imports engines) selects and warms its runners with "
        "engines.backends, while engines' training, gate and canary run the workers' image steps "
        "(align, difference, peaks, the tile program): it goes when the actor leaves workers, or is "
        "handed its runners by the driver"),
}


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
