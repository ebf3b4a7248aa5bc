"""
Integrity of what the workers load: shipped models, channel releases and engines.

Three checks, each raising `IntegrityError` naming the file, the hash expected and the hash found:

* a shipped model's files (``model.<precision>.onnx``, ``weights.pt``, braai's ``.npz``) against
  the sha256 in its ``card.json`` (`verify_file`);
* a channel release's ONNX graph against the ``onnx_sha256`` its release records
  (`skyblink.engines.channels.Channels.onnx_path`);
* an engine against the ``engine_sha256`` of its manifest (`skyblink.engines.registry`).

A hash that sits in the same writable folder as the file it vouches for proves nothing against
someone who can write that folder: they rewrite both. The *trusted manifest*
(``engines.trusted_manifest``) is the answer: a JSON file of the sha256 of every promoted release
and every engine an operator vouches for, written by `skyblink.engines.channels.write_trusted_manifest` where the promotion
runs and mounted read-only into the workers (a ConfigMap or a read-only volume on Kubernetes). When
it is configured, a worker loads only a production release and only an engine whose sha256 it
lists; an engine that is not listed is rebuilt by the worker from the verified ONNX graph instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import EngineManifest, check_plain_file_name, file_sha256

__all__ = [
    "TRUSTED_FORMAT",
    "IntegrityError",
    "TrustedManifest",
    "check_plain_file_name",
    "verify_file",
]

TRUSTED_FORMAT = 1


class IntegrityError(ValueError):
    """A file's bytes are not the ones vouched for (tampered, corrupt, or not trusted); the message names it."""


def verify_file(path: Path, expected_sha256: str | None, *, what: str) -> Path:
    """
    Return ``path`` after checking its sha256; None as the expected hash checks nothing.

    Raises
    ------
    IntegrityError
        The file's sha256 differs from ``expected_sha256``.
    """
    if expected_sha256:
        actual = file_sha256(path)
        if actual != expected_sha256:
            msg = (f"{path}: sha256 {actual[:16]}... differs from {expected_sha256[:16]}... recorded for {what} "
                   "(tampered or corrupt); refusing to load it")
            raise IntegrityError(msg)
    return path


@dataclass(frozen=True, slots=True)
class TrustedManifest:
    """
    The sha256 of the releases and engines an operator vouches for, read from a file the workers
    cannot write. Stable.

    Attributes
    ----------
    path : Path
    releases : dict of str to frozenset of str
        Model -> sha256 of its trusted ONNX releases (production and its history).
    engines : frozenset of str
        sha256 of trusted engine files.
    """

    path: Path
    releases: dict[str, frozenset[str]] = field(default_factory=dict)
    engines: frozenset[str] = frozenset()

    @classmethod
    def read(cls, path: Path | str) -> TrustedManifest:
        """
        Read a trusted manifest.

        Raises
        ------
        IntegrityError
            The file is missing or malformed: with a trusted manifest configured, nothing loads
            until it is fixed (the message names the file).
        """
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
            if data.get("format") != TRUSTED_FORMAT:
                msg = f"format {data.get('format')!r}, this skyblink reads format {TRUSTED_FORMAT}"
                raise ValueError(msg)
            releases = {str(m): frozenset(str(h) for h in hashes) for m, hashes in data["releases"].items()}
            engines = frozenset(str(h) for h in data["engines"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = f"{path}: cannot read the trusted manifest (engines.trusted_manifest): {exc}"
            raise IntegrityError(msg) from None
        return cls(path, releases, engines)

    def check_release(self, model: str, onnx_sha256: str, label: str) -> None:
        """Raise `IntegrityError` unless ``onnx_sha256`` is a trusted release of ``model``."""
        if onnx_sha256 not in self.releases.get(model, frozenset()):
            msg = (f"release {label}: ONNX sha256 {onnx_sha256[:16]}... is not among the trusted releases of {model} "
                   f"in {self.path}; refusing it (channels.json rewritten, or the trusted manifest not updated "
                   "after `skyblink engines promote`: run `skyblink engines trust`)")
            raise IntegrityError(msg)

    def check_engine(self, manifest: EngineManifest) -> str | None:
        """Return why the engine of ``manifest`` is not trusted, or None when it is."""
        if manifest.engine_sha256 not in self.engines:
            return (f"{manifest.engine_file}: engine sha256 {manifest.engine_sha256[:12]}... is not in the trusted "
                    f"manifest {self.path} (an engine rewritten with its manifest, or one never vouched for)")
        return None
