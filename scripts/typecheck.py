"""Type-check the installed ``skyblink`` package with mypy, as its ``package-dir`` maps it.

The repository's top-level folders (cluster/, workers/, ...) are the subpackages of ``skyblink``
through ``[tool.setuptools.package-dir]``, and the editable install serves them through an import
hook that mypy cannot follow. This script mirrors that mapping as a tree of symbolic links under
``build/typecheck`` (read from pyproject.toml, so it cannot drift), runs ``mypy -p skyblink`` on it
with the ``[tool.mypy]`` settings, and prints mypy's report with the repository's own paths.
Exits with mypy's status. Usage: ``python scripts/typecheck.py [extra mypy arguments]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def build_tree() -> dict[str, str]:
    """Link each mapped package directory into ``build/typecheck``; return {tree prefix: repo prefix}."""
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools_cfg["package-dir"]
    if TREE.exists():
        shutil.rmtree(TREE)
    # Deepest packages last, so that a parent's directory exists before its child's link.
    for package in sorted(package_dir, key=lambda name: name.count(".")):
        target = TREE.joinpath(*package.split("."))
        source = ROOT / package_dir[package]
        if target.exists() or target.is_symlink():
            continue  # already there through its parent's link (e.g. engines/backends)
        target.parent.mkdir(parents=True, exist_ok=True)
        if "." not in package:
            # The top package: a real directory whose files are links, so subpackages can sit in it.
            target.mkdir()
            for entry in source.iterdir():
                if entry.suffix in {".py", ".pyi"} or entry.name == "py.typed":
                    (target / entry.name).symlink_to(entry)
        else:
            target.symlink_to(source, target_is_directory=True)
    prefixes = {}
    for package, directory in package_dir.items():
        tree_prefix = os.path.relpath(TREE.joinpath(*package.split(".")), ROOT) + os.sep
        prefixes[tree_prefix] = directory.rstrip("/") + os.sep
    return prefixes


def main(argv: list[str]) -> int:
    """Build the link tree, run mypy on ``skyblink``, print its report in repository paths."""
    from mypy import api  # the dev tool, imported only when this script runs

    prefixes = build_tree()
    os.chdir(ROOT)
    stdout, stderr, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "-p", "skyblink", *argv]
    )
    # Longest prefix first: skyblink/engines/backends/ before skyblink/engines/.
    ordered = sorted(prefixes.items(), key=lambda item: -len(item[0]))
    for line in stdout.splitlines():
        for tree_prefix, repo_prefix in ordered:
            if line.startswith(tree_prefix):
                line = repo_prefix + line[len(tree_prefix) :]
                break
        print(line)
    if stderr:
        print(stderr, end="", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
