"""
Release channels of the engine registry: candidate, canary and production, per model.

A *release* is one ONNX graph of a model (the shipped fp32 export, or an INT8 Q/DQ graph that
passed the accuracy gate) copied into the registry as ``<model>-<precision>-<sha12>.onnx``;
TensorRT engines are built from it (their manifests carry its sha256). The pointers live in
``<registry>/channels.json``::

    {"format": 1,
     "models": {"classifier": {"candidate": {...release...} | null, "canary": ..., "production": ...,
                               "history": [previous productions, oldest first]}}}

A new model version goes: train -> export -> quantize and gate -> candidate -> (shadow run) ->
canary -> (shadow run) -> production; `Channels.rollback` puts the previous production back.
Writes are atomic (a temporary file renamed over the old one) under an exclusive file lock, so
concurrent promotions never leave a torn or mixed file. No production release means the model
shipped in the package.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .manifest import MANIFEST_SUFFIX, EngineManifest, check_plain_file_name, file_sha256
from .trust import TRUSTED_FORMAT, TrustedManifest, verify_file

__all__ = ["CHANNELS", "CHANNELS_FILE", "ChannelError", "Channels", "Release", "register_release",
           "write_trusted_manifest"]

ChannelName = Literal["candidate", "canary", "production"]
CHANNELS: tuple[ChannelName, ...] = ("candidate", "canary", "production")
CHANNELS_FILE = "channels.json"
FORMAT = 1


class ChannelError(RuntimeError):
    """A channel operation that cannot be done (nothing to promote or roll back); the message says why."""


@dataclass(frozen=True, slots=True)
class Release:
    """
    One ONNX graph of a model in the registry. Stable.

    Attributes
    ----------
    model, model_version, precision : str
    onnx_file : str
        File name in the registry folder.
    onnx_sha256 : str
    calibration_set : str or None
    calibration_strata : dict
    validation : dict
        The accuracy gate's result (INT8) or the model card's metrics.
    registered_at : str
        ISO UTC time.
    promoted_at : dict
        Channel -> ISO UTC time the release entered it.
    """

    model: str
    model_version: str
    precision: str
    onnx_file: str
    onnx_sha256: str
    calibration_set: str | None = None
    calibration_strata: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    registered_at: str = ""
    promoted_at: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_plain_file_name(self.onnx_file, "onnx_file")  # a release never points outside the registry

    @property
    def label(self) -> str:
        """``classifier 1.0 int8 3f2a9c1d4e5b``."""
        return f"{self.model} {self.model_version} {self.precision} {self.onnx_sha256[:12]}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        """Inverse of ``dataclasses.asdict``; raises ValueError naming an unknown field."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            msg = f"release record has unknown fields {sorted(unknown)}"
            raise ValueError(msg)
        return cls(**data)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def register_release(registry_root: Path | str, model: str, onnx: Path | str, *, model_version: str, precision: str,
                     calibration_set: str | None = None, calibration_strata: dict[str, Any] | None = None,
                     validation: dict[str, Any] | None = None) -> Release:
    """Copy ``onnx`` into the registry under its content name and return its (unpointed) release."""
    root = Path(registry_root)
    root.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(Path(onnx))
    name = f"{model}-{precision}-{sha[:12]}.onnx"
    target = root / name
    if not target.exists():
        tmp = root / f".{name}.tmp"
        shutil.copyfile(onnx, tmp)
        tmp.replace(target)
    return Release(model, model_version, precision, name, sha, calibration_set, dict(calibration_strata or {}),
                   dict(validation or {}), _now())


