"""Engines and models verified end to end: hashes checked at load, file names kept inside the
registry, and a trusted manifest the workers cannot write that refuses a rewritten engine and its
rewritten manifest."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.engines import IntegrityError, TrustedManifest, write_trusted_manifest
from skyblink.engines.catalog import load_network, model_dir, onnx_path
from skyblink.engines.channels import Channels, register_release
from skyblink.engines.manifest import EngineManifest, ProfileSpec, file_sha256
from skyblink.engines.registry import DeviceInfo, EngineNotFoundError, EngineRegistry, EngineRequest

L4 = DeviceInfo("NVIDIA L4", "8.9")
REQUEST = EngineRequest("classifier", "1.0", "fp16", L4, "tensorrt_rtx", "1.7")


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _put_engine(root: Path, payload: bytes, name: str = "classifier-fp16-tensorrt_rtx-sm89.engine") -> EngineManifest:
    """An engine file and its manifest as the build writes them (the registry only checks, never parses, here)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(payload)
    manifest = EngineManifest(
        model="classifier", model_version="1.0", onnx_sha256="0" * 64, precision="fp16", builder="tensorrt_rtx",
        builder_version="1.7", cuda_version=None, compute_capabilities=["8.9"],
        profiles=[ProfileSpec.parse("stamps64:1-64-256@63x63")], input_name="stamps", built_at="2026-12-04T00:00:00+00:00",
        build_seconds=0.1, engine_file=name, engine_sha256=file_sha256(root / name), engine_bytes=len(payload),
    )
    manifest.write(root)
    return manifest


def test_a_manifest_pointing_outside_the_registry_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    manifest = _put_engine(root, b"engine bytes")
    (tmp_path / "outside.engine").write_bytes(b"not ours")
    evil = {**manifest.to_json(), "engine_file": "../outside.engine", "engine_sha256": file_sha256(tmp_path / "outside.engine")}
    (root / manifest.engine_file).unlink()
    (root / (manifest.engine_file + ".manifest.json")).write_text(json.dumps(evil))
    with pytest.raises(ValueError, match="engine_file must be a plain file name inside the registry, got '../outside.engine'"):
        EngineManifest.read(root / (manifest.engine_file + ".manifest.json"))
    with pytest.raises(EngineNotFoundError, match="holds no engine"):
        EngineRegistry(root).find(REQUEST)
    for name in ("/etc/passwd", "a/b.engine", "..", "", "a\\b.engine"):
        with pytest.raises(ValueError, match="plain file name"):
            replace(manifest, engine_file=name)


