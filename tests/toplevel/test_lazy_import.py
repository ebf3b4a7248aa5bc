"""`skyblink.lazy_import.lazy_module`: nothing imported before first use, a clear error without the package."""

from __future__ import annotations

import ast
import importlib.util
import pickle
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyblink.lazy_import import EXTRAS, MissingDependencyError, lazy_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def probe_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package on sys.path whose import is visible (it counts itself in a list on `sys`)."""
    name = f"lazy_probe_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("import sys\nsys.lazy_probe_imports = getattr(sys, 'lazy_probe_imports', 0) + 1\n")
    (package / "sub.py").write_text("VALUE = 42\n\ndef double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "lazy_probe_imports", 0, raising=False)
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_the_module_is_imported_on_first_attribute_use_only(probe_package: str) -> None:
    sub = lazy_module(f"{probe_package}.sub")
    assert probe_package not in sys.modules and f"{probe_package}.sub" not in sys.modules
    assert sys.lazy_probe_imports == 0  # type: ignore[attr-defined]
    assert "not yet imported" in repr(sub)

    assert sub.double(sub.VALUE) == 84
    assert sys.modules[f"{probe_package}.sub"].VALUE == 42
    assert sys.lazy_probe_imports == 1  # type: ignore[attr-defined]
    assert sub.VALUE == 42 and sys.lazy_probe_imports == 1  # type: ignore[attr-defined]
    assert "imported" in repr(sub) and "not yet" not in repr(sub)


def test_an_unknown_attribute_is_an_attribute_error_of_the_real_module(probe_package: str) -> None:
    sub = lazy_module(f"{probe_package}.sub")
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = sub.no_such_name
    assert not hasattr(sub, "__wrapped__")


def test_a_missing_optional_package_names_the_package_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # "not installed" for the import system
    torch = lazy_module("torch")  # binding it must not fail on a machine without torch
    with pytest.raises(MissingDependencyError, match=r"'torch' is not installed.*pip install 'skyblink\[ml\]'"):
        _ = torch.zeros
    with pytest.raises(ImportError):  # existing `except ImportError` fallbacks still catch it
        _ = torch.zeros


def test_a_missing_parent_package_is_named_for_a_submodule() -> None:
    quantization = lazy_module("skyblink_no_such_package.quantization")
    with pytest.raises(MissingDependencyError, match=r"'skyblink_no_such_package' is not installed.*base install"):
        _ = quantization.quantize_static


def test_a_missing_dependency_of_an_installed_module_is_not_blamed_on_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_probe_broken.py").write_text("import lazy_probe_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = lazy_module("lazy_probe_broken")
    with pytest.raises(ModuleNotFoundError) as raised:
        _ = broken.anything
    assert type(raised.value) is ModuleNotFoundError
    assert raised.value.name == "lazy_probe_absent_dependency"
    sys.modules.pop("lazy_probe_broken", None)


def test_a_stand_in_pickles_as_a_stand_in(probe_package: str) -> None:
    sub = pickle.loads(pickle.dumps(lazy_module(f"{probe_package}.sub")))
    assert f"{probe_package}.sub" not in sys.modules
    assert sub.VALUE == 42


def test_a_relative_name_resolves_against_the_package_without_importing(probe_package: str) -> None:
    sub = lazy_module(".sub", probe_package)
    assert sub.__name__ == f"{probe_package}.sub" and probe_package not in sys.modules
    assert sub.VALUE == 42
    with pytest.raises(ValueError, match="package"):
        lazy_module(".sibling")


def _lazy_names() -> list[tuple[str, str]]:
    """(where, resolved module name) of every ``lazy_module("...")`` call with literal arguments in the package."""
    found = []
    for top in ("skyblink", "cluster", "engines", "storage", "workers", "sim"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(rel if rel[0] == "skyblink" else ("skyblink", *rel))
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_module" and node.args
                        and isinstance(node.args[0], ast.Constant)):
                    name = node.args[0].value
                    resolved = importlib.util.resolve_name(name, package.removesuffix(".__init__"))
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", resolved))
    return found


def test_every_lazy_import_of_the_package_names_a_module_that_exists() -> None:
    # A stale name (a module moved or renamed) would otherwise fail only when the code runs.
    names = _lazy_names()
    assert len(names) > 20
    missing = [f"{where}: {name}" for where, name in names
               if name.startswith("skyblink.") and importlib.util.find_spec(name) is None]
    assert not missing, "lazy imports of modules that do not exist:\n" + "\n".join(missing)


def test_each_extra_named_exists_in_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras), "EXTRAS names an extra pyproject.toml does not define"


def test_importing_a_module_that_binds_torch_lazily_does_not_import_torch() -> None:
    # The real case: a driver-side import of a module with `torch = lazy_module("torch")` at the top.
    code = ("import sys; from skyblink.lazy_import import lazy_module; torch = lazy_module('torch'); "
            "fits = lazy_module('astropy.io.fits'); "
            "print(sorted(m for m in ('torch', 'astropy', 'astropy.io.fits') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