class Channels:
    """
    The candidate/canary/production pointers of one registry folder. Experimental; thread- and
    process-safe (every change holds an exclusive lock on ``channels.json.lock``).

    Parameters
    ----------
    registry_root : Path or str
    trusted : TrustedManifest, optional
        With it, `onnx_path` hands out only releases whose sha256 it lists
        (``engines.trusted_manifest``, a file the workers cannot write).
    """

    def __init__(self, registry_root: Path | str, *, trusted: TrustedManifest | None = None) -> None:
        self.root = Path(registry_root)
        self.path = self.root / CHANNELS_FILE
        self.trusted = trusted

    # ---------------------------------------------------------------------------- reading
    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"format": FORMAT, "models": {}}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            msg = f"{self.path}: not valid JSON ({exc}); restore it or delete it to start over"
            raise ValueError(msg) from exc
        if data.get("format") != FORMAT:
            msg = f"{self.path}: format {data.get('format')!r}, this skyblink reads format {FORMAT}"
            raise ValueError(msg)
        return data

    def get(self, model: str, channel: ChannelName) -> Release | None:
        """The release in ``channel`` of ``model``, or None."""
        entry = self._read()["models"].get(model, {}).get(channel)
        return Release.from_json(entry) if entry else None

    def history(self, model: str) -> list[Release]:
        """Earlier production releases of ``model``, oldest first."""
        return [Release.from_json(e) for e in self._read()["models"].get(model, {}).get("history", [])]

    def state(self) -> dict[str, dict[str, Release | None]]:
        """Every model's channels."""
        models = self._read()["models"]
        return {m: {c: Release.from_json(v[c]) if v.get(c) else None for c in CHANNELS} for m, v in sorted(models.items())}

    def onnx_path(self, release: Release) -> Path:
        """
        The release's ONNX file, after checking its bytes.

        Raises
        ------
        FileNotFoundError
            The file is gone (the message names it).
        IntegrityError
            Its sha256 is not the release's ``onnx_sha256``, or a trusted manifest is configured
            and does not list that sha256 for the model.
        """
        if self.trusted is not None:
            self.trusted.check_release(release.model, release.onnx_sha256, release.label)
        path = self.root / release.onnx_file
        if not path.is_file():
            msg = f"{path}: the ONNX graph of release {release.label} is missing from the registry"
            raise FileNotFoundError(msg)
        return verify_file(path, release.onnx_sha256, what=f"release {release.label}")

    # ---------------------------------------------------------------------------- writing
    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / (CHANNELS_FILE + ".lock")).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".channels.", suffix=".json")
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=1)
                    fh.write("\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                Path(tmp).replace(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def set_candidate(self, release: Release) -> None:
        """Make ``release`` the candidate of its model (replacing any earlier candidate)."""
        with self._edit() as data:
            slot = data["models"].setdefault(release.model, {"history": []})
            slot["candidate"] = asdict(replace(release, promoted_at={**release.promoted_at, "candidate": _now()}))

    def advance(self, model: str, to: Literal["canary", "production"]) -> Release:
        """
        Move the candidate to canary, or the canary to production (the old production goes to
        the history). Returns the release moved.

        Raises
        ------
        ChannelError
            The channel below ``to`` is empty.
        """
        source = {"canary": "candidate", "production": "canary"}[to]
        with self._edit() as data:
            slot = data["models"].setdefault(model, {"history": []})
            entry = slot.get(source)
            if not entry:
                msg = f"{model}: no {source} to promote to {to}"
                raise ChannelError(msg)
            moved = Release.from_json(entry)
            moved = replace(moved, promoted_at={**moved.promoted_at, to: _now()})
            if to == "production" and slot.get("production"):
                slot.setdefault("history", []).append(slot["production"])
            slot[to] = asdict(moved)
            slot[source] = None
        return moved

    def rollback(self, model: str) -> Release | None:
        """
        Put the previous production release back (None: back to the shipped model).

        Raises
        ------
        ChannelError
            There is no production release to roll back.
        """
        with self._edit() as data:
            slot = data["models"].get(model) or {}
            if not slot.get("production"):
                msg = f"{model}: no production release to roll back (the shipped model is in use)"
                raise ChannelError(msg)
            history = slot.setdefault("history", [])
            previous = history.pop() if history else None
            slot["production"] = previous
            data["models"][model] = slot
        return Release.from_json(previous) if previous else None


def write_trusted_manifest(registry_root: Path | str, out: Path | str) -> TrustedManifest:
    """
    Vouch for the registry as it is now: write the sha256 of each model's production release and
    its history, and of every engine whose file matches its manifest, to ``out``.

    Run it where promotions run, after checking the registry (``skyblink engines trust``), and
    mount ``out`` read-only into the workers. Written atomically.

    Raises
    ------
    IntegrityError
        A production release's ONNX file does not match its recorded sha256.
    """
    root = Path(registry_root)
    channels = Channels(root)
    releases: dict[str, list[str]] = {}
    for model, slots in channels.state().items():
        vouched = [r for r in (*channels.history(model), slots.get("production")) if r is not None]
        for release in vouched:
            verify_file(root / release.onnx_file, release.onnx_sha256, what=f"release {release.label}")
        releases[model] = sorted({r.onnx_sha256 for r in vouched})
    engines = []
    for path in sorted(root.glob(f"*{MANIFEST_SUFFIX}")):
        try:
            manifest = EngineManifest.read(path)
        except ValueError:
            continue
        engine = root / manifest.engine_file
        if engine.is_file() and file_sha256(engine) == manifest.engine_sha256:
            engines.append(manifest.engine_sha256)
    data: dict[str, Any] = {"format": TRUSTED_FORMAT, "registry": str(root), "releases": releases, "engines": sorted(set(engines))}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        Path(tmp).replace(out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return TrustedManifest.read(out)
