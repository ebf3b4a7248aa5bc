"""Release channels: candidate -> canary -> production by shadow runs on a real store, and rollback."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path

import pytest

from skyblink.cluster.planning import plan_tiles
from skyblink.engines.calibration_set import build_calibration_set, stratified_spec
from skyblink.engines.canary import PromotionError, PromotionTolerances, promote
from skyblink.engines.catalog import onnx_path
from skyblink.engines.channels import ChannelError, Channels, register_release
from skyblink.engines.quantize import quantize_int8
from skyblink.workers.program_config import TileProgram

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, ray_local: None):
    from skyblink.cluster import ingest_night
    from skyblink.config import SimConfig, load_config
    from skyblink.sim import simulate_night
    from skyblink.storage import NightStore

    root = tmp_path_factory.mktemp("canary")
    simulate_night(root / "night", SimConfig(fields=1, exposures_per_field=2, image_size=512, seed=4), max_workers=1)
    config = load_config(overrides={"store": str(root / "store.zarr"), "ingest.tile_size": 256}, environ={})
    assert ingest_night(root / "night", config).ok
    return NightStore(str(root / "store.zarr"))


@pytest.fixture(scope="module")
def classifier_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    calib = build_calibration_set(stratified_spec(image_size=128))
    with contextlib.redirect_stdout(io.StringIO()):
        return quantize_int8("classifier", onnx_path("classifier"), tmp_path_factory.mktemp("q") / "c.onnx", calib)


def test_promote_through_canary_to_production_and_roll_back(store, classifier_int8: Path, tmp_path: Path) -> None:
    from skyblink.engines.backends import select_runner
    from skyblink.engines.registry import EngineRegistry

    root = tmp_path / "registry"
    channels = Channels(root)
    release = register_release(root, "classifier", classifier_int8, model_version="1.0", precision="int8")
    channels.set_candidate(release)
    units = [u for key in store.exposure_keys() for u in plan_tiles(store, key, size=256, margin=32)]
    options = {"program": TileProgram(tile_size=256, margin=32), "fraction": 0.5}
    report = promote("classifier", root, store, units, **options)
    print(report.text())
    assert report.target == "canary" and report.passed and len(report.units) == 4 and report.units_total == 8
    assert report.production_count == report.candidate_count == report.matched > 0  # same detector on both sides
    assert channels.get("classifier", "candidate") is None and channels.get("classifier", "canary").onnx_sha256 == release.onnx_sha256
    assert channels.get("classifier", "production") is None  # a canary is not production yet
    report = promote("classifier", root, store, units, **options)
    assert report.target == "production" and channels.get("classifier", "production").onnx_sha256 == release.onnx_sha256
    # The workers' select_runner now picks it.
    choice = select_runner("classifier", backend="onnxruntime", registry=EngineRegistry(root))
    assert choice.runner.onnx_path == root / release.onnx_file
    with pytest.raises(ChannelError, match="no candidate"):
        promote("classifier", root, store, units, to="canary", **options)

    # A candidate that disagrees with production (fp32 vs an impossible tolerance) is refused, channels untouched.
    fp32 = register_release(root, "classifier", onnx_path("classifier"), model_version="1.0", precision="fp32")
    channels.set_candidate(fp32)
    strict = PromotionTolerances(max_real_bogus_delta=0.0, min_matched_fraction=1.0)
    before = json.loads((root / "channels.json").read_text())
    with pytest.raises(PromotionError, match="real/bogus") as info:
        promote("classifier", root, store, units, tolerances=strict, **options)
    assert "FAIL" in str(info.value)
    assert json.loads((root / "channels.json").read_text()) == before

    # Promote fp32 all the way with the default tolerances, then roll back to the INT8 release.
    promote("classifier", root, store, units, **options)
    promote("classifier", root, store, units, **options)
    assert channels.get("classifier", "production").precision == "fp32"
    assert [r.precision for r in channels.history("classifier")] == ["int8"]
    assert channels.rollback("classifier").onnx_sha256 == release.onnx_sha256
    assert channels.rollback("classifier") is None  # back to the shipped model
    with pytest.raises(ChannelError, match="no production release"):
        channels.rollback("classifier")


def test_cli_promote_and_rollback(store, classifier_int8: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from skyblink.cli import app

    root = tmp_path / "registry"
    Channels(root).set_candidate(register_release(root, "classifier", classifier_int8, model_version="1.0", precision="int8"))
    runner = CliRunner()
    env = {"SKYBLINK_NIGHT__TILE_SIZE": "256"}
    out = runner.invoke(app, ["engines", "promote", "classifier", "--store", store.url, "--registry", str(root), "--fraction", "0.25"], env=env)
    assert out.exit_code == 0, out.output
    assert "promoted classifier 1.0 int8" in out.output and "on 2 of 8 work units" in out.output
    out = runner.invoke(app, ["engines", "promote", "classifier", "--store", store.url, "--registry", str(root), "--fraction", "0.25"], env=env)
    assert out.exit_code == 0 and "to production" in out.output, out.output
    out = runner.invoke(app, ["engines", "channels", "--registry", str(root)])
    assert out.exit_code == 0 and "int8" in out.output
    out = runner.invoke(app, ["engines", "rollback", "classifier", "--registry", str(root)])
    assert out.exit_code == 0 and "the shipped model" in out.output
    out = runner.invoke(app, ["engines", "rollback", "classifier", "--registry", str(root)])
    assert out.exit_code == 1 and "no production release" in out.output


def test_channels_file_stays_whole_under_concurrent_writers(classifier_int8: Path, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    release = register_release(root, "classifier", classifier_int8, model_version="1.0", precision="int8")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                Channels(root).set_candidate(release)
                Channels(root).state()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Channels(root).get("classifier", "candidate").onnx_sha256 == release.onnx_sha256
    assert not list(root.glob(".channels.*"))  # no temporary file left behind
