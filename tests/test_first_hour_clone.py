"""
The first hour of a new user, end to end: from a fresh clone, the main job
(`scripts/demo-night.sh`, on a tiny night) and the first commands typed after it.

The clone is made from this repository's HEAD; the demo's environment is this test's own
interpreter behind a `.venv-demo`-like folder whose install stamp is current, so nothing is
installed. torch and TensorRT are made unimportable in every process of the run (the driver and
the Ray workers), so the CPU night is shown to run on ONNX Runtime alone, as `.[cpu]` installs it.
The messages are checked, not the timings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from skyblink.storage.redis_server import find_redis_server

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.redis]

_BLOCK_TORCH = '''
import sys


class _NoTorch:
    """The CPU install has no torch, CUDA or TensorRT: make them unimportable here too."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "tensorrt", "tensorrt_rtx", "cuda"}:
            raise ModuleNotFoundError(f"No module named {name!r} (the CPU night runs without it)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of skyblink to clone")
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed; the demo starts a private one")
    if _has_gpu():
        pytest.skip("checks the CPU night (no GPU); the GPU night is tests/cluster/test_night_run_gpu.py")
    target = tmp_path / "skyblink"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    return target


def _environment(clone: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A demo environment that is this interpreter, with a current install stamp; torch blocked."""
    venv = tmp_path / "venv-demo"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    script = venv / "bin" / "skyblink"
    script.write_text(f"#!{sys.executable}\nfrom skyblink.cli import main\nmain()\n")
    script.chmod(0o755)
    checksum = subprocess.run("cksum < pyproject.toml | cut -d' ' -f1", shell=True, cwd=clone, check=True,
                              capture_output=True, text=True).stdout.strip()
    (venv / ".skyblink-installed").write_text(f"skyblink[cpu] {checksum}\n")
    blocker = tmp_path / "no-torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK_TORCH)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYBLINK_")}
    env.update({
        "DEMO_VENV": str(venv),
        "DEMO_SIM": "--fields 1 --exposures 2 --size 256",
        "SKYBLINK_INGEST__TILE_SIZE": "256",
        "SKYBLINK_NIGHT__UNITS_PER_CALL": "1",
        "SKYBLINK_NIGHT__DEVICE_BATCH": "1",
        "SKYBLINK_RAY__NUM_CPUS": "2",
        "PYTHONPATH": str(blocker),
        "COLUMNS": "80",
        "TERM": "dumb",
    })
    return venv, env


def _run(args: list[str], clone: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_demo_then_the_first_commands_from_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    venv, env = _environment(clone, tmp_path)
    skyblink = str(venv / "bin" / "skyblink")
    check = _run([sys.executable, "-c", "import torch"], clone, env)
    assert check.returncode != 0, "torch should be blocked in the demo's processes"
    demo = _run(["bash", "scripts/demo-night.sh"], clone, env, timeout=600)
    server_json = clone / ".skyblink" / "redis" / "server.json"
    try:
        out = demo.stdout + demo.stderr
        assert demo.returncode == 0, out[-4000:]
        assert "[demo] no NVIDIA GPU (nvidia-smi absent or failing): the run uses ONNX Runtime on the CPU" in out
        assert "Token authentication is enabled" not in out
        assert "Traceback" not in out
        match = re.search(r"read its alerts: (\S+) alerts tail --night (\S+)", out)
        assert match, out[-3000:]
        assert match.group(1) == skyblink
        night = match.group(2)
        assert f"night {night}:" in out  # the summary's title names the night
        assert server_json.exists(), "the demo keeps its private redis-server"

        # The first commands a user types after it, as printed.
        nights = _run([skyblink, "alerts", "nights"], clone, env)
        assert nights.returncode == 0, nights.stderr
        assert nights.stdout.startswith(f"{night}  ") and "alert(s)" in nights.stdout
        tail = _run([skyblink, "alerts", "tail", "--night", night], clone, env)
        assert tail.returncode == 0, tail.stderr
        assert f"skyblink:alerts:{night}: last" in tail.stdout and "…" not in tail.stdout
        assert all(len(line) <= 80 for line in tail.stdout.splitlines())
        wrong = _run([skyblink, "alerts", "tail", "--night", "20991231"], clone, env)
        assert wrong.returncode == 1 and f"nights there: {night}" in wrong.stderr, wrong.stderr
        exported = _run([skyblink, "alerts", "consume", "--group", "mine", "--night", night, "--out", "alerts",
                         "--idle-exit", "1", "--block-ms", "200"], clone, env)
        assert exported.returncode == 0, exported.stderr
        assert (clone / "alerts" / "alerts.jsonl").read_text().count("\n") >= 1

        # Bad input a user can type: one line, before anything starts.
        bad = _run([skyblink, "night", "run", "skyblink-demo/night", "--store", "README.md"], clone, env)
        assert bad.returncode == 1 and bad.stderr.strip() == (
            "error: --store README.md is a file, not a store directory; choose a new path or an existing store")
        usage = _run([skyblink, "config", "show", "--format", "yaml"], clone, env)
        assert usage.returncode == 2
    finally:
        if server_json.exists():
            pid = json.loads(server_json.read_text())["pid"]
            with_cmd = Path(f"/proc/{pid}/cmdline")
            if with_cmd.exists() and b"redis-server" in with_cmd.read_bytes():
                os.kill(pid, signal.SIGTERM)
