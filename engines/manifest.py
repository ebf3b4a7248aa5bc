"""
The engine manifest: what an engine file is, what it was built from and for, and what it passed.

An engine is not portable across GPU architectures or TensorRT versions, so the registry hands
one out only when its manifest matches the model, precision, builder and GPU in hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from skyblink.model_io import (  # re-exported: the torch-free constants live in model_io
    IO_NAMES,
    IONames,
)

__all__ = ["IO_NAMES", "MANIFEST_SUFFIX", "EngineManifest", "IONames", "ProfileSpec", "check_plain_file_name",
           "file_sha256"]

MANIFEST_SUFFIX = ".manifest.json"


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_plain_file_name(name: object, what: str) -> str:
    """
    Return ``name`` when it is a plain file name (no folder part, no ``..``), else raise.

    Parameters
    ----------
    name : object
        A file name read from a manifest or a channel file.
    what : str
        The field, for the message (``engine_file``).

    Raises
    ------
    ValueError
        Not a string, empty, ``.``/``..``, absolute, or with a ``/`` or ``\\`` in it.
    """
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or PurePosixPath(name).name != name
        or PureWindowsPath(name).name != name
        or "\x00" in name
    ):
        msg = f"{what} must be a plain file name inside the registry, got {name!r}"
        raise ValueError(msg)
    return name


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """
    One optimization profile: min, opt and max shape of the network's input. Stable.

    Shapes are full NCHW tuples, e.g. ``min=(1, 3, 512, 512)``.
    """

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            msg = f"profile {self.name!r}: min, opt and max must have the same rank"
            raise ValueError(msg)
        if any(a > b for a, b in zip(self.min, self.opt, strict=True)) or any(
            a > b for a, b in zip(self.opt, self.max, strict=True)
        ):
            msg = f"profile {self.name!r}: needs min <= opt <= max in every axis, got {self.min} {self.opt} {self.max}"
            raise ValueError(msg)

    @classmethod
    def parse(cls, text: str, *, channels: int = 3) -> ProfileSpec:
        """
        Parse ``NAME:BMIN-BOPT-BMAX@HxW`` (e.g. ``tile1024:1-8-16@1024x1024``).

        Raises
        ------
        ValueError
            The text is not in that form; the message shows the form.
        """
        try:
            name, rest = text.split(":", 1)
            batches, size = rest.split("@", 1)
            bmin, bopt, bmax = (int(b) for b in batches.split("-"))
            height, width = (int(v) for v in size.lower().split("x"))
        except ValueError as exc:
            msg = f"profile {text!r} is not NAME:BMIN-BOPT-BMAX@HxW (e.g. tile1024:1-8-16@1024x1024)"
            raise ValueError(msg) from exc
        return cls(name, (bmin, channels, height, width), (bopt, channels, height, width), (bmax, channels, height, width))

    def covers(self, shape: tuple[int, ...]) -> bool:
        """True when ``shape`` lies within [min, max] in every axis."""
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True))


@dataclass(frozen=True, slots=True)
class EngineManifest:
    """
    Everything that identifies an engine file. Stable.

    Attributes
    ----------
    model, model_version : str
        Network name (detector, classifier, braai) and the version from its model card.
    onnx_sha256 : str
        The ONNX graph the engine was built from.
    precision : str
        fp32, fp16 or int8.
    builder, builder_version : str
        ``tensorrt`` or ``tensorrt_rtx`` and its version.
    cuda_version : str or None
        CUDA version of the builder's runtime, where it reports one.
    compute_capabilities : list of str
        Target GPU architectures, e.g. ``["8.9", "12.0"]``; ``["current"]`` for the build GPU.
    profiles : list of ProfileSpec
    input_name : str
    built_at : str
        ISO UTC time.
    build_seconds : float
    engine_file : str
        File name of the serialized engine, next to the manifest.
    engine_sha256 : str
    engine_bytes : int
    calibration_set : str or None
        Id of the INT8 calibration set; None for fp32/fp16.
    calibration_strata : dict
        The calibration set's strata (sky background, density, seeing, depth).
    validation : dict
        Metrics the engine passed before entering the registry.
    inspection : dict
        The builder's engine inspector on the built engine (`skyblink.engines.build.inspect_engine`):
        ``layers`` (after fusion), ``precisions`` (layers per output precision) and ``per_layer``
        (name, type, precision); or ``unavailable`` with the runtime's reason where the engine
        cannot be deserialized here (TensorRT-RTX builds on a machine without a GPU).
    """

    model: str
    model_version: str
    onnx_sha256: str
    precision: str
    builder: str
    builder_version: str
    cuda_version: str | None
    compute_capabilities: list[str]
    profiles: list[ProfileSpec]
    input_name: str
    built_at: str
    build_seconds: float
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    calibration_set: str | None = None
    calibration_strata: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    inspection: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_plain_file_name(self.engine_file, "engine_file")  # a manifest never points outside its folder

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineManifest:
        """
        Build a manifest from `to_json` output.

        Raises
        ------
        ValueError
            A field is missing or unknown; the message names it.
        """
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            msg = f"engine manifest has unknown fields {sorted(unknown)}"
            raise ValueError(msg)
        try:
            profiles = [
                ProfileSpec(p["name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for p in data["profiles"]
            ]
            return cls(**{**data, "profiles": profiles})
        except (KeyError, TypeError) as exc:
            msg = f"engine manifest is missing or has a malformed field: {exc}"
            raise ValueError(msg) from exc

    def write(self, directory: Path) -> Path:
        """Write ``<engine_file>.manifest.json`` into ``directory`` and return its path."""
        path = Path(directory) / (self.engine_file + MANIFEST_SUFFIX)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> EngineManifest:
        """Read a manifest file; raise ValueError naming the file when it is not one."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (ValueError, json.JSONDecodeError) as exc:
            msg = f"{path}: not an engine manifest ({exc})"
            raise ValueError(msg) from exc
