"""
The Zarr v3 layout of a night.

::

    <store>/zarr.json                       root attrs: format_version, layout (tile, shard, codec)
    <store>/manifest.json                   the night manifest (see `skyblink.storage.manifest`)
    <store>/exposures/<exposure_id>/        group; attrs: kind, source path, sha256, metadata, complete
    <store>/exposures/<exposure_id>/ccd000/ group; attrs: fits_header, wcs_header, metadata, source HDU
    <store>/exposures/<exposure_id>/ccd000/image   array; chunk = one tile, shard = shard_tiles^2 tiles
    <store>/references/<field>/ccd000/image        the same for each field's reference image
    <store>/results/, <store>/catalogs/            unit results and catalogs (`NightStore.files`)

Every chunk carries a crc32c (zarr's ``Crc32cCodec``, the last bytes-to-bytes codec inside the
sharding codec, whose shard index has its own), checked on every read whatever the compressor:
blosc and zstd have no checksum of their payload, so random bytes in a shard could decode into
wrong pixels without an error. `NightStore.image` raises `ChunkChecksumError` naming the exposure,
CCD and region; `NightStore.mark_damaged` flags the exposure so that the next ingest writes it
again from its file. Stores created before checksums (no ``checksums`` root attribute) stay
readable: arrays without the codec are read unverified (`NightStore.checksummed` says which).

Notes
-----
Each exposure group is written by exactly one writer, which owns every shard of its arrays:
concurrent partial writes to one Zarr v3 shard lose data (zarr-python issue #3682). The group's
``complete`` attribute is written last, so a writer killed midway leaves a group that readers
and the next ingest treat as absent. Each CCD group gets its own ``complete`` attribute once its
pixels are written (`NightStore.write_exposure_ccds` yields it then), so that a visit's CCDs can
be read, tile by tile, while its later CCDs are still being written: a landed CCD is readable by
name (`image`, `header`, `ccd_context`, ...) before the exposure is complete, but the exposure is
listed (`exposure_keys`) and its CCDs named (`ccd_names`) only once every CCD is there. Local
paths and fsspec URLs are both accepted.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import numpy as np
import zarr
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.errors import ZarrUserWarning

from skyblink.headers import HeadersConfig
from skyblink.threads import ordered_map

from .ccd_context import CcdContext, CcdContextCache, MeasureFwhm, sky_noise_adu
from .errors import ChunkChecksumError, StorageError, StoreLayoutError
from .fits_exposure import CcdImage, FitsExposure
from .night_files import NightFiles

__all__ = ["FORMAT_VERSION", "CheckedImage", "ExposureKind", "NightStore", "StoreLayout", "exposure_key"]

#: Version of this layout; bumped on any incompatible change.
FORMAT_VERSION = 1

ExposureKind = Literal["exposure", "reference"]
_GROUP_OF_KIND: dict[str, str] = {"exposure": "exposures", "reference": "references"}


def exposure_key(kind: ExposureKind, name: str) -> str:
    """Return the store key (``exposures/<name>`` or ``references/<name>``) of an exposure."""
    if "/" in name or not name:
        msg = f"exposure name must be a non-empty name without '/', got {name!r}"
        raise ValueError(msg)
    return f"{_GROUP_OF_KIND[kind]}/{name}"


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """Chunking and compression of every image in a store. Stable."""

    tile_size: int = 1024
    shard_tiles: int = 2
    compressor: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = "blosc-zstd"
    compression_level: int = 1
    checksum: Literal["crc32c", "none"] = "crc32c"
    shuffle: Literal["byte", "bit"] = "byte"

    @property
    def shard_size(self) -> int:
        """Edge of a shard in pixels."""
        return self.tile_size * self.shard_tiles

    def compressors(self, dtype: np.dtype) -> list[Any]:
        """Return the zarr v3 bytes-to-bytes codecs for ``dtype``: the lossless compressor, then the checksum."""
        checksum = [Crc32cCodec()] if self.checksum == "crc32c" else []
        if self.compressor == "none":
            return checksum
        if self.compressor == "zstd":
            return [ZstdCodec(level=self.compression_level), *checksum]
        # Blosc's names as plain strings: zarr 3.1 takes them beside its enums, and zarr 3.2+ (Python
        # 3.12+) no longer builds the enums from a value (``BloscCname("zstd")`` is a TypeError there).
        cname: Literal["zstd", "lz4"] = "zstd" if self.compressor == "blosc-zstd" else "lz4"
        # Shuffling groups the high and low bytes (or bits) of neighbouring pixels: smooth sky
        # compresses far better; it is lossless for integers and floats alike.
        return [
            BloscCodec(
                cname=cname,
                clevel=min(self.compression_level, 9),
                shuffle="bitshuffle" if self.shuffle == "bit" else "shuffle",
                typesize=dtype.itemsize,
            ),
            *checksum,
        ]


class NightStore:
    """
    A night's Zarr store: write whole exposures, read tiles, WCS and headers back. Stable.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the store.
    mode : {"r", "a"}
        Read only, or read/write (created if absent).
    layout : StoreLayout, optional
        Layout of new writes. A new store records it; an existing store must have the same
        tile_size and shard_tiles (the compressor may differ: each array records its own codec).

    Raises
    ------
    StoreLayoutError
        The existing store has another format version or tiling than the one asked for.
    StorageError
        The store does not exist (mode ``"r"``).
    """

    def __init__(self, url: str, *, mode: Literal["r", "a"] = "r", layout: StoreLayout | None = None) -> None:
        self.url = str(url)
        # fsspec's local file system creates no parent folders unless told to.
        options = {"auto_mkdir": True} if self.url.startswith("file://") and mode == "a" else None
        try:
            self.root = zarr.open_group(self.url, mode=mode, storage_options=options)
        except FileNotFoundError as exc:
            if mode == "a":
                raise
            msg = f"no skyblink store at {self.url}; run `skyblink ingest` first"
            raise StorageError(msg) from exc
        attrs = dict(self.root.attrs)
        if not attrs and mode == "a":
            if layout is None:
                msg = f"creating store {self.url} needs a layout"
                raise StoreLayoutError(msg)
            self.root.attrs.update({"format_version": FORMAT_VERSION, "layout": asdict(layout), "checksums": "crc32c"})
            for group in _GROUP_OF_KIND.values():
                self.root.require_group(group)
            attrs = dict(self.root.attrs)
        if attrs.get("format_version") != FORMAT_VERSION:
            msg = (
                f"store {self.url} has format_version {attrs.get('format_version')!r}; this skyblink "
                f"reads and writes format_version {FORMAT_VERSION}"
            )
            raise StoreLayoutError(msg)
        #: Whether every chunk of the store carries a crc32c (False: created before checksums).
        self.checksummed = attrs.get("checksums") == "crc32c"
        # A layout recorded before checksums has no "checksum": its new writes get one all the same.
        stored = StoreLayout(**cast(dict[str, Any], attrs["layout"]))
        self.layout = stored
        if layout is not None:
            # Tiles and shards must agree across the night (the workers read tiles by index); the
            # codec is recorded in each array, so new writes may use another one.
            diffs = ", ".join(
                f"{name} is {getattr(stored, name)!r} there but {getattr(layout, name)!r} here"
                for name in ("tile_size", "shard_tiles")
                if getattr(layout, name) != getattr(stored, name)
            )
            if diffs:
                msg = f"store {self.url} was written with another tiling ({diffs}); use a new store"
                raise StoreLayoutError(msg)
            self.layout = layout
        self._contexts = CcdContextCache(self, version=self.stored_version)
        self._noise: dict[tuple[str, str, object], float] = {}
        #: The night's Parquet files beside the arrays: unit results and catalogs (`NightFiles`).
        self.files = NightFiles(self.url)

    # ---------------------------------------------------------------- writing

    def write_exposure(
        self,
        key: str,
        exposure: FitsExposure,
        images: Iterable[CcdImage],
        *,
        kind: ExposureKind,
        source: dict[str, Any] | Callable[[], dict[str, Any]],
        threads: int = 1,
    ) -> int:
        """
        Write every CCD of ``exposure`` under ``key``, replacing what was there.

        Parameters
        ----------
        key : str
            Store key from `exposure_key`.
        exposure : FitsExposure
            The exposure with validated headers.
        images : iterable of CcdImage
            Its CCD images with pixels, e.g. ``ExposureReader.images()``; consumed one at a time.
        kind : {"exposure", "reference"}
            What the image is.
        source : dict or callable
            JSON-safe facts about the input file (path, size, sha256) kept in the group's attrs,
            or a function returning them, called once the pixels are written (e.g. to finish a
            checksum computed meanwhile).
        threads : int, optional
            CCDs compressed and written at once (a visit of many CCDs is one file); at most
            ``threads`` images taken from ``images`` are held here at once.

        Returns
        -------
        int
            Bytes of pixel data written (uncompressed).

        Raises
        ------
        Exception
            Whatever ``images`` raises (e.g. `InvalidExposureError`); the partly written group
            is deleted first, so nothing of the exposure stays in the store.
        """
        return sum(nbytes for _name, nbytes in self.write_exposure_ccds(key, exposure, images, kind=kind, source=source,
                                                                         threads=threads))

    def write_exposure_ccds(
        self,
        key: str,
        exposure: FitsExposure,
        images: Iterable[CcdImage],
        *,
        kind: ExposureKind,
        source: dict[str, Any] | Callable[[], dict[str, Any]],
        threads: int = 1,
        source_path: str | None = None,
    ) -> Iterator[tuple[str, int]]:
        """
        Write every CCD of ``exposure`` under ``key`` as `write_exposure` does, yielding each CCD as it lands.

        A CCD is yielded once its pixels and attributes are written and its ``complete`` attribute
        set: from then on it can be read by name (`image`, `ccd_context`, ...) while later CCDs
        are still being written. The exposure is complete (listed by `exposure_keys`) after the
        last CCD, when the generator ends; a generator closed before its end, or an ``images``
        that raises, deletes the group, so that readers and the next ingest see nothing of it.

        Parameters
        ----------
        key, exposure, images, kind, source, threads
            As `write_exposure`.
        source_path : str, optional
            The input file's path, recorded at once (`source_name` names it in errors about a
            landed CCD before ``source`` is known).

        Yields
        ------
        (str, int)
            The CCD's group name (``ccd000``, ...) and its bytes of pixel data (uncompressed), in
            the order of ``images``.

        Raises
        ------
        Exception
            Whatever ``images`` raises (e.g. `InvalidExposureError`); the group is deleted first.
        """
        group = self.root.create_group(key, overwrite=True)
        early: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "primary_header": exposure.primary_header.tostring(),
            "metadata": exposure.metadata,
            # Identifies this write (a CCD's cached facts hold while it is the same): it does not
            # change when the exposure completes, and a new write of the key gets another.
            "write_id": uuid.uuid4().hex,
            # The CCDs to come, so that a reader looks at each by name (listing the group's members
            # while one is being created trips on its half-made folder).
            "ccds_expected": [_ccd_name(ccd.index) for ccd in exposure.ccds],
        }
        if source_path is not None:
            early["source"] = {"path": source_path}
        names = []

        def write(ccd: CcdImage) -> tuple[str, int]:
            return self._write_ccd(group, ccd), ccd.data.nbytes

        try:
            group.attrs.update(early)
            for name, nbytes in ordered_map(write, images, threads=threads, ahead=threads, name="ccd-writer"):
                names.append(name)
                yield name, nbytes
            facts = source() if callable(source) else source
        except BaseException:  # GeneratorExit too: an exposure left half-way is not kept
            self.delete(key)
            raise
        group.attrs.update({"source": facts, "ccds": names, "complete": True})  # last: readers trust nothing before

    def _write_ccd(self, group: zarr.Group, ccd: CcdImage) -> str:
        name = _ccd_name(ccd.index)
        ccd_group = group.create_group(name)
        tile, shard = self.layout.tile_size, self.layout.shard_size
        image = ccd_group.create_array(
            "image",
            shape=ccd.data.shape,
            dtype=ccd.data.dtype,
            chunks=(tile, tile),
            shards=(shard, shard),
            compressors=self.layout.compressors(ccd.data.dtype),
            fill_value=np.nan if np.issubdtype(ccd.data.dtype, np.floating) else 0,
            dimension_names=("y", "x"),
        )
        image[...] = ccd.data
        ccd_group.attrs.update(
            {
                "format_version": FORMAT_VERSION,
                "hdu": ccd.hdu,
                "extname": ccd.extname,
                "fits_header": ccd.header.tostring(),
                "wcs_header": ccd.wcs_header,
                "metadata": ccd.metadata,
                "complete": True,  # with its pixels written: the CCD can be read before the exposure is complete
            }
        )
        return name

    def delete(self, key: str) -> None:
        """Remove an exposure's group (complete or not) from the store; absent is fine."""
        parent, _, name = key.rpartition("/")
        parent_group = self.root.get(parent)
        if isinstance(parent_group, zarr.Group) and name in parent_group:
            del parent_group[name]

    # ---------------------------------------------------------------- reading

    def exposure_keys(self, kind: ExposureKind = "exposure") -> list[str]:
        """Return the keys of the completely written exposures (or references), sorted."""
        parent = self.root.get(_GROUP_OF_KIND[kind])
        if not isinstance(parent, zarr.Group):
            return []
        keys = [
            f"{_GROUP_OF_KIND[kind]}/{name}"
            for name, group in _members(parent)
            if group.attrs.get("complete") is True
        ]
        return sorted(keys)

    def exposure_attrs(self, key: str) -> dict[str, Any]:
        """Return the attributes of one exposure group; raise KeyError if absent or incomplete."""
        group = self._group(key)
        return dict(group.attrs)

    def ccd_names(self, key: str) -> list[str]:
        """Return the CCD group names of an exposure (``ccd000``, ...)."""
        return list(cast(list[str], self._group(key).attrs["ccds"]))

    def image(self, key: str, ccd: str = "ccd000") -> CheckedImage:
        """
        Return the lazily read image array of one CCD; slice it to read a tile.

        Reads raise `ChunkChecksumError` (naming ``key``, ``ccd`` and the region) where a chunk's
        crc32c does not match.
        """
        return CheckedImage(self._ccd_group(key, ccd)["image"], key, ccd, self.url)  # type: ignore[arg-type]

    def mark_damaged(self, key: str, reason: str) -> None:
        """
        Flag a completely ingested exposure as damaged in the store: the next ingest writes it again.

        Parameters
        ----------
        key : str
            Exposure or reference key.
        reason : str
            Why (kept in its ``damaged`` attribute, e.g. a `ChunkChecksumError` message).
        """
        self._group(key).attrs["damaged"] = reason

    def damaged_keys(self) -> list[str]:
        """Return the keys of the exposures and references flagged by `mark_damaged`, sorted."""
        keys: list[str] = []
        for kind_group in _GROUP_OF_KIND.values():
            parent = self.root.get(kind_group)
            if not isinstance(parent, zarr.Group):
                continue
            keys.extend(f"{kind_group}/{name}" for name, group in _members(parent)
                        if group.attrs.get("complete") is True and group.attrs.get("damaged"))
        return sorted(keys)

    def header(self, key: str, ccd: str = "ccd000") -> fits.Header:
        """Return the CCD's original FITS header."""
        return fits.Header.fromstring(cast(str, self._ccd_group(key, ccd).attrs["fits_header"]))

    def wcs(self, key: str, ccd: str = "ccd000") -> WCS:
        """Return the CCD's celestial WCS (SIP distortion included)."""
        return _wcs_from_text(cast(str, self._ccd_group(key, ccd).attrs["wcs_header"]))

    def reference_key(self, field: str) -> str:
        """
        Return the store key of the reference image of ``field`` (``references/<field>``).

        Raises
        ------
        ValueError
            ``field`` is empty or holds a ``/``.
        """
        return exposure_key("reference", str(field))

    def reference_of(self, key: str, ccd: str = "ccd000") -> str:
        """
        Return the store key of the reference image of exposure ``key``: its CCD's field's.

        Raises
        ------
        KeyError
            ``key`` is not a completely ingested exposure, or its CCD has no ``field``.
        ValueError
            The CCD's ``field`` is empty or holds a ``/``.
        """
        return self.reference_key(self.ccd_metadata(key, ccd)["field"])

    def source_name(self, key: str, ccd: str = "ccd000") -> str:
        """
        Return what an error about one CCD names: its FITS file where the store knows it
        (``/data/F00-003.fits (exposures/F00-003/ccd000)``), else the store and key.
        """
        group = self._written_group(key)
        source = (group.attrs.get("source") if group is not None else None) or {}
        path = cast(dict[str, Any], source).get("path")
        return f"{path} ({key}/{ccd})" if path else f"{self.url}: {key}/{ccd}"

    def stored_version(self, key: str) -> object:
        """
        What identifies the content under ``key``: the write that put it there (``write_id``), or
        for exposures written before it had one, its source file's facts (path, size, sha256).
        Caches of what was read from a key (the CCDs' facts, a GPU actor's reference CCDs) keep it
        to notice that the key was ingested again.

        Returns
        -------
        object
            A token that compares equal while the content is the same; None where ``key`` is not
            written.
        """
        group = self._written_group(key)
        if group is None:
            return None
        return group.attrs.get("write_id") or repr(group.attrs.get("source"))

    def ccd_context(self, key: str, ccd: str = "ccd000", *, headers: HeadersConfig | None = None,
                    measure_fwhm: MeasureFwhm | None = None) -> CcdContext:
        """
        Return one CCD's facts (`CcdContext`: WCS, pixel scale, PSF FWHM of the science and its
        reference, gain, read noise, saturation, flux scale, band, time), read once per store
        (again where the exposure or its reference was ingested anew from another file, and as
        long as the field has no reference image).

        Parameters
        ----------
        key : str
            Store key of the exposure (or reference).
        ccd : str
        headers : HeadersConfig, optional
            Header keywords (the ``[headers]`` section); default: the defaults.
        measure_fwhm : callable, optional
            Measures the PSF FWHM (px) on the whole CCD where no keyword gives it (the workers'
            `estimate_fwhm`); without it such a CCD is a `HeaderFactError`.

        Raises
        ------
        KeyError
            ``key`` is not a completely ingested exposure, or has no CCD ``ccd``.
        skyblink.headers.HeaderFactError
            No PSF FWHM in the header of the CCD or of its reference, and none measured: the
            message names the file and the keywords looked for.
        ValueError
            The header's gain is not positive (the message names the file and keyword).
        """
        return self._contexts.context(key, ccd, headers=headers, measure_fwhm=measure_fwhm)

    def sky_noise_adu(self, key: str, ccd: str = "ccd000") -> float:
        """
        Return the sky noise per pixel of one CCD (ADU, one sigma), computed once per store: from
        ``SKYLEVEL``, gain and read noise where the header gives the sky, else a robust estimate
        on the CCD's central window (`skyblink.storage.ccd_context.sky_noise_adu`).
        """
        version = self.stored_version(key)
        found = self._noise.get((key, ccd, version))
        if found is None:
            context = self.ccd_context(key, ccd)
            meta = self.ccd_metadata(key, ccd)
            found = sky_noise_adu(context, self.image(key, ccd), gain_fallback=meta.get("gain"),
                                  read_noise_fallback=meta.get("rdnoise"))
            self._noise[key, ccd, version] = found
        return found

    def ccd_metadata(self, key: str, ccd: str = "ccd000") -> dict[str, Any]:
        """Return the JSON metadata of one CCD (gain, saturate, mjd_obs, ...)."""
        return dict(cast(dict[str, Any], self._ccd_group(key, ccd).attrs["metadata"]))

    def ccd_description(self, key: str, ccd: str = "ccd000") -> tuple[dict[str, Any], fits.Header, WCS]:
        """
        Return `ccd_metadata`, `header` and `wcs` of one CCD from one read of its attributes
        (each of the three opens the exposure's and the CCD's groups again).

        Raises
        ------
        KeyError
            If the exposure is absent or incomplete, or has no such CCD.
        """
        attrs = self._ccd_group(key, ccd).attrs
        return (dict(cast(dict[str, Any], attrs["metadata"])), fits.Header.fromstring(cast(str, attrs["fits_header"])),
                _wcs_from_text(cast(str, attrs["wcs_header"])))

    def landed_ccds(self, key: str) -> list[str]:
        """
        Return the CCDs of ``key`` whose pixels are in the store, sorted: every CCD of a complete
        exposure, the landed ones of an exposure still being written (`write_exposure_ccds`),
        none of an absent one.
        """
        group = self._written_group(key)
        if group is None:
            return []
        if group.attrs.get("complete") is True:
            return sorted(cast(list[str], group.attrs["ccds"]))
        landed = []
        for name in cast(list[str], group.attrs.get("ccds_expected", [])):
            ccd = group.get(name)  # None while absent or half made
            if isinstance(ccd, zarr.Group) and ccd.attrs.get("complete") is True:
                landed.append(name)
        return sorted(landed)

    def _written_group(self, key: str) -> zarr.Group | None:
        """The group of ``key``, complete or being written, or None."""
        group = self.root.get(key)
        return group if isinstance(group, zarr.Group) else None

    def _ccd_group(self, key: str, ccd: str) -> zarr.Group:
        """
        The group of one CCD: of a complete exposure, or a landed CCD (its own ``complete``
        attribute set) of an exposure still being written.
        """
        group = self._written_group(key)
        if group is not None and group.attrs.get("complete") is True:
            found = group.get(ccd)
            if isinstance(found, zarr.Group):
                return found
            msg = f"exposure {key!r} of store {self.url} has no CCD {ccd!r}"
            raise KeyError(msg)
        found = group.get(ccd) if group is not None else None
        if not isinstance(found, zarr.Group) or found.attrs.get("complete") is not True:
            msg = f"{key!r} is not a completely ingested exposure in store {self.url}, nor is its CCD {ccd!r} written yet"
            raise KeyError(msg)
        return found

    def _group(self, key: str) -> zarr.Group:
        group = self.root.get(key)
        if not isinstance(group, zarr.Group) or group.attrs.get("complete") is not True:
            msg = f"{key!r} is not a completely ingested exposure in store {self.url}"
            raise KeyError(msg)
        return group


