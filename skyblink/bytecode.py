"""
Whether the packages a night's processes import can start from compiled bytecode.

Every Ray worker and actor of a night is a new Python process that imports skyblink and Ray,
and a GPU actor torch too. With the bytecode that pip writes at install (``__pycache__/*.pyc``),
an import reads it; without it, and where Python may not write it (``PYTHONDONTWRITEBYTECODE``,
a read-only site-packages), every process compiles every module from source again. Measured on
one H100 node (benchmarks/BENCHMARKS.md, 2026-12-07): the demo night took 18.4-20.2 s in the run
installed with ``pip install --no-compile`` in such an environment, and 11.4-11.7 s once
``python -m compileall`` had written the bytecode; Ray's local start 5.5 -> 2.8 s, a GPU actor's
start 8.0-9.6 -> 4.5 s.

The check reads the file system only: it never imports the packages it looks at.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["NIGHT_PACKAGES", "compile_command", "compile_folders", "packages_without_bytecode"]

#: The packages a night's worker processes import at start (torch only where it is installed).
NIGHT_PACKAGES = ("skyblink", "ray", "torch")


def packages_without_bytecode(names: Iterable[str] = NIGHT_PACKAGES) -> list[tuple[str, Path]]:
    """
    The installed packages among ``names`` that every new process would compile from source.

    A package counts when its ``__init__.py`` has no bytecode file where this Python looks for
    one (`importlib.util.cache_from_source`: ``__pycache__`` beside it, or under
    ``PYTHONPYCACHEPREFIX``) and Python will not write one there (``sys.dont_write_bytecode``,
    or the folder cannot be written). A package that is not installed, or is not plain source
    (a namespace or an extension module), does not count.

    Parameters
    ----------
    names : iterable of str
        Top-level package names.

    Returns
    -------
    list of (str, Path)
        Each such package and the folder it is installed in, in the order of ``names``.
    """
    found = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        cached = Path(importlib.util.cache_from_source(spec.origin))
        if cached.exists():
            continue
        folder = cached.parent
        while not folder.exists() and folder != folder.parent:  # __pycache__ (or the prefix) not made yet
            folder = folder.parent
        if sys.dont_write_bytecode or not os.access(folder, os.W_OK):
            found.append((name, Path(spec.origin).parent))
    return found


def compile_folders(folder: Path) -> list[Path]:
    """
    The folders whose bytecode the package installed in ``folder`` needs written.

    For a source checkout (an editable install: ``pyproject.toml`` beside ``folder``, its
    subpackages in the folders its ``[tool.setuptools.package-dir]`` names), the outermost of
    those folders (compiling a folder compiles what it holds); otherwise ``folder``.

    Parameters
    ----------
    folder : Path
        A package's folder, as `packages_without_bytecode` gives it.

    Returns
    -------
    list of Path
    """
    project = folder.parent / "pyproject.toml"
    if not project.is_file():
        return [folder]
    try:
        mapping = tomllib.loads(project.read_text())["tool"]["setuptools"]["package-dir"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return [folder]
    named = sorted({folder.parent / path for path in mapping.values() if isinstance(path, str)})
    if folder not in named:
        return [folder]
    return [path for path in named if path.is_dir() and not any(path != other and path.is_relative_to(other) for other in named)]


def compile_command(folder: Path) -> str:
    """
    The shell command that writes the bytecode of the package installed in ``folder``.

    Parameters
    ----------
    folder : Path
        A package's folder, as `packages_without_bytecode` gives it.

    Returns
    -------
    str
        ``python -m compileall -q`` over `compile_folders`, with this Python and quoted paths.
    """
    argv = [sys.executable, "-m", "compileall", "-q", *map(str, compile_folders(folder))]
    return " ".join(shlex.quote(part) for part in argv)
