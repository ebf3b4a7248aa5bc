"""Fixtures of tests/k8s: the rendered overlays, the KubeRay CRDs, the nightly submitter script."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from k8s_render import CRD_DIR, K8S, OVERLAYS, find, load_script, render


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / "overlays" / overlay))


@pytest.fixture(scope="session")
def need_crds() -> Path:
    if not (CRD_DIR / "ray.io_rayclusters.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (shared/ lies beside the checkout in CI)")
    return CRD_DIR


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objects(overlay: str) -> list[dict[str, Any]]:
    """The rendered objects of ``overlay`` (a fresh deep copy per test)."""
    return copy.deepcopy(list(_rendered(overlay)))


@pytest.fixture(scope="session")
def nightly() -> ModuleType:
    return load_script("skyblink-nightly")


@pytest.fixture
def rayjob(objects: list[dict[str, Any]], nightly: ModuleType) -> dict[str, Any]:
    """The RayJob the CronJob submits for the night 20261125, filled in as its submitter does."""
    template = find(objects, "ConfigMap", "skyblink-nightly")["data"]["rayjob.yaml"]
    head = find(objects, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    namespace = find(objects, "Namespace")["metadata"]["name"]
    return nightly.render_rayjob(template, night="20261125", namespace=namespace, head_image=head)

