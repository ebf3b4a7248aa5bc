"""The workers' contract: the records a configuration builds, the keys that feed them, the old key's alias."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from skyblink.config import Backend, ConfigError, load_config
from skyblink.workers.program_config import TileProgram, WorkerConfig, window_edge
from skyblink.workers.tile_unit import WorkUnit


def test_a_configuration_builds_both_records_under_its_own_names(tmp_path: Path) -> None:
    path = tmp_path / "skyblink.toml"
    path.write_text('[ingest]\ntile_size = 512\n[night]\nmargin = 40\ndetector_threshold = 0.4\nsnr_threshold = 6.0\n'
                    'top_k = 32\npsf_match = "kernel"\nunits_per_call = 6\ndevice_batch = 3\ngpu_prepare_calls = 5\n'
                    'gpu_reference_cache_gib = 12.5\nworkers = 2\nhealth_check_s = 7.5\n[engines]\nbackend = "torch"\nprecision = "fp32"\n'
                    f'registry = "{tmp_path / "engines"}"\n[headers]\nfwhm_px = ["PSFPIX"]\n')
    config = load_config(path, environ={})
    workers = WorkerConfig.from_config(config)
    program = workers.program
    assert program == TileProgram.from_config(config)
    assert (program.tile_size, program.margin, program.window_edge) == (512, 40, 608)  # 592 up to the stride
    assert (program.detector_threshold, program.snr_threshold, program.top_k) == (0.4, 6.0, 32)
    assert (program.psf_match, program.precision, program.headers) == ("kernel", "fp32", config.headers)
    assert workers.backend is Backend.TORCH and workers.registry == str(tmp_path / "engines")
    # Calls per actor and the device batch are two keys now, each reaching its own field.
    assert (workers.units_per_call, workers.device_batch, workers.prepare_calls) == (6, 3, 5)
    assert workers.reference_cache_gib == 12.5
    assert WorkerConfig().reference_cache_gib is None  # default: sized by the actor to its device's free memory
    with pytest.raises(ConfigError, match="gpu_reference_cache_gib"):
        load_config(path, overrides={"night.gpu_reference_cache_gib": -1}, environ={})
    assert (workers.actors, workers.health_check_s) == (2, 7.5)
    # The compiled device program's caches sit beside the engines unless given their own folder.
    assert workers.compile_cache == tmp_path / "engines" / "torch-compile"
    own = load_config(path, overrides={"engines.compile_cache": str(tmp_path / "tc")}, environ={})
    assert WorkerConfig.from_config(own).compile_cache == tmp_path / "tc"
    # night.tile_size wins over the ingest chunk edge; records are frozen.
    assert TileProgram.from_config(load_config(path, overrides={"night.tile_size": 256}, environ={})).tile_size == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.top_k = 1  # type: ignore[misc]


def test_the_records_defaults_are_the_configurations() -> None:
    config = load_config(environ={})
    assert TileProgram() == TileProgram.from_config(config)
    workers = WorkerConfig.from_config(config)
    assert WorkerConfig(registry=config.engines.registry, compile_cache=workers.compile_cache) == workers
    assert workers.compile_cache == Path(config.engines.registry).expanduser() / "torch-compile"


@pytest.mark.parametrize(("overrides", "key"), [
    ({"night.units_per_call": 0}, "night.units_per_call"),
    ({"night.device_batch": 2000}, "night.device_batch"),
    ({"engines.backend": "cuda"}, "engines.backend"),
    ({"night.detector_threshold": 1.5}, "night.detector_threshold"),
])
def test_a_bad_value_is_rejected_naming_its_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} \(from the command-line flags\)"):
        load_config(overrides=overrides, environ={})


def test_the_old_tiles_per_task_sets_both_new_keys_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[night]\ntiles_per_task = 6\n")
    with pytest.warns(FutureWarning, match=r"'night.tiles_per_task' in configuration file .*old.toml is deprecated.*"
                                           r"night.units_per_call and night.device_batch"):
        config = load_config(path, environ={})
    workers = WorkerConfig.from_config(config)
    assert (workers.units_per_call, workers.device_batch) == (6, 6)
    # The environment variable too; a later layer's new key still wins over it.
    with pytest.warns(FutureWarning, match="the environment"):
        config = load_config(environ={"SKYBLINK_NIGHT__TILES_PER_TASK": "3"}, overrides={"night.device_batch": 8})
    assert (config.night.units_per_call, config.night.device_batch) == (3, 8)
    # Old and new key in one layer: which one was meant is not guessed.
    path.write_text("[night]\ntiles_per_task = 6\nunits_per_call = 2\n")
    with pytest.raises(ConfigError, match=r"'night.tiles_per_task' in configuration file .* is replaced by "
                                          r"night.units_per_call, night.device_batch; .*night.units_per_call given too"):
        load_config(path, environ={})


def test_the_core_ownership_rule_gives_every_pixel_to_one_unit() -> None:
    # Four units of 64 px with 16 px margins over a 128 px CCD: every window pixel position (in
    # steps of 0.25 px) over the CCD belongs to exactly one unit's core.
    units = [WorkUnit("s", "exposures/e", "ccd000", y0, x0, 64, 16) for y0 in (0, 64) for x0 in (0, 64)]
    assert units[0].window_edge == window_edge(64, 16) == 96 and units[3].origin == (48, 48)
    ys, xs = np.meshgrid(np.arange(-0.5, 127.5, 0.25), np.arange(-0.5, 127.5, 0.25), indexing="ij")
    owners = sum(u.owns(ys - u.origin[0], xs - u.origin[1]).astype(int) for u in units)
    assert (owners == 1).all()
    assert units[0].owns(16.0, 79.49) and not units[0].owns(16.0, 79.5) and not units[0].owns(15.49, 20.0)


def test_a_gpu_actor_keeps_its_compiled_program_in_the_configured_cache(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from skyblink.workers.actor import _keep_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    _keep_compile_cache(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    # An operator's own setting wins.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    _keep_compile_cache(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "theirs")
    # A folder that cannot be made (a file in the way) leaves torch's default.
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    (tmp_path / "file").write_text("")
    _keep_compile_cache(tmp_path / "file" / "cache")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
