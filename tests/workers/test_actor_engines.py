"""
The engine registry reaches every worker actor: the configured ``engines.registry`` is asked for
each model's TensorRT engine, and the actor's answer names the registry, the engine (file and
sha256) and the runtime's answer; a tampered engine is refused with its sha256 named.

On this CPU machine the runtime's answer is "no CUDA device", so the actors run ONNX Runtime; the
GPU side (the engine on the device program's stream) is `tests/workers/test_pipeline_gpu.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from skyblink.config import Backend
from skyblink.engines.backends import start_runner
from skyblink.engines.catalog import MODEL_VERSIONS, onnx_path
from skyblink.engines.registry import current_device
from skyblink.workers.actor import TileWorker
from skyblink.workers.program_config import TileProgram, WorkerConfig

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(current_device() is not None, reason="about the answer on a machine without a GPU")]

trt = pytest.importorskip("tensorrt_rtx", reason="the tensorrt extra (TensorRT-RTX) builds engines without a GPU")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A registry holding a real TensorRT-RTX fp16 classifier engine, built on the CPU."""
    from skyblink.engines.build import build_engine

    root = tmp_path_factory.mktemp("registry")
    manifest = build_engine(onnx_path("classifier", "fp16"), root, model="classifier",
                            model_version=MODEL_VERSIONS["classifier"], precision="fp16", builder="tensorrt_rtx")
    return root, manifest


def _engines(registry_root: Path, ray_local: None) -> dict[str, dict[str, str | None]]:
    config = WorkerConfig(TileProgram(tile_size=256, precision="fp16"), backend=Backend.AUTO, registry=str(registry_root))
    worker = TileWorker.options(num_cpus=1).remote(config, start_runner)
    try:
        return ray.get(worker.check_health.remote())["engines"]
    finally:
        ray.kill(worker)


def test_the_configured_registry_reaches_the_actor(registry: tuple[Path, object], ray_local: None) -> None:
    root, manifest = registry
    engines = _engines(root, ray_local)
    for name in ("detector", "classifier"):
        reason = engines[name]["reason"]
        assert engines[name]["backend"] == "onnxruntime"
        assert "no engine registry configured" not in reason
        assert f"registry {root}" in reason and "runtime: no CUDA device" in reason, reason
    # The registry holds no detector engine; the classifier's engine matches, named with its sha256.
    assert "the registry holds no engine of this model" in engines["detector"]["reason"]
    assert f"{manifest.engine_file} (sha256 {manifest.engine_sha256}) matches" in engines["classifier"]["reason"]


def test_a_tampered_engine_is_refused_by_the_actor_naming_its_sha256(registry: tuple[Path, object], ray_local: None,
                                                                     tmp_path: Path) -> None:
    import shutil

    root, manifest = registry
    tampered = tmp_path / "registry"
    shutil.copytree(root, tampered)
    engine = tampered / manifest.engine_file
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    reason = _engines(tampered, ray_local)["classifier"]["reason"]
    assert manifest.engine_file in reason and f"engine_sha256 {manifest.engine_sha256[:12]}" in reason, reason
    assert "tampered or corrupt" in reason and "matches" not in reason
