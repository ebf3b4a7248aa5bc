"""The distribution: a wheel built from the repo installs into a fresh venv and its command runs."""

from __future__ import annotations

import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("skyblink-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("skyblink/cli.py", "skyblink/config.py", "skyblink/storage/night_store.py",
                   "skyblink/cluster/ingest.py", "skyblink/sim/__init__.py", "skyblink/workers/__init__.py",
                   "skyblink/engines/__init__.py", "skyblink/reduce/steps.py", "skyblink/evaluation/truth_scoring.py"):
        assert module in names, module
    assert not any(n.startswith(("storage/", "cluster/", "reduce/", "evaluation/", "tests/")) for n in names)  # nothing generic at top level

    # The dependencies come from this environment (no network needed) through a .pth path entry;
    # .pth files inside that folder are not run, so the editable skyblink stays out of sight.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(target) / "outer-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import skyblink.storage, skyblink.cluster; print(skyblink.storage.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout
    assert str(env_dir) in where, where
    result = subprocess.run([env_dir / "bin" / "skyblink", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("ingest", "sim", "night", "config"):
        assert command in result.stdout
