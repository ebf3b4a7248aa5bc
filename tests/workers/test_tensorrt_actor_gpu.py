"""
On a GPU: the device program with TensorRT engines from the registry finds what it finds with
torch on the same tiles; a worker actor given the registry runs the engines, or says why not.

TensorRT-RTX has no compute capability 9.0 target: on H100/H200 (without NVIDIA's full TensorRT)
the program comparison skips saying so, and the actor test checks the fallback and its reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.cluster]


def _runtime_refuses_this_gpu() -> str | None:
    """Why the installed TensorRT cannot build for this GPU (none installed, or TensorRT-RTX on Hopper), or None."""
    from skyblink.engines._trt import TensorRTUnavailableError, load_trt
    from skyblink.engines.registry import current_device

    try:
        flavour = load_trt()
    except TensorRTUnavailableError as exc:
        return f"no TensorRT on this GPU node: {exc}"
    device = current_device()
    assert device is not None
    target = "SM" + device.compute_capability.replace(".", "")
    if flavour.is_rtx and target not in flavour.module.ComputeCapability.__members__:
        return (f"{flavour.name} {flavour.version} has no compute capability {device.compute_capability} target "
                f"({device.name}); full TensorRT from NVIDIA's index runs there")
    return None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> object:
    from skyblink.cluster import ingest_night
    from skyblink.config import SimConfig, load_config
    from skyblink.sim import simulate_night
    from skyblink.storage import NightStore

    root = tmp_path_factory.mktemp("trt")
    simulate_night(root / "night", SimConfig(fields=1, exposures_per_field=1, image_size=1024, seed=5), max_workers=1)
    config = load_config(overrides={"store": str(root / "store.zarr"), "ingest.tile_size": 256}, environ={})
    assert ingest_night(root / "night", config).ok
    return NightStore(str(root / "store.zarr"))


def test_device_program_with_tensorrt_matches_torch(store: object, tmp_path: Path) -> None:
    why = _runtime_refuses_this_gpu()
    if why is not None:
        pytest.skip(why)
    from skyblink.cluster.planning import plan_tiles
    from skyblink.engines.backends import select_runner
    from skyblink.engines.manifest import file_sha256
    from skyblink.engines.registry import EngineRegistry
    from skyblink.workers.gpu_units import GpuUnitProcessor
    from skyblink.workers.program_config import TileProgram, window_edge

    units = plan_tiles(store, "exposures/F00-000", size=256, margin=32)
    edge, batch, top_k = window_edge(256, 32), 3, 64
    registry = EngineRegistry(tmp_path / "engines")
    shapes = {"detector": [(batch, 3, edge, edge)], "classifier": [(batch * top_k, 3, 63, 63)]}
    trt = {m: select_runner(m, backend="tensorrt", precision="fp16", registry=registry, shapes=shapes[m]) for m in shapes}
    for choice in trt.values():
        assert choice.backend == "tensorrt" and choice.engine_sha256 == file_sha256(registry.root / choice.engine_file)
    ref = {m: select_runner(m, backend="torch", precision="fp16").runner for m in shapes}
    found = {}
    for name, runners in (("tensorrt", {m: c.runner for m, c in trt.items()}), ("torch", ref)):
        with runners["detector"], runners["classifier"]:
            gpu = GpuUnitProcessor(runners["detector"], runners["classifier"],
                                   TileProgram(tile_size=256, margin=32, top_k=top_k), batch=batch)
            found[name] = np.array([(c.x, c.y, c.real_bogus) for records in gpu.process(units, store).values()
                                    for c in records])
    engine, torch_xy = found["tensorrt"], found["torch"]
    assert len(torch_xy) >= 5
    # The documented tolerance (fp16 on both sides, different kernels): the same candidates
    # within 1 px, allowing 10 % at the threshold on one side only; real/bogus within 0.05.
    d = np.hypot(*(torch_xy[:, None, :2] - engine[None, :, :2]).transpose(2, 0, 1))
    nearest = d.argmin(axis=1)
    close = d.min(axis=1) < 1.0
    assert close.mean() >= 0.9, d.min(axis=1)
    assert abs(len(engine) - len(torch_xy)) <= max(2, 0.1 * len(torch_xy))
    assert np.abs(torch_xy[close, 2] - engine[nearest[close], 2]).max() < 0.05


def test_actor_runs_the_registrys_engines_or_says_why_not(store: object, tmp_path: Path) -> None:
    import ray

    from skyblink.config import Backend
    from skyblink.engines.backends import start_runner
    from skyblink.workers.actor import TileWorker
    from skyblink.workers.program_config import TileProgram, WorkerConfig

    why = _runtime_refuses_this_gpu()
    config = WorkerConfig(TileProgram(tile_size=256, margin=32, precision="fp16"), backend=Backend.AUTO, device_batch=3,
                          registry=str(tmp_path / "engines"))
    worker = TileWorker.options(num_gpus=1, num_cpus=1).remote(config, start_runner)
    try:
        engines = ray.get(worker.check_health.remote())["engines"]
    finally:
        ray.kill(worker)
    for model, choice in engines.items():
        assert f"registry {tmp_path / 'engines'}" in choice["reason"], (model, choice)
        if why is not None and why.startswith("no TensorRT"):  # the fallback names the missing builder
            assert choice["backend"] == "torch" and "no TensorRT builder is installed" in choice["reason"], choice
            continue
        if why is None:
            assert choice["backend"] == "tensorrt" and choice["engine_file"] and choice["engine_sha256"], choice
        else:  # TensorRT-RTX on Hopper: the build is refused, torch runs, and the reason says so
            assert choice["backend"] == "torch" and "not a target" in choice["reason"] and "torch on" in choice["reason"], choice
