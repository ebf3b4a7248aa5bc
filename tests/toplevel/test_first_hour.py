"""
What a new user meets first: a light install, bad input refused in one line before anything
starts, and nothing that did nothing exiting 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyblink.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _requirements(extra: str | None, project: dict) -> set[str]:
    """The distribution names an install of skyblink (with ``extra``) pulls in, through self-references."""
    names = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in project["dependencies"]}
    pending, seen = [extra] if extra else [], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in project["optional-dependencies"][name]:
            if req.startswith("skyblink["):
                pending.extend(req[len("skyblink["):-1].split(","))
            else:
                names.add(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower())
    return names


def test_the_cpu_night_installs_onnxruntime_and_nothing_heavy() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu = _requirements("cpu", project)
    assert "onnxruntime" in cpu
    heavy = {n for n in cpu if n.startswith(("torch", "nvidia", "tensorrt", "cuda", "pytest", "hypothesis", "astroscrappy"))}
    assert not heavy, heavy
    assert {"torch", "cuda-python"} <= _requirements("gpu", project)
    assert {"pytest", "torch", "onnxruntime"} <= _requirements("dev", project)
    demo = (ROOT / "scripts" / "demo-night.sh").read_text()
    assert "nvidia-smi" in demo and "extras=cpu" in demo and "extras=gpu" in demo and ".venv-demo" in demo


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_the_wheel_ships_models_and_schemas_without_setuptools_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "absent from the `packages` configuration" not in result.stdout + result.stderr
    (wheel,) = tmp_path.glob("skyblink-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("skyblink/engines/models/detector/model.fp32.onnx", "skyblink/engines/models/classifier/model.fp32.onnx",
                 "skyblink/engines/models/survey_classifier/model.fp32.onnx",
                 "skyblink/engines/models/braai/d6_m7.npz", "skyblink/storage/schemas/alert/latest.txt",
                 "skyblink/storage/schemas/alert/1/0/alert.avsc", "skyblink/storage/schemas/alert/1/1/alert.avsc"):
        assert data in names, data


def _invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a store\n")
    (tmp_path / "empty-night").mkdir()
    for name in ("SKYBLINK_REDIS__URL", "SKYBLINK_STORE", "SKYBLINK_RAY__ADDRESS", "SKYBLINK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


BAD_INPUTS = [
    (["ingest", "empty-night", "--store", "a-file"], "--store a-file is a file"),
    (["night", "run", "empty-night", "--store", "a-file"], "--store a-file is a file"),
    (["night", "run", "empty-night", "--store", "a-file/sub.zarr"], "a-file is a file"),
    (["night", "run", "no-such-night"], "night directory no-such-night does not exist"),
    (["ingest", "a-file"], "night directory a-file is a file"),
    (["night", "run", "empty-night", "--redis-url", "http://user:hunter2@host:6379"], "must start with redis://"),
    (["night", "run", "empty-night", "--ray-address", "nowhere"], "--ray-address nowhere"),
    (["ingest", "empty-night", "--ray-address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1"),
    (["night", "run", "empty-night", "--watch", "--redis-url", "redis://127.0.0.1:1/0"],
     "Redis at redis://127.0.0.1:1/0 unreachable"),
    (["night", "run", "empty-night", "--report", "."], "--report . is a directory"),
    (["ingest", "empty-night", "--store", "nosuchfs://bucket/x"], "unknown file system 'nosuchfs'"),
    (["night", "score", "empty-night", "--store", "missing.zarr"], "holds no FITS files"),
    (["sim", "night", "a-file/night", "--size", "64"], "OUT_DIR a-file/night: "),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_before_anything_starts(workdir: Path, args: list[str], message: str) -> None:
    code, output = _invoke(args)
    assert code == 1, output
    assert message in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output and "hunter2" not in output
    # nothing started, nothing created: no private Redis folder, no store
    assert sorted(p.name for p in workdir.iterdir()) == ["a-file", "empty-night"]


def test_an_empty_night_is_an_error_not_a_blank_success(workdir: Path) -> None:
    code, output = _invoke(["night", "run", "empty-night"])
    assert code == 1 and "holds no FITS files" in output and "nothing to do" in output, output
    code, output = _invoke(["ingest", "empty-night"])
    assert code == 1 and "holds no FITS files" in output, output
    assert not (workdir / ".skyblink").exists() and not (workdir / "skyblink-store.zarr").exists()


def test_a_value_the_user_typed_is_named_once(workdir: Path) -> None:
    code, output = _invoke(["ingest", "empty-night", "--tile-size", "1000"])
    assert code == 1
    assert "got 1000" in output and "got '1000'" not in output and output.count("got") == 1, output


def test_config_show_with_an_unknown_format_is_a_usage_error(workdir: Path) -> None:
    code, output = _invoke(["config", "show", "--format", "yaml"])
    assert code == 2 and "--format must be toml or json, got 'yaml'" in output, output


def test_help_shows_boolean_flags_as_flags() -> None:
    code, output = _invoke(["night", "run", "--help"], env={"COLUMNS": "160"})
    assert code == 0
    assert "--keep-redis" in output and "--no-keep-redis" in output and "--watch" in output
    assert "<bool>" not in output, output
    assert "one per CPU" in output  # the same wording as [night] workers in the README


def test_progress_is_plain_lines_without_a_terminal() -> None:
    import io
    import time

    from rich.console import Console
    from rich.progress import Progress

    from skyblink._cli_common import plain_progress

    out = io.StringIO()
    progress = Progress(console=Console(file=out, force_terminal=False, width=80), transient=True)
    task = progress.add_task("starting workers", total=None, count="")
    with progress, plain_progress(progress, every_s=0.3):
        time.sleep(0.8)
        progress.update(task, description="tiles", count="4/16 tiles")
        time.sleep(0.5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("starting workers (")
    assert sum(line.startswith("starting workers") for line in lines) >= 2  # periodic, not only at the start
    assert any(line.startswith("tiles 4/16 tiles (") for line in lines), lines
