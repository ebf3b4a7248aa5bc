"""
The one typed configuration of skyblink.

Every value has an embedded default. A run's effective configuration is layered, each layer
winning over the one before it:

1. the defaults below;
2. a TOML file (``--config PATH``, else ``$SKYBLINK_CONFIG``, else ``./skyblink.toml`` if present);
3. environment variables ``SKYBLINK_<SECTION>__<KEY>`` (``SKYBLINK_INGEST__TILE_SIZE=512``) and
   ``SKYBLINK_<KEY>`` for top-level keys (``SKYBLINK_LOG_LEVEL=debug``);
4. command-line flags.

An unknown key in any layer is an error that names the key and the layer it came from, so a typo
never silently falls back to a default.

Notes
-----
Stable. The same TOML document is what the Kubernetes ConfigMap carries.
"""

from __future__ import annotations

import json
import os
import tomllib
import warnings
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .headers import HeadersConfig
from .lazy_import import lazy_module
from .model_io import ClassifierName
from .redaction import MASK, redact_text

if TYPE_CHECKING:
    import tomli_w
    from astropy import time as astropy_time
else:
    astropy_time = lazy_module("astropy.time")  # slow to import; only validating night_start needs it
    tomli_w = lazy_module("tomli_w")  # only `config show` needs it

__all__ = [
    "ENV_PREFIX",
    "RENAMED_KEYS",
    "AlertsConfig",
    "Backend",
    "ConfigError",
    "EnginesConfig",
    "IngestConfig",
    "NightConfig",
    "RayConfig",
    "RedisConfig",
    "SimConfig",
    "SkyblinkConfig",
    "config_as_json",
    "config_as_toml",
    "load_config",
]

