"""Real TensorRT-RTX engine builds on the CPU, their manifests, and the registry's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt-rtx-cu13, in the dev extra) builds engines without a GPU")

from skyblink.engines.build import EngineBuildError, build_engine  # noqa: E402
from skyblink.engines.export import file_sha256  # noqa: E402
from skyblink.engines.manifest import EngineManifest, ProfileSpec  # noqa: E402
from skyblink.engines.registry import DeviceInfo, EngineNotFoundError, EngineRegistry, EngineRequest  # noqa: E402

L4 = DeviceInfo("NVIDIA L4", "8.9")
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def registry(exported, tmp_path_factory: pytest.TempPathFactory) -> EngineRegistry:
    root = tmp_path_factory.mktemp("registry")
    build_engine(exported["detector_fp16"], root, model="detector", model_version="1.0", precision="fp16",
                 profiles=[ProfileSpec.parse("tile512:1-4-8@512x512"), ProfileSpec.parse("tile1024:1-2-4@1024x1024")],
                 compute_capabilities=["8.9", "12.0"], builder="tensorrt_rtx")
    build_engine(exported["classifier_fp32"], root, model="classifier", model_version="1.0", precision="fp32", builder="tensorrt_rtx")
    return EngineRegistry(root)


def request(model: str = "detector", precision: str = "fp16", device: DeviceInfo = L4, version: str = "1.0") -> EngineRequest:
    return EngineRequest(model, version, precision, device, "tensorrt_rtx", trt.__version__)


def test_build_writes_engine_and_manifest(registry: EngineRegistry, exported) -> None:
    manifests = {m.model: m for m in registry.manifests()}
    det = manifests["detector"]
    path = registry.root / det.engine_file
    assert path.stat().st_size == det.engine_bytes > 100_000
    assert det.engine_sha256 == file_sha256(path)
    assert det.onnx_sha256 == file_sha256(exported["detector_fp16"])
    assert det.builder == "tensorrt_rtx" and det.builder_version == trt.__version__
    assert det.compute_capabilities == ["8.9", "12.0"]
    assert [p.name for p in det.profiles] == ["tile512", "tile1024"]
    assert det.precision == "fp16" and det.input_name == "tiles"
    assert "sm89_sm120" in det.engine_file and det.engine_file.startswith("detector-fp16-tensorrt_rtx")
    assert EngineManifest.read(registry.root / (det.engine_file + ".manifest.json")) == det
    # The serialized engine is a real TensorRT-RTX plan: the runtime reads its header.
    assert manifests["classifier"].profiles[0].name == "stamps64"


def test_registry_hands_out_the_matching_engine(registry: EngineRegistry) -> None:
    path, manifest = registry.find(request())
    assert path.is_file() and manifest.model == "detector"


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(device=H100), "compute_capabilities ['8.9', '12.0'] do not include 9.0"),
        (request(precision="fp32"), "precision is 'fp16', wanted 'fp32'"),
        (request(version="2.0"), "model_version is '1.0', wanted '2.0'"),
    ],
)
def test_registry_refuses_naming_the_field(registry: EngineRegistry, req: EngineRequest, field: str) -> None:
    with pytest.raises(EngineNotFoundError) as info:
        registry.find(req)
    assert field in str(info.value)


def test_tampered_engine_is_refused(registry: EngineRegistry, tmp_path: Path) -> None:
    copy = EngineRegistry(tmp_path)
    for m in registry.manifests():
        (tmp_path / m.engine_file).write_bytes((registry.root / m.engine_file).read_bytes())
        m.write(tmp_path)
    victim = next(m for m in copy.manifests() if m.model == "detector")
    data = bytearray((tmp_path / victim.engine_file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / victim.engine_file).write_bytes(bytes(data))
    with pytest.raises(EngineNotFoundError, match=r"differs from engine_sha256 .*\(tampered or corrupt\)"):
        copy.find(request())


def test_get_or_build_rebuilds_where_a_builder_is_available(exported, tmp_path: Path) -> None:
    reg = EngineRegistry(tmp_path)
    with pytest.raises(EngineNotFoundError, match="holds no engine"):
        reg.get_or_build(request(model="classifier", precision="fp32"), None)
    path, manifest = reg.get_or_build(
        request(model="classifier", precision="fp32"),
        lambda: build_engine(exported["classifier_fp32"], tmp_path, model="classifier", model_version="1.0",
                             precision="fp32", compute_capabilities=["8.9"], builder="tensorrt_rtx"),
    )
    assert path.is_file() and manifest.compute_capabilities == ["8.9"]


def test_hopper_is_not_a_tensorrt_rtx_target(exported, tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match=r"compute capability 9\.0 is not a target of tensorrt_rtx"):
        build_engine(exported["classifier_fp32"], tmp_path, model="classifier", model_version="1.0",
                     precision="fp32", compute_capabilities=["9.0"], builder="tensorrt_rtx")


def test_profile_text_is_parsed_or_refused() -> None:
    spec = ProfileSpec.parse("tile2048:1-2-4@2048x2048")
    assert spec.min == (1, 3, 2048, 2048) and spec.max == (4, 3, 2048, 2048)
    assert spec.covers((3, 3, 2048, 2048)) and not spec.covers((5, 3, 2048, 2048))
    with pytest.raises(ValueError, match="NAME:BMIN-BOPT-BMAX@HxW"):
        ProfileSpec.parse("tile2048:1-4@2048")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ProfileSpec.parse("bad:8-2-4@64x64")


def test_cli_builds_a_shipped_model_and_lists_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from skyblink.cli import app

    runner = CliRunner()
    registry = tmp_path / "registry"
    result = runner.invoke(app, ["engines", "build", "--model", "classifier", "--precision", "fp16", "--target", "8.9",
                                 "--registry", str(registry), "--builder", "tensorrt_rtx"])
    assert result.exit_code == 0, result.output
    assert "built classifier-fp16-tensorrt_rtx" in result.output
    (manifest,) = EngineRegistry(registry).manifests()
    assert manifest.model_version == "1.0" and manifest.compute_capabilities == ["8.9"] and manifest.precision == "fp16"
    listed = runner.invoke(app, ["engines", "list", "--registry", str(registry)], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and "classifier" in listed.output and "8.9" in listed.output
    refused = runner.invoke(app, ["engines", "build", "--model", "classifier", "--precision", "int8", "--registry", str(registry)])
    assert refused.exit_code == 1 and "Q/DQ" in refused.output