def test_a_rewritten_engine_with_a_rewritten_manifest_is_refused_by_the_trusted_manifest(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    manifest = _put_engine(root, b"the engine the build job made")
    trusted_path = tmp_path / "trusted" / "trusted.json"  # where the workers cannot write (a read-only mount)
    trusted = write_trusted_manifest(root, trusted_path)
    assert manifest.engine_sha256 in trusted.engines
    assert EngineRegistry(root, trusted=trusted).find(REQUEST)[1] == manifest

    # The attack: someone who can write the registry swaps the engine and fixes its manifest's hash.
    forged = _put_engine(root, b"an engine that does something else")
    assert EngineRegistry(root).find(REQUEST)[1] == forged  # a hash beside the file proves nothing ...
    with pytest.raises(EngineNotFoundError, match=r"is not in the trusted manifest .*trusted\.json"):
        EngineRegistry(root, trusted=TrustedManifest.read(trusted_path)).find(REQUEST)  # ... the trusted one does


def test_an_engine_built_here_from_a_verified_graph_is_used_with_a_trusted_manifest(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    trusted = write_trusted_manifest(root, tmp_path / "trusted.json")  # vouches for nothing yet
    registry = EngineRegistry(root, trusted=trusted)
    path, manifest = registry.get_or_build(REQUEST, lambda: _put_engine(root, b"built by this worker"))
    assert path.read_bytes() == b"built by this worker" and manifest.engine_sha256 not in trusted.engines


def test_a_tampered_release_onnx_is_never_handed_to_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from skyblink.engines.backends import select_runner

    root = tmp_path / "registry"
    channels = Channels(root)
    release = register_release(root, "classifier", onnx_path("classifier"), model_version="1.0", precision="fp32")
    channels.set_candidate(release)
    channels.advance("classifier", "canary")
    channels.advance("classifier", "production")
    choice = select_runner("classifier", backend="onnxruntime", registry=EngineRegistry(root))
    assert choice.runner.onnx_path == root / release.onnx_file
    _flip(root / release.onnx_file)
    with pytest.raises(IntegrityError, match=rf"{release.onnx_file}: sha256 .* differs .* \(tampered or corrupt\)"):
        select_runner("classifier", backend="onnxruntime", registry=EngineRegistry(root))


def test_channels_rewritten_to_an_attackers_release_is_refused_by_the_trusted_manifest(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    channels = Channels(root)
    good = register_release(root, "classifier", onnx_path("classifier"), model_version="1.0", precision="fp32")
    channels.set_candidate(good)
    channels.advance("classifier", "canary")
    channels.advance("classifier", "production")
    trusted = write_trusted_manifest(root, tmp_path / "trusted.json")
    assert Channels(root, trusted=trusted).onnx_path(channels.get("classifier", "production")) == root / good.onnx_file

    # The attack: a different graph registered (its own hash, consistent) and channels.json pointed at it.
    evil = register_release(root, "classifier", onnx_path("classifier", "fp16"), model_version="1.0", precision="fp16")
    channels.set_candidate(evil)
    channels.advance("classifier", "canary")
    channels.advance("classifier", "production")
    current = channels.get("classifier", "production")
    assert Channels(root).onnx_path(current) == root / evil.onnx_file  # consistent with itself ...
    with pytest.raises(IntegrityError, match="is not among the trusted releases of classifier"):
        Channels(root, trusted=trusted).onnx_path(current)  # ... but not vouched for
    data = json.loads((root / "channels.json").read_text())
    data["models"]["classifier"]["production"]["onnx_file"] = "../../etc/passwd"
    (root / "channels.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="onnx_file must be a plain file name"):
        channels.get("classifier", "production")


def test_the_configured_trusted_manifest_reaches_the_workers_backend_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    from skyblink.engines.backends import select_runner

    root = tmp_path / "registry"
    channels = Channels(root)
    channels.set_candidate(register_release(root, "classifier", onnx_path("classifier"), model_version="1.0", precision="fp32"))
    channels.advance("classifier", "canary")
    channels.advance("classifier", "production")
    empty = tmp_path / "trusted.json"
    empty.write_text(json.dumps({"format": 1, "releases": {}, "engines": []}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKYBLINK_ENGINES__REGISTRY", str(root))
    monkeypatch.setenv("SKYBLINK_ENGINES__TRUSTED_MANIFEST", str(empty))
    with pytest.raises(IntegrityError, match="not among the trusted releases"):
        select_runner("classifier", backend="onnxruntime")  # what a worker actor calls
    monkeypatch.setenv("SKYBLINK_ENGINES__TRUSTED_MANIFEST", str(tmp_path / "missing.json"))
    with pytest.raises(IntegrityError, match="cannot read the trusted manifest"):
        select_runner("classifier", backend="onnxruntime")  # fails closed


def test_cli_trust_writes_the_trusted_manifest(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    manifest = _put_engine(root, b"engine")
    out = tmp_path / "ro" / "trusted.json"
    result = CliRunner().invoke(app, ["engines", "trust", "--registry", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 engine(s)" in result.output
    assert TrustedManifest.read(out).engines == frozenset({manifest.engine_sha256})


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(model_dir("classifier"), root / "classifier")
    return root


def test_shipped_models_are_checked_against_their_cards(models_copy: Path) -> None:
    assert onnx_path("classifier", "fp32", models_copy).is_file()
    _flip(models_copy / "classifier" / "model.fp32.onnx")
    with pytest.raises(IntegrityError, match=r"model\.fp32\.onnx: sha256 .* classifier fp32 in its card\.json"):
        onnx_path("classifier", "fp32", models_copy)
    assert onnx_path("classifier", "fp16", models_copy).is_file()  # the other graph is intact


def test_shipped_weights_are_checked_against_their_card(models_copy: Path) -> None:
    pytest.importorskip("torch")
    load_network("classifier", models_copy)
    _flip(models_copy / "classifier" / "weights.pt")
    with pytest.raises(IntegrityError, match=r"weights\.pt: sha256 .* classifier weights in its card\.json"):
        load_network("classifier", models_copy)