ENV_PREFIX = "SKYBLINK_"
ENV_CONFIG_FILE = "SKYBLINK_CONFIG"
DEFAULT_CONFIG_FILE = Path("skyblink.toml")
_NESTED_DELIMITER = "__"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and where it came from."""


class Backend(StrEnum):
    """
    The inference backend of the worker actors (``engines.backend``, ``--backend``).

    A `str` subclass: ``Backend.TORCH == "torch"``, and it is written to TOML and JSON as its value.
    """

    AUTO = "auto"  # a TensorRT engine for this GPU, else torch on CUDA, else ONNX Runtime on the CPU
    TENSORRT = "tensorrt"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


#: Configuration keys renamed or split, read from old files with a warning: the old dotted key ->
#: the keys it now sets, each to the old value. A layer (file, environment or flags) that gives
#: both the old key and one of its replacements is an error.
RENAMED_KEYS: dict[str, tuple[str, ...]] = {
    # It meant both the units of one actor call and the windows of one device batch.
    "night.tiles_per_task": ("night.units_per_call", "night.device_batch"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SimConfig(_Section):
    """Options of the sky simulator (``skyblink sim night``)."""

    fields: int = Field(2, ge=1, description="Number of sky fields observed in the night.")
    exposures_per_field: int = Field(5, ge=1, description="Exposures taken of each field.")
    image_size: int = Field(2048, ge=64, le=16384, description="CCD width and height in pixels.")
    ccds: int = Field(1, ge=1, le=256, description="CCDs per exposure (multi-extension FITS when > 1).")
    seed: int = Field(20261125, ge=0, description="Seed; the same seed gives byte-identical files.")
    pixel_dtype: Literal["uint16", "float32"] = Field(
        "uint16", description="On-disk pixel type: 16-bit unsigned ADU or float32 ADU."
    )
    night_start: str = Field(
        "2026-11-25T02:00:00", description="UTC time of the night's first exposure (ISO 8601)."
    )
    cadence_minutes: float = Field(
        15.0, gt=0, description="Time between consecutive exposures of the same field."
    )
    exptime: float = Field(30.0, gt=0, description="Exposure time in seconds.")
    band: Literal["g", "r", "i", "z"] = Field("r", description="Filter of every exposure.")
    pixel_scale_arcsec: float = Field(0.6, gt=0, description="Pixel scale in arcsec per pixel.")
    reference_depth: int = Field(
        6, ge=1, description="Depth of each field's reference image, in single exposures."
    )

    @field_validator("night_start")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        try:
            astropy_time.Time(value, format="isot", scale="utc")
        except ValueError as exc:
            msg = f"night_start must be an ISO 8601 UTC time like 2026-11-25T02:00:00, got {value!r}"
            raise ValueError(msg) from exc
        return value


class IngestConfig(_Section):
    """How FITS exposures become Zarr arrays (``skyblink ingest``)."""

    tile_size: int = Field(1024, ge=32, le=8192, description="Zarr chunk (tile) edge in pixels.")
    shard_tiles: int = Field(
        2, ge=1, le=64, description="Shard edge in tiles; a shard holds shard_tiles**2 tiles."
    )
    compressor: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = Field(
        "blosc-zstd", description="Lossless compressor of the tiles."
    )
    compression_level: int = Field(
        1, ge=0, le=22, description="Compressor level; blosc-zstd 1 keeps 97 % of level 5's ratio at twice its speed."
    )
    shuffle: Literal["byte", "bit"] = Field(
        "byte", description="Blosc's shuffle before compressing: of bytes, or of bits."
    )
    write_threads: int = Field(
        4, ge=1, le=64, description="CCDs of one file compressed and written at once (a visit is one file of many CCDs)."
    )
    read_threads: int = Field(
        1, ge=1, le=64,
        description=("CCDs of one file read at once, each thread through its own file handle (a gzip file is read by "
                     "one); for many-core nodes, where reading one visit file by one thread can be the limit."),
    )
    max_nonfinite_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A frame with a larger fraction of NaN/inf pixels is quarantined.",
    )

    @field_validator("tile_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            msg = f"tile_size must be a multiple of 32 (the detector's stride), got {value}"
            raise ValueError(msg)
        return value


class RayConfig(_Section):
    """Where Ray runs."""

    address: str | None = Field(
        None,
        description="Ray address: unset or 'local' starts a local Ray; 'auto' or ray://host:port joins one.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (unset: all).")


class RedisConfig(_Section):
    """Where alerts go, and how to authenticate to it. Secrets are never logged or shown."""

    url: str | None = Field(
        None,
        description="redis:// or rediss:// URL; unset starts a private redis-server on a free port.",
    )
    username: str | None = Field(None, description="ACL user name (unset: the default user).")
    password: SecretStr | None = Field(
        None,
        description="AUTH password; prefer the environment (SKYBLINK_REDIS__PASSWORD, from a K8s Secret). "
        "Wins over a password inside url.",
    )
    tls_ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed the server certificate (rediss:// only)."
    )
    tls_cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    tls_key_file: Path | None = Field(None, description="Private key (PEM) of tls_cert_file.")
    tls_verify: bool = Field(
        True, description="Verify the server certificate and host name (rediss:// only)."
    )
    socket_timeout_s: float = Field(10.0, gt=0, description="Timeout of one command, seconds.")
    connect_timeout_s: float = Field(3.0, gt=0, description="Timeout of a connection attempt, seconds.")

    # No validator on url: a validation error would echo the value, and a URL may hold a password.
    # skyblink.storage.alerts.connection checks the scheme and names the URL redacted.


class AlertsConfig(_Section):
    """The alert stream: its name, trimming, batching, retries, spool, cutouts and consumers."""

    stream: str = Field(
        "skyblink:alerts:{night}",
        description="Stream name template; {night} is replaced by the night (e.g. 20261125).",
    )
    maxlen: int = Field(
        1_000_000, ge=1000, description="Approximate MAXLEN of each night's stream (XADD MAXLEN ~)."
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="Alerts per pipelined XADD batch.")
    retries: int = Field(
        5, ge=0, le=50, description="Retries of a batch while Redis is unreachable, before spooling."
    )
    backoff_s: float = Field(0.2, gt=0, description="First retry delay; doubles on every retry.")
    backoff_max_s: float = Field(5.0, gt=0, description="Longest delay between two retries.")
    spool_dir: Path = Field(
        Path(".skyblink/alert-spool"),
        description="Where alerts go when Redis stays unreachable; replayed at the next producer start.",
    )
    cutouts: Literal["inline", "side-store"] = Field(
        "inline",
        description="inline: cutouts inside each packet; side-store: in Redis hashes keyed by alertId "
        "(with cutout_ttl_s), the packet carries the key.",
    )
    cutout_ttl_s: int = Field(7 * 86400, ge=60, description="Lifetime of side-store cutouts, seconds.")
    cutout_gzip: Literal["rle", "deflate", "stored"] = Field(
        "rle",
        description="gzip of cutout FITS: rle (fast, zlib Z_RLE), deflate (level 6, smallest, slowest) "
        "or stored (no compression, fastest).",
    )
    dedup_ttl_s: int = Field(
        7 * 86400, ge=60, description="How long a stream remembers published alertIds (reruns)."
    )
    consumer_idle_timeout_s: float = Field(
        60.0, gt=0, description="Pending entries idle this long are reclaimed (XAUTOCLAIM)."
    )
    max_deliveries: int = Field(
        5, ge=1, description="An entry whose handler failed this many deliveries is dead-lettered."
    )
    read_count: int = Field(100, ge=1, description="Entries a consumer reads per XREADGROUP.")
    block_ms: int = Field(2000, ge=0, description="How long XREADGROUP blocks waiting for entries.")
    edge_min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Remote-site producers publish only candidates with real/bogus >= this (unset: all).",
    )

    @field_validator("stream")
    @classmethod
    def _night_placeholder(cls, value: str) -> str:
        try:
            formatted = value.format(night="20261125")
        except (KeyError, IndexError, ValueError) as exc:
            msg = f"stream must be a template whose only placeholder is {{night}}, got {value!r}"
            raise ValueError(msg) from exc
        if "{night}" not in value or "{" in formatted or "}" in formatted:
            msg = f"stream must contain {{night}} and no braces otherwise, got {value!r}"
            raise ValueError(msg)
        return value


class EnginesConfig(_Section):
    """Where engines are kept and which inference backend runs."""

    registry: str = Field(
        "~/.cache/skyblink/engines",
        description="Engine registry folder (engines and their manifests); a volume on Kubernetes.",
    )
    trusted_manifest: Path | None = Field(
        None,
        description="JSON file of the sha256 of the promoted releases and vouched-for engines (`skyblink engines "
        "trust`), mounted where the workers cannot write; set: nothing else is loaded.",
    )
    compile_cache: str | None = Field(
        None,
        description="Folder of torch.compile's caches (Inductor's kernels and graphs) for the GPU actors' compiled "
        "device program, kept between actor starts; a volume on Kubernetes (unset: the registry's torch-compile/).",
    )
    backend: Backend = Field(
        Backend.AUTO,
        description="auto: a TensorRT engine for this GPU, else torch on CUDA, else ONNX Runtime on the CPU.",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16",
        description="Precision on GPU backends; a production-channel release in the registry overrides it.",
    )
    canary_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="`engines promote`: fraction of a store's work units run in shadow."
    )
    shadow_match_radius_px: float = Field(
        1.5, gt=0.0, description="A candidate's detection matches production's within this many pixels."
    )
    promote_min_matched_fraction: float = Field(
        0.95, ge=0.0, le=1.0,
        description="Promote only when at least this fraction of each side's detections is matched by the other.",
    )
    promote_max_real_bogus_delta: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Promote only when the 95th percentile of |real/bogus change| over matched detections is within this.",
    )
    promote_max_count_change: float = Field(
        0.05, ge=0.0, description="Promote only when the detection count changes by at most this fraction."
    )


class NightConfig(_Section):
    """The nightly run (``skyblink night run``): work units, worker actors, alert decisions, watch mode."""

    tile_size: int | None = Field(
        None, ge=64, le=8192, description="Core edge of a work unit in pixels (unset: ingest.tile_size)."
    )
    margin: int = Field(
        32, ge=0, le=512, description="Context read on every side of a tile; sources in it belong to the neighbour."
    )
    units_per_call: int = Field(
        4, ge=1, le=1024,
        description="Work units in one call to a worker actor (the driver's unit of dispatch, retry and progress).",
    )
    device_batch: int = Field(
        4, ge=1, le=1024,
        description="Windows a GPU worker actor runs through its device program at once (sizes its pinned and device buffers).",
    )
    gpu_prepare_calls: int = Field(
        4, ge=1, le=16, description="Calls a GPU worker actor reads and prepares on the host while one launches on its device."
    )
    gpu_reference_cache_gib: float | None = Field(
        None, ge=0.0, description="Device memory a GPU worker actor keeps reference CCDs in, so that a field visited again "
        "reads only its science pixels (unset: half the memory free after the actor's warm-up; 0: only the one in use).",
    )
    workers: int | None = Field(
        None, ge=1, description="Worker actors (unset: one per GPU, else one per CPU of the cluster, sharing all CPUs but one)."
    )
    detector_threshold: float = Field(
        0.3, gt=0.0, lt=1.0, description="Detector new-source score a peak must reach to become a candidate."
    )
    snr_threshold: float = Field(
        5.0, gt=0.0, description="Matched-filter S/N (PSF) a candidate must reach in the difference image."
    )
    top_k: int = Field(64, ge=1, le=4096, description="Most candidates kept per tile.")
    psf_match: Literal["gaussian", "kernel"] = Field(
        "gaussian",
        description="PSF matching of the per-tile program: a Gaussian of the FWHMs, or a kernel solved on each tile's stars.",
    )
    classifier: ClassifierName = Field(
        "classifier",
        description="The real/bogus network of the per-tile program: classifier (trained on the simulator; the simulated "
        "nights' targets are measured with it) or survey_classifier (braai's trunk, its layer trained on real ZTF and Rubin "
        "alerts: for real skies; it called the real DECam transient real where the classifier did not).",
    )
    compile_device_program: bool | Literal["auto"] = Field(
        "auto",
        description="On a GPU, compile the device program's per-pixel steps and the detector (torch.compile) and run the "
        "program as CUDA graphs: about 4.5x the eager program's tiles/s (406 against 91 on an H100), paid once per actor at "
        "its start (24 s with a warm compile cache, 91 s cold, against 7 s eager on an H100). auto: compiled for --watch "
        "(the actors start before the night) and for runs of at least compile_min_tiles tiles, eager for smaller runs.",
    )
    compile_min_tiles: int = Field(
        5000,
        ge=0,
        description="With compile_device_program = \"auto\", the fewest tiles in a run (estimated from the night's first "
        "exposure and its count) for which the actors compile: about where the compile's start-up cost is repaid.",
    )
    alert_min_real_bogus: float = Field(
        0.5, ge=0.0, le=1.0, description="A candidate with real/bogus below this is catalogued, not alerted."
    )
    anomaly_max_class_probability: float = Field(
        0.45,
        ge=0.0,
        le=1.0,
        description="A real candidate whose most probable class is below this is alerted as an anomaly.",
    )
    match_radius_arcsec: float = Field(
        1.0, gt=0.0, description="Detections closer than this on the sky are one object."
    )
    reference_snr_threshold: float = Field(
        5.0, gt=0.0, description="S/N of the static sources detected on each field's reference (matched against)."
    )
    variable_min_snr: float = Field(
        5.0, gt=0.0, description="Difference S/N a detection on a reference source needs to be alerted as variable."
    )
    link_min_detections: int = Field(3, ge=3, description="Detections (distinct exposures) a moving-object tracklet needs.")
    link_min_real_bogus: float = Field(
        0.5, ge=0.0, le=1.0, description="Real/bogus a new detection needs to be linked into tracklets."
    )
    link_max_rate_arcsec_per_hour: float = Field(4000.0, gt=0.0, description="Fastest motion linked, arcsec per hour.")
    link_min_motion_arcsec: float = Field(
        1.5, ge=0.0, description="Smallest displacement over a tracklet's span (slower: a stationary source)."
    )
    link_n_sigma: float = Field(5.0, gt=0.0, description="Inliers lie within this many sigma of a tracklet's prediction.")
    link_tolerance_arcsec: float = Field(
        0.3, gt=0.0, description="Floor of the inlier distance to a tracklet's prediction, arcsec."
    )
    link_max_reduced_chi2: float = Field(10.0, gt=0.0, description="Largest chi-square per degree of freedom of a tracklet fit.")
    link_seed_epochs: int = Field(
        3, ge=1, description="A tracklet is seeded from two detections at most this many exposures of its field apart."
    )
    link_trail_angle_tolerance_deg: float = Field(
        20.0, gt=0.0, le=90.0, description="Largest angle between a detection's trail and its tracklet's motion."
    )
    predict_ahead_hours: float = Field(
        1.0, ge=0.0, description="A moving object's alert predicts its position this long after its last detection."
    )
    health_check_s: float = Field(
        15.0, gt=0.0, description="How often the driver polls the worker actors' health check."
    )
    watch_poll_s: float = Field(1.0, gt=0.0, description="--watch: how often the night directory is listed.")
    watch_idle_s: float = Field(
        600.0, gt=0.0, description="--watch: stop after this long without a new exposure."
    )
    redis_dir: Path = Field(
        Path(".skyblink/redis"),
        description="Data directory of the private redis-server (append-only file, so a resumed run keeps its stream).",
    )

    @field_validator("tile_size")
    @classmethod
    def _tile_multiple_of_32(cls, value: int | None) -> int | None:
        if value is not None and value % 32:
            msg = f"tile_size must be a multiple of 32 (the detector's stride), got {value}"
            raise ValueError(msg)
        return value


class SkyblinkConfig(_Section):
    """The effective configuration of one skyblink process."""

    store: str = Field("skyblink-store.zarr", description="Zarr store: local path or fsspec URL.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    sim: SimConfig = Field(default_factory=SimConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    engines: EnginesConfig = Field(default_factory=EnginesConfig)
    night: NightConfig = Field(default_factory=NightConfig)
    headers: HeadersConfig = Field(default_factory=HeadersConfig)


def _section_names() -> set[str]:
    return {
        name
        for name, info in SkyblinkConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    }


def _check_keys(data: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError naming the first key in ``data`` that the schema does not have."""
    sections = _section_names()
    for key, value in data.items():
        if key not in SkyblinkConfig.model_fields:
            msg = f"unknown configuration key {key!r} in {source}; known keys: {sorted(SkyblinkConfig.model_fields)}"
            raise ConfigError(msg)
        if key in sections:
            if not isinstance(value, Mapping):
                msg = f"configuration key {key!r} in {source} must be a table, got {value!r}"
                raise ConfigError(msg)
            model = SkyblinkConfig.model_fields[key].annotation
            for sub in value:
                if sub not in model.model_fields:  # type: ignore[union-attr]
                    msg = (
                        f"unknown configuration key '{key}.{sub}' in {source}; known keys of "
                        f"[{key}]: {sorted(model.model_fields)}"  # type: ignore[union-attr]
                    )
                    raise ConfigError(msg)


