"""The subpackages depend on each other in layers: a new import against them fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Which subpackages each one may import (function-local and TYPE_CHECKING imports count too).
#: "core" is skyblink/ without the CLI (config, threads, psf_units, _version); "cli" the CLI modules.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "storage": {"core"},
    "sim": {"core"},
    # workers -> engines is the one remaining cycle (the actor selects its runners with
    # engines.backends; engines' training, gate and canary use the workers' image functions):
    # it goes when the image functions or the actor move to a package of their own.
    "workers": {"core", "storage", "engines"},
    "engines": {"core", "storage", "sim", "workers"},
    # The reduce science reads the classifier's class names (engines.model_io, torch-free) and the
    # candidates' stamps (cluster.results) until the store owns the unit results' schema.
    "reduce": {"core", "storage", "workers", "engines", "cluster"},
    "cluster": {"core", "storage", "sim", "workers", "engines", "reduce"},
    "evaluation": {"core", "storage", "sim", "workers", "engines", "reduce", "cluster"},
    "cli": {"core", "storage", "sim", "workers", "engines", "cluster", "reduce", "evaluation"},
}
SUBPACKAGES = {"cluster", "reduce", "evaluation", "workers", "engines", "storage", "sim"}


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
    parts = _module_parts(path)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base) if node.level else (node.module or "")
            found.append((node.lineno, name))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
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


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_the_layers_have_no_cycle(layer: str) -> None:
    # Only the one documented cycle (workers <-> engines) may close.
    seen, todo = set(), [layer]
    while todo:
        for nxt in ALLOWED[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    if layer in seen:
        assert layer in {"workers", "engines", "reduce", "cluster"}
