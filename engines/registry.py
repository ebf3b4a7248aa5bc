"""
The engine registry: a folder of engines, each with its manifest, and the rules for handing one out.

An engine is handed out only when its manifest matches the model version, precision, builder
flavour and version, and the compute capability of the GPU in hand, and when the file's sha256
is the one its manifest recorded. Otherwise the registry says which field did not match, and
rebuilds from the shipped ONNX model where a builder is available for that GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skyblink.lazy_import import lazy_module

from .manifest import MANIFEST_SUFFIX, EngineManifest, file_sha256
from .trust import TrustedManifest

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # optional on CPU-only machines and on the driver

__all__ = ["DeviceInfo", "EngineNotFoundError", "EngineRegistry", "EngineRequest", "current_device"]

log = logging.getLogger(__name__)


class EngineNotFoundError(LookupError):
    """No engine in the registry fits the request; ``reasons`` says, per engine, which field did not."""

    def __init__(self, request: EngineRequest, reasons: list[str]) -> None:
        detail = "; ".join(reasons) if reasons else "the registry holds no engine of this model"
        super().__init__(f"no engine for {request.describe()}: {detail}")
        self.request = request
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A GPU: its name and compute capability (``"9.0"`` for H100). Stable."""

    name: str
    compute_capability: str


def current_device(index: int = 0) -> DeviceInfo | None:
    """Return the CUDA device ``index`` as seen by torch, or None when there is no CUDA device."""
    try:
        available = torch.cuda.is_available()
    except ImportError:  # no torch here
        return None
    if not available or index >= torch.cuda.device_count():
        return None
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceInfo(torch.cuda.get_device_name(index), f"{major}.{minor}")


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """What a worker asks the registry for. Stable."""

    model: str
    model_version: str
    precision: str
    device: DeviceInfo | None  # None: no GPU in hand; every other field (and the file's sha256) is still checked
    builder: str
    builder_version: str
    onnx_sha256: str | None = None  # a specific graph (a channel's release); None: any of the model
    #: Input shapes (NCHW) the caller will run; one optimization profile of the engine must cover each.
    shapes: tuple[tuple[int, ...], ...] = ()

    def describe(self) -> str:
        """One line naming every field."""
        where = (f"on {self.device.name} (compute capability {self.device.compute_capability})" if self.device
                 else "with no GPU in hand")
        return (
            f"{self.model} {self.model_version} {self.precision}"
            f"{' from ONNX ' + self.onnx_sha256[:12] if self.onnx_sha256 else ''} {where} "
            f"with {self.builder} {self.builder_version}"
            f"{' for inputs ' + ', '.join(map(str, self.shapes)) if self.shapes else ''}"
        )


class EngineRegistry:
    """
    Engines and their manifests in one folder. Experimental.

    Parameters
    ----------
    root : Path
        The folder; created on first write.
    trusted : TrustedManifest, optional
        With it, an engine is handed out only when its sha256 is listed there (a file the
        workers cannot write, ``engines.trusted_manifest``), besides matching its own manifest;
        engines this registry object built itself (`get_or_build`) count as trusted.
    """

    def __init__(self, root: Path | str, *, trusted: TrustedManifest | None = None) -> None:
        self.root = Path(root)
        self.trusted = trusted
        self._built_here: set[str] = set()

    @classmethod
    def from_config(cls, registry: str | Path, trusted_manifest: str | Path | None = None) -> EngineRegistry:
        """
        The registry of the configuration (``engines.registry``, ``engines.trusted_manifest``).

        Raises
        ------
        IntegrityError
            A trusted manifest is configured but cannot be read.
        """
        trusted = TrustedManifest.read(trusted_manifest) if trusted_manifest else None
        return cls(Path(registry).expanduser(), trusted=trusted)

    def manifests(self) -> list[EngineManifest]:
        """Return every readable manifest in the registry, sorted by engine file name."""
        found = []
        for path in sorted(self.root.glob(f"*{MANIFEST_SUFFIX}")):
            try:
                found.append(EngineManifest.read(path))
            except ValueError as exc:
                log.warning("skipping %s", exc)
        return found

    def mismatch(self, manifest: EngineManifest, request: EngineRequest) -> str | None:
        """Return why ``manifest`` does not fit ``request`` (naming the field), or None if it does."""
        checks: tuple[tuple[str, object, object], ...] = (
            ("model", manifest.model, request.model),
            ("model_version", manifest.model_version, request.model_version),
            ("precision", manifest.precision, request.precision),
            ("builder", manifest.builder, request.builder),
            ("builder_version", manifest.builder_version, request.builder_version),
        )
        if request.onnx_sha256 is not None:
            checks = (*checks, ("onnx_sha256", manifest.onnx_sha256, request.onnx_sha256))
        for name, have, want in checks:
            if have != want:
                return f"{manifest.engine_file}: {name} is {have!r}, wanted {want!r}"
        if request.device is not None and request.device.compute_capability not in manifest.compute_capabilities:
            return (
                f"{manifest.engine_file}: compute_capabilities {manifest.compute_capabilities} do not include "
                f"{request.device.compute_capability} ({request.device.name})"
            )
        for shape in request.shapes:
            if not any(profile.covers(shape) for profile in manifest.profiles):
                profiles = ", ".join(f"{p.name} {p.min}..{p.max}" for p in manifest.profiles)
                return f"{manifest.engine_file}: no optimization profile covers input shape {shape} ({profiles})"
        path = self.root / manifest.engine_file
        if not path.is_file():
            return f"{manifest.engine_file}: the engine file is missing"
        actual = file_sha256(path)
        if actual != manifest.engine_sha256:
            return f"{manifest.engine_file}: file sha256 {actual[:12]}... differs from engine_sha256 {manifest.engine_sha256[:12]}... in its manifest (tampered or corrupt)"
        if self.trusted is not None and manifest.engine_sha256 not in self._built_here:
            return self.trusted.check_engine(manifest)
        return None

    def find(self, request: EngineRequest) -> tuple[Path, EngineManifest]:
        """
        Return the engine file and manifest that fit ``request``.

        Raises
        ------
        EngineNotFoundError
            None fits; its message names, for each engine of the model, the field that did not
            match (or the sha256 that differs).
        """
        reasons = []
        for manifest in self.manifests():
            if manifest.model != request.model:
                continue
            reason = self.mismatch(manifest, request)
            if reason is None:
                return self.root / manifest.engine_file, manifest
            reasons.append(reason)
        raise EngineNotFoundError(request, reasons)

    def get_or_build(self, request: EngineRequest, build: Callable[[], EngineManifest] | None) -> tuple[Path, EngineManifest]:
        """
        Return a fitting engine, building one with ``build`` when none fits.

        Parameters
        ----------
        request : EngineRequest
        build : callable or None
            Builds into this registry and returns the manifest (e.g. a ``functools.partial`` of
            `skyblink.engines.build.build_engine`); None where no builder is available.

        Raises
        ------
        EngineNotFoundError
            None fits and there is no builder, or the new build does not fit either.
        """
        try:
            return self.find(request)
        except EngineNotFoundError as exc:
            if build is None:
                raise
            log.info("%s; building one", exc)
        built = build()
        if isinstance(built, EngineManifest):
            self._built_here.add(built.engine_sha256)  # built by this process from a verified graph
        return self.find(request)
