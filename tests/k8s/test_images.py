"""
The container images, checked without building them: the Dockerfiles install real extras of
pyproject.toml, agree on Ray and the user with the manifests, copy what exists and ship the
scripts the manifests run; the engines init step calls the CLI with flags it has.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from k8s_render import DOCKER, K8S, REPO, load_script, parse_cli

DOCKERFILES = {"cpu": DOCKER / "cpu.Dockerfile", "gpu": DOCKER / "gpu.Dockerfile"}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def arg_default(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=\"?([^\"\n]*)\"?$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile.name} has no ARG {name}=..."
    return match.group(1)


@pytest.mark.parametrize("image", sorted(DOCKERFILES), ids=lambda name: f"{name}-image")  # a bare "gpu" id would mark it a GPU test
def test_pip_installs_name_real_extras(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    extras = set(pyproject()["project"]["optional-dependencies"])
    named = {e for e in arg_default(DOCKERFILES[image], "EXTRAS").split(",") if e}
    for match in re.finditer(r'"/src\[([^\]$]*)\]"', text):
        named |= {e for e in match.group(1).split(",") if e}
    assert named <= extras, f"{image}: extras {sorted(named - extras)} are not in pyproject.toml"
    assert "/src" in text and "pip install" in text
    if image == "gpu":
        assert named == {"gpu"}  # torch with CUDA and cuda-python; TensorRT comes with the base image


def test_both_images_and_the_cluster_run_one_ray() -> None:
    versions = {name: arg_default(path, "RAY_VERSION") for name, path in DOCKERFILES.items()}
    assert len(set(versions.values())) == 1, versions
    cluster = (K8S / "base" / "raycluster.yaml").read_text()
    assert f'rayVersion: "{versions["cpu"]}"' in cluster
    ray = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("ray"))
    floor = tuple(int(p) for p in ray.split(">=")[1].split("."))
    assert tuple(int(p) for p in versions["cpu"].split(".")) >= floor, (ray, versions)
    assert 'PYTHON_VERSION=3.12' in DOCKERFILES["cpu"].read_text()  # the TensorRT container's Python


@pytest.mark.parametrize("image", sorted(DOCKERFILES), ids=lambda name: f"{name}-image")  # a bare "gpu" id would mark it a GPU test
def test_images_run_as_the_user_the_pods_expect(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    for manifest in ("base/raycluster.yaml", "base/nightly/cronjob.yaml", "base/nightly/rayjob.yaml"):
        assert "runAsUser: 10001" in (K8S / manifest).read_text(), manifest


@pytest.mark.parametrize("image", sorted(DOCKERFILES), ids=lambda name: f"{name}-image")  # a bare "gpu" id would mark it a GPU test
def test_copies_exist_and_cover_every_package_folder(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    sources = []
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    for source in sources:
        assert (REPO / source).exists(), f"{image}: COPY {source} does not exist"
    folders = {d.split("/")[0] for d in pyproject()["tool"]["setuptools"]["package-dir"].values()}
    assert folders <= set(sources), f"{image}: not copied: {sorted(folders - set(sources))}"
    ignore = (DOCKER / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{image}: {source} is excluded from the build context"


def test_images_ship_the_scripts_the_manifests_run() -> None:
    cluster = (K8S / "base" / "raycluster.yaml").read_text()
    cronjob = (K8S / "base" / "nightly" / "cronjob.yaml").read_text()
    assert 'command: ["skyblink-engines-init"]' in cluster and "image: skyblink-gpu" in cluster
    assert "COPY --chmod=0755 docker/skyblink-engines-init /usr/local/bin/skyblink-engines-init" in DOCKERFILES["gpu"].read_text()
    assert 'command: ["skyblink-nightly"]' in cronjob and "image: skyblink-cpu" in cronjob
    assert "COPY --chmod=0755 docker/skyblink-nightly /usr/local/bin/skyblink-nightly" in DOCKERFILES["cpu"].read_text()
    for script in ("skyblink-engines-init", "skyblink-nightly"):
        assert (DOCKER / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_engines_init_script_calls_the_cli_with_real_flags() -> None:
    script = DOCKER / "skyblink-engines-init"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    calls = [line.strip() for line in text.splitlines() if re.search(r"(^|\s)skyblink engines ", line)]
    assert any("engines build" in c for c in calls) and any("engines list" in c for c in calls)
    for call in calls:
        command = re.split(r"\s(?:>&2|\|\||2>)|;", call[call.index("skyblink engines"):])[0].strip()
        params = parse_cli(shlex.split(command.replace('"$', '"X').replace("$", "X")))
        assert params is not None
    # The Python the script runs names things that exist.
    from skyblink.engines import _trt, catalog, registry

    for module, names in ((_trt, ("TensorRTUnavailableError", "load_trt")), (catalog, ("MODEL_VERSIONS",)),
                          (registry, ("EngineNotFoundError", "EngineRegistry", "EngineRequest", "current_device"))):
        for name in names:
            assert f"{name}" in text and hasattr(module, name), name
    # The actors' two networks get engines; the survey classifier scores survey packets (`alerts score`), not tiles.
    assert set(catalog.MODEL_VERSIONS) == {"detector", "classifier", "survey_classifier"}
    assert 'for model in ("detector", "classifier"):' in text


def test_engines_init_without_a_gpu_warns_and_lets_the_worker_start(tmp_path: Path) -> None:
    config = tmp_path / "skyblink.toml"
    config.write_text(f'[engines]\nregistry = "{tmp_path / "engines"}"\n')
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "SKYBLINK_CONFIG": str(config),
           "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(DOCKER / "skyblink-engines-init")], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stderr and (tmp_path / "engines" / ".engines-init.lock").exists()
    strict = subprocess.run(["bash", str(DOCKER / "skyblink-engines-init")], env={**env, "SKYBLINK_ENGINES__BACKEND": "tensorrt"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert strict.returncode == 1 and "engines.backend is tensorrt" in strict.stderr


def test_nightly_script_parses_the_cronjob_arguments() -> None:
    nightly = load_script("skyblink-nightly")
    args = nightly.parse_args(["--template", "/t/rayjob.yaml", "--cluster", "c", "--time-zone", "Etc/UTC", "--night", "20261125"])
    assert (args.cluster, args.night, args.poll_s) == ("c", "20261125", 30.0)
