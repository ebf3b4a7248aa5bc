"""Packages that every new worker process would compile from source are found and named."""

from __future__ import annotations

import compileall
import subprocess
import sys
from pathlib import Path

import pytest

from skyblink.bytecode import compile_command, packages_without_bytecode


def _package(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "__init__.py").write_text("VALUE = 1\n")
    return folder


def test_a_package_without_bytecode_that_python_will_not_write_is_named(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _package(tmp_path, "skyblink_test_source_only")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as PYTHONDONTWRITEBYTECODE=1
    assert packages_without_bytecode(["skyblink_test_source_only", "no_such_package_here"]) == [
        ("skyblink_test_source_only", folder)]
    # Where Python may write it, the first process does, and the next ones read it.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert packages_without_bytecode(["skyblink_test_source_only"]) == []
    # Compiled ahead (pip's default at install, or compileall): nothing to say, whatever the setting.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert compileall.compile_dir(str(folder), quiet=1)
    assert packages_without_bytecode(["skyblink_test_source_only"]) == []


def test_this_install_starts_its_workers_from_bytecode() -> None:
    # The README's install (pip's default) writes skyblink's and Ray's bytecode; a night run says so otherwise.
    assert [name for name, _ in packages_without_bytecode(["skyblink", "ray"])] == []


def test_the_command_compiles_every_folder_of_a_source_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A checkout laid out as this one: the package's subpackages are folders beside it (package-dir).
    for name in ("pkg", "workers", "cluster"):
        _package(tmp_path, name)
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools.package-dir]\n"pkg" = "pkg"\n"pkg.workers" = "workers"\n'
                                             '"pkg.cluster" = "cluster"\n')
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    command = compile_command(tmp_path / "pkg")
    assert command.split()[1:4] == ["-m", "compileall", "-q"]
    assert command.split()[4:] == [str(tmp_path / name) for name in ("cluster", "pkg", "workers")]
    # Run as said, it leaves no folder of the checkout to compile at import.
    subprocess.run(command, shell=True, check=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert all((tmp_path / name / "__pycache__").is_dir() for name in ("pkg", "workers", "cluster"))
    assert packages_without_bytecode(["pkg"]) == []
    # An installed package (no pyproject beside it): its own folder.
    site = tmp_path / "site-packages"
    site.mkdir()
    assert compile_command(_package(site, "pkg")).split()[4:] == [str(site / "pkg")]
