"""
Helpers of tests/k8s: render the Kustomize overlays and validate what they make.

Rendering uses a real kustomize: ``kustomize build`` where it is installed, else ``kubectl
kustomize`` (kubectl >= 1.14 bundles kustomize; the project's machines have kubectl). Core objects
are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an unknown field
is an error, as it is for ``kubectl apply``), custom resources against the openAPIV3Schema of the
KubeRay v1.7.0 CRDs in ../shared/data/kuberay-crds, made strict the same way.
"""

from __future__ import annotations

import copy
import functools
import importlib.machinery
import importlib.util
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from skyblink.cli import app

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKER = REPO / "docker"
CRD_DIR = REPO.parent / "shared" / "data" / "kuberay-crds"
OVERLAYS = ("dev", "prod")
#: The oldest Kubernetes the manifests are for: CronJob.spec.timeZone is GA from 1.27 and
#: Job.spec.podFailurePolicy on by default from 1.26 (GA 1.31).
KUBE_VERSION = "1.30"

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def kustomize_command() -> list[str] | None:
    """The command that renders a kustomization directory, or None when none is installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory into its objects; a kustomize error fails the test."""
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl (which bundles kustomize) is on PATH: install one to render k8s/")
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode:
        pytest.fail(f"{' '.join(command)} {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=Loader) if doc]


def _strict(schema: Any) -> Any:
    """Forbid fields a structural schema does not name, as the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a jsonschema validator of the KubeRay CRDs' served versions."""
    validators = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=Loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft4Validator(schema)
    return validators


def describe(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def validate(obj: dict[str, Any]) -> list[str]:
    """Return one line per schema violation of ``obj`` (empty when it is valid)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if api_version.startswith("ray.io/"):
        validator = crd_validators().get((api_version, kind))
        if validator is None:
            return [f"{describe(obj)}: no KubeRay v1.7.0 CRD serves {api_version} {kind}"]
        return [
            f"{describe(obj)}: {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{describe(obj)}: {'.'.join(str(p) for p in error.path) or '<root>'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{describe(obj)}: {error.message}"]
    return []


def load_script(name: str) -> ModuleType:
    """Import an extension-less Python script of docker/ as a module."""
    path = DOCKER / name
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Yield (where, pod metadata, pod spec) of every pod template in ``obj``."""
    kind, spec = obj["kind"], obj.get("spec", {})
    where = describe(obj)
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield where, spec["template"].get("metadata", {}), spec["template"]["spec"]
    elif kind == "CronJob":
        template = spec["jobTemplate"]["spec"]["template"]
        yield where, template.get("metadata", {}), template["spec"]
    elif kind == "RayCluster":
        head = spec["headGroupSpec"]["template"]
        yield f"{where} head", head.get("metadata", {}), head["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{where} {group['groupName']}", group["template"].get("metadata", {}), group["template"]["spec"]
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            template = spec["submitterPodTemplate"]
            yield f"{where} submitter", template.get("metadata", {}), template["spec"]
        if "rayClusterSpec" in spec:
            yield from pod_specs({"kind": "RayCluster", "metadata": obj["metadata"], "spec": spec["rayClusterSpec"]})


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (or ``name`` plus a generator's hash suffix)."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?" if name else ".*")
    hits = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[describe(o) for o in hits]}"
    return hits[0]


def parse_cli(argv: list[str]) -> dict[str, Any]:
    """Parse ``skyblink ...`` argv with the CLI's own parser (no command runs); fail on a bad flag."""
    assert argv[0] == "skyblink", argv
    command: Any = typer.main.get_command(app)
    words = argv[1:]
    while words and hasattr(command, "commands") and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    try:
        return command.make_context(command.name, list(words)).params
    except Exception as exc:  # noqa: BLE001 - typer vendors click: its UsageError has no stable import path
        pytest.fail(f"the CLI refuses {shlex.join(argv)}: {exc}")