class CheckedImage:
    """
    A stored CCD image whose reads name the exposure when a chunk's checksum does not match.

    Everything but reading is the wrapped `zarr.Array`'s (``shape``, ``dtype``, ``chunks``, ...).
    """

    def __init__(self, array: zarr.Array, key: str, ccd: str, store: str) -> None:
        self.array, self.key, self.ccd, self.store = array, key, ccd, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.array, name)

    def __getitem__(self, selection: Any) -> Any:
        """Read a region (as `zarr.Array`); raise `ChunkChecksumError` on a checksum mismatch."""
        try:
            return read_in_this_thread(self.array, selection)
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
            raise ChunkChecksumError(self.key, f"{self.ccd}/image[{_region(selection)}]", self.store) from exc

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = np.asarray(self[...])
        return data if dtype is None else data.astype(dtype, copy=False)

    def __len__(self) -> int:
        return int(self.array.shape[0])


#: Threads of each reading thread's pool for zarr's chunk decoding (Blosc releases the GIL).
_DECODE_THREADS = min(8, os.cpu_count() or 1)


class _ReadingLoop:
    """An event loop of one reading thread, with its own pool for zarr's decoding; closed with the thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="skyblink-decode"))

    def __del__(self) -> None:
        if os.getpid() == self.pid:  # a forked child leaves its parent's loop and pool alone
            self.loop.close()  # shuts its pool down too


_READING_LOOPS = threading.local()


def _forget_reading_loops() -> None:
    """In a forked child: start without the parent's loops (their pools' threads are not there)."""
    global _READING_LOOPS
    _READING_LOOPS = threading.local()


os.register_at_fork(after_in_child=_forget_reading_loops)


def read_in_this_thread(array: zarr.Array, selection: Any) -> Any:
    """
    ``array[selection]``, with zarr's work done in the calling thread where that is safe.

    zarr's synchronous API runs every read of a process on one IO thread's event loop: the
    checksums, the assembly of the decoded chunks into the result and zarr's Python all queue
    there, so threads that read at once (a GPU actor preparing several calls) wait for each
    other (that thread was busy 43-48 % of a single reader's time, `benchmarks/host_prepare.py`). A region (slices,
    ``...``) of a local store is read instead on an event loop of the calling thread, kept for
    the thread's life, with its own decoding pool. Other stores (fsspec's, whose sessions belong
    to zarr's loop), other selections, and callers inside a running event loop read through
    zarr's loop as before.

    Returns
    -------
    ndarray or scalar
        What ``array[selection]`` returns.

    Raises
    ------
    ValueError
        A chunk's checksum does not match; and whatever else ``array[selection]`` raises.
    """
    parts = selection if isinstance(selection, tuple) else (selection,)
    if not isinstance(array.store, zarr.storage.LocalStore) or not all(p is Ellipsis or isinstance(p, slice) for p in parts):
        return array[selection]
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        reading = getattr(_READING_LOOPS, "reading", None)
        if reading is None:
            reading = _READING_LOOPS.reading = _ReadingLoop()
        return reading.loop.run_until_complete(array.async_array.getitem(selection))
    return array[selection]


def _members(parent: zarr.Group) -> list[tuple[str, zarr.Group]]:
    """
    The groups under ``parent``, listed while ingest tasks may be writing beside them: zarr skips,
    with a warning, a name that is not (yet) a node (a group being created, the temporary file of
    an atomic metadata write, ``zarr.<id>.partial``); here that is expected, not worth a warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZarrUserWarning)
        return list(parent.groups())


def _ccd_name(index: int) -> str:
    """The group name of the CCD of HDU-order ``index`` (``ccd000``, ...)."""
    return f"ccd{index:03d}"


def _region(selection: Any) -> str:
    parts = selection if isinstance(selection, tuple) else (selection,)
    out = []
    for part in parts:
        if isinstance(part, slice):
            out.append(f"{'' if part.start is None else part.start}:{'' if part.stop is None else part.stop}")
        else:
            out.append("..." if part is Ellipsis else str(part))
    return ", ".join(out)


def _wcs_from_text(text: str) -> WCS:
    """A WCS from the text of its header cards, without astropy's fix-up notes (they are not errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return WCS(fits.Header.fromstring(text))
