"""The layered configuration: defaults < TOML file < environment < flags; unknown keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import ConfigError, SkyblinkConfig, config_as_toml, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_embedded_defaults_need_no_file_and_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config == SkyblinkConfig()
    assert config.ray.address is None and config.redis.url is None  # embedded Ray and Redis
    assert config.ingest.tile_size == 1024


def test_file_then_environment_then_flags_win(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[ingest]\ntile_size = 512\nshard_tiles = 4\n[sim]\nseed = 7\n')
    env = {"SKYBLINK_INGEST__SHARD_TILES": "8", "SKYBLINK_SIM__SEED": "9", "SKYBLINK_LOG_LEVEL": "debug"}
    config = load_config(path, overrides={"sim.seed": 11, "ingest.tile_size": None}, environ=env)
    assert config.ingest.tile_size == 512  # file (flag not given)
    assert config.ingest.shard_tiles == 8  # environment over file
    assert config.sim.seed == 11  # flag over environment
    assert config.log_level == "debug"


def test_config_file_from_the_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'store = "s3://bucket/night.zarr"\n')
    assert load_config(environ={"SKYBLINK_CONFIG": str(path)}).store == "s3://bucket/night.zarr"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("file-top", "unknown configuration key 'stor' in configuration file"),
        ("file-section", "unknown configuration key 'ingest.tile_siz' in configuration file"),
        ("env", "unknown configuration key 'ingest.tile_siz' in environment variable SKYBLINK_INGEST__TILE_SIZ"),
        ("flag", "unknown configuration key 'sim.colour' in the command-line flags"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path, source: str, expected: str) -> None:
    path = None
    env: dict[str, str] = {}
    flags: dict[str, object] = {}
    if source == "file-top":
        path = write(tmp_path / "c.toml", 'stor = "x"\n')
    elif source == "file-section":
        path = write(tmp_path / "c.toml", "[ingest]\ntile_siz = 3\n")
    elif source == "env":
        env = {"SKYBLINK_INGEST__TILE_SIZ": "3"}
    else:
        flags = {"sim.colour": "red"}
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(path, overrides=flags, environ=env)


def test_invalid_values_name_the_key_and_the_source(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[ingest]\ntile_size = 100\n")
    with pytest.raises(ConfigError, match=r"ingest\.tile_size \(from configuration file .*multiple of 32"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"sim\.pixel_dtype \(from the environment\)"):
        load_config(environ={"SKYBLINK_SIM__PIXEL_DTYPE": "int8"})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "bad.toml", "[ingest\n"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", environ={})


def test_shown_toml_reproduces_the_configuration(tmp_path: Path) -> None:
    config = load_config(overrides={"ingest.tile_size": 256, "ray.address": "auto"}, environ={})
    text = config_as_toml(config)
    assert "unset" in text and "redis.url" in text
    assert load_config(write(tmp_path / "shown.toml", text), environ={}) == config


def test_cli_config_show_and_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    path = write(tmp_path / "c.toml", "[ingest]\ntile_size = 256\n")
    result = runner.invoke(app, ["--config", str(path), "config", "show"], env={"SKYBLINK_SIM__SEED": "5"})
    assert result.exit_code == 0, result.output
    assert "tile_size = 256" in result.output and "seed = 5" in result.output
    result = runner.invoke(app, ["config", "validate", str(write(tmp_path / "bad.toml", "[ray]\nadress = 'x'\n"))])
    assert result.exit_code == 1
    assert "unknown configuration key 'ray.adress'" in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("skyblink ")


def test_compile_device_program_is_auto_by_default_and_decided_by_the_runs_size() -> None:
    from skyblink.workers.program_config import WorkerConfig, compiles_for

    config = load_config(environ={})
    assert config.night.compile_device_program == "auto" and config.night.compile_min_tiles == 5000
    assert WorkerConfig.from_config(config).program.compile_device_program is True  # until a run decides
    assert load_config(environ={"SKYBLINK_NIGHT__COMPILE_DEVICE_PROGRAM": "false"}).night.compile_device_program is False
    assert load_config(overrides={"night.compile_device_program": "true"}, environ={}).night.compile_device_program is True
    with pytest.raises(ConfigError, match=r"night\.compile_device_program \(from the environment\)"):
        load_config(environ={"SKYBLINK_NIGHT__COMPILE_DEVICE_PROGRAM": "sometimes"})
    # The demo night (40 tiles, one GPU) stays eager; a night of many tiles per actor, or --watch, compiles.
    assert compiles_for("auto", tiles_per_actor=40) is False
    assert compiles_for("auto", tiles_per_actor=20_000 / 4) is True
    assert compiles_for("auto", tiles_per_actor=40, watch=True) is True
    assert compiles_for("auto") is True  # a size that could not be estimated: the throughput default
    assert compiles_for(True, tiles_per_actor=1) is True and compiles_for(False, tiles_per_actor=10**6, watch=True) is False