def _resolve_renamed(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """
    Return ``data`` with every key of `RENAMED_KEYS` replaced by the keys it now sets, warning
    (`FutureWarning`) with the key, its source and what to use instead.

    Raises
    ------
    ConfigError
        ``data`` gives both an old key and one of its replacements.
    """
    out = dict(data)
    for old, new in RENAMED_KEYS.items():
        section, _, key = old.partition(".")
        table = out.get(section)
        if not isinstance(table, Mapping) or key not in table:
            continue
        both = [name for name in new if name.partition(".")[2] in table]
        if both:
            msg = (f"configuration key {old!r} in {source} is replaced by {', '.join(new)}; give those only "
                   f"({', '.join(both)} given too)")
            raise ConfigError(msg)
        warnings.warn(f"configuration key {old!r} in {source} is deprecated: it sets {' and '.join(new)} to its value; "
                      f"give {' and '.join(new)} instead", FutureWarning, stacklevel=4)
        table = dict(table)
        value = table.pop(key)
        for name in new:
            table[name.partition(".")[2]] = value
        out[section] = table
    return out


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _from_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        head, _, tail = dotted.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[head] = value
    return nested


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace(_NESTED_DELIMITER, ".")
        try:
            if key not in RENAMED_KEYS:  # resolved, with its warning, below
                _check_keys(_from_dotted({key: None}), f"environment variable {name}")
        except ConfigError as exc:
            msg = f"{exc} (variables are named {ENV_PREFIX}<SECTION>{_NESTED_DELIMITER}<KEY>)"
            raise ConfigError(msg) from None
        flat[key] = None if raw == "" else raw
    return _resolve_renamed(_from_dotted(flat), "the environment")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        msg = f"configuration file {path} does not exist"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"configuration file {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    data = _resolve_renamed(data, f"configuration file {path}")
    _check_keys(data, f"configuration file {path}")
    return data


def config_file_in_effect(config_file: Path | None, environ: Mapping[str, str]) -> Path | None:
    """
    Return the TOML file a run reads, or None when it runs on the embedded defaults.

    Parameters
    ----------
    config_file : Path or None
        An explicit ``--config`` path; it wins over ``$SKYBLINK_CONFIG`` and ``./skyblink.toml``.
    environ : Mapping[str, str]
        The environment to look in.
    """
    if config_file is not None:
        return config_file
    if environ.get(ENV_CONFIG_FILE):
        return Path(environ[ENV_CONFIG_FILE])
    if DEFAULT_CONFIG_FILE.is_file():
        return DEFAULT_CONFIG_FILE
    return None


def load_config(
    config_file: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SkyblinkConfig:
    """
    Build the effective configuration from defaults, a TOML file, the environment and flags.

    Parameters
    ----------
    config_file : Path, optional
        TOML file; when None, ``$SKYBLINK_CONFIG`` or ``./skyblink.toml`` is used if present.
    overrides : Mapping[str, Any], optional
        Values from command-line flags as dotted keys (``{"ingest.tile_size": 512}``); entries
        whose value is None are flags the user did not give and are ignored.
    environ : Mapping[str, str], optional
        Environment to read ``SKYBLINK_*`` variables from (default: ``os.environ``).

    Returns
    -------
    SkyblinkConfig
        The validated, frozen configuration.

    Raises
    ------
    ConfigError
        A key is unknown, the file is missing or not TOML, or a value fails validation; the
        message names the key and its source.
    """
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []
    path = config_file_in_effect(config_file, environ)
    if path is not None:
        layers.append((f"configuration file {path}", _read_file(path)))
    layers.append(("the environment", _from_environment(environ)))
    flags = _resolve_renamed(_from_dotted({k: v for k, v in (overrides or {}).items() if v is not None}),
                             "the command-line flags")
    _check_keys(flags, "the command-line flags")
    layers.append(("the command-line flags", flags))

    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = _merge(merged, layer)
    try:
        return SkyblinkConfig.model_validate(merged)
    except ValidationError as exc:
        # One problem per key: a value that fits no member of a union (`bool | "auto"`) fails once per
        # member, each error's location ending in the member's name after the key's own.
        problems: dict[str, tuple[str, list[str], Any, bool]] = {}
        for err in exc.errors():
            loc = tuple(err["loc"])
            while len(loc) > 1 and not _has_key(merged, loc):
                loc = loc[:-1]
            key = ".".join(str(p) for p in loc)
            source = next((name for name, layer in reversed(layers) if _has_key(layer, loc)), "the defaults")
            named = err["type"] == "value_error"  # our validators name the value themselves
            entry = problems.setdefault(key, (source, [], err.get("input"), named))
            entry[1].append(err["msg"].removeprefix("Value error, "))
        lines = []
        for key, (source, messages, value, named) in problems.items():
            message = ", or ".join(messages) + ("" if named else f", got {_shown_input(key, value)}")
            lines.append(f"{key} (from {source}): {message}")
        msg = "invalid configuration: " + "; ".join(lines)
        raise ConfigError(msg) from None


def _shown_input(key: str, value: Any) -> str:
    """The offending value for an error message, with secrets masked (a password is never echoed)."""
    if any(word in key.lower() for word in ("password", "secret", "token")):
        return MASK
    return redact_text(repr(value))


def _has_key(layer: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = layer
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def config_as_toml(config: SkyblinkConfig) -> str:
    """
    Render a configuration as the TOML document that would reproduce it.

    Unset optional values (TOML has no null) are written as comments saying they are unset.
    """
    data = _displayable(config)
    unset: list[str] = []

    def strip(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out[key] = strip(value, f"{prefix}{key}.")
            elif value is None:
                unset.append(f"{prefix}{key}")
            else:
                out[key] = value
        return out

    text = tomli_w.dumps(strip(data, ""))
    if unset:
        text += "\n# unset (embedded default behaviour): " + ", ".join(unset) + "\n"
    return text


def config_as_json(config: SkyblinkConfig) -> str:
    """Render a configuration as JSON, with the same redaction as `config_as_toml`."""
    return json.dumps(_displayable(config), indent=2)


def _displayable(config: SkyblinkConfig) -> dict[str, Any]:
    """
    The configuration as plain data for showing: secrets masked (`skyblink.redaction`).

    ``redis.password`` is already a masked SecretStr; the password or ``?password=`` inside
    ``redis.url`` (and any other URL-valued key) is replaced by ``***``.
    """
    data = config.model_dump(mode="json")

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        if isinstance(node, str):
            return redact_text(node)
        return node

    return walk(data)
