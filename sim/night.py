"""Simulate a whole night: every exposure and reference of every field, with truth and masks.

Output layout (the ingest and scoring code depend on it)::

    OUT_DIR/night.json                      simulator version, SimConfig, seed, fields, exposures
    OUT_DIR/exposures/<exposure_id>.fits    exposure_id = F00-003 (field F00, exposure 3)
    OUT_DIR/references/<field_id>.fits      one mean-coadd reference per field
    OUT_DIR/truth/<exposure_id>.parquet     truth per exposure (and <field_id>-ref.parquet)
    OUT_DIR/truth/<exposure_id>-mask.fits   uint8 artifact bitmask per CCD
                                            (and <field_id>-ref-mask.fits: saturation only)

``night.json`` is written last, so its presence marks a complete night.

Parallelism: CCDs are rendered by a `concurrent.futures.ProcessPoolExecutor` (at most
``2 x workers`` CCDs in flight) and written, in order, by the calling process, one CCD at a time;
every random stream is keyed by (seed, purpose, field, exposure, CCD), so the files do not depend
on the number of workers or the order of completion.

Notes
-----
Stable: `simulate_night`, `NightSummary`, `rubin_visit_config`. Not thread-safe for one
``out_dir``.

"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits

from skyblink._version import __version__
from skyblink.config import SimConfig

from .ccd_image import RenderedCcd, render_ccd
from .conditions import exposure_conditions, reference_conditions
from .fits_writer import SIMULATOR_VERSION, CcdFileWriter, image_header
from .truth import assemble_truth, write_truth
from .wcs_layout import (
    FocalPlane,
    exposure_pointing,
    field_center,
    reference_margin,
    reference_pointing,
)

__all__ = ["NightSummary", "rubin_visit_config", "simulate_night"]

_EVENT_TYPES = ("star", "galaxy", "variable", "transient", "moving")


@dataclass(frozen=True, slots=True)
class NightSummary:
    """What `simulate_night` wrote.

    Attributes
    ----------
    out_dir : Path
        The night directory.
    exposures : tuple of Path
        Science exposures, field by field, in exposure order.
    references : tuple of Path
        One reference per field.
    truth : tuple of Path
        Truth Parquet files, exposures first then references.
    masks : tuple of Path
        Artifact mask files, exposures first then references.
    counts : Mapping[str, int]
        Distinct injected objects by truth type over the science exposures (stars and galaxies
        that fall on at least one exposure; every cosmic ray, hot pixel, ...).
    megapixels : float
        Pixels written to exposures and references, in millions.
    wall_s : float
        Wall-clock seconds the simulation took.

    Notes
    -----
    Stable.

    """

    out_dir: Path
    exposures: tuple[Path, ...]
    references: tuple[Path, ...]
    truth: tuple[Path, ...]
    masks: tuple[Path, ...]
    counts: Mapping[str, int] = field(default_factory=dict)
    megapixels: float = 0.0
    wall_s: float = 0.0


def rubin_visit_config(seed: int = 20261125) -> SimConfig:
    """Return a configuration of one Rubin-size visit: 1 field, 1 exposure, 189 CCDs of 4096x4096.

    Pixel scale 0.2 arcsec (LSSTCam), 30 s in r; other options keep their defaults.

    Parameters
    ----------
    seed : int, optional
        Seed of the visit.

    Returns
    -------
    `~skyblink.config.SimConfig`

    Notes
    -----
    Stable. 3.2 Gpix per image: about 6.3 GB of uint16 per exposure and as much for the
    reference (larger CCDs).

    """
    return SimConfig(
        fields=1,
        exposures_per_field=1,
        ccds=189,
        image_size=4096,
        pixel_scale_arcsec=0.2,
        seed=seed,
    )


@dataclass(frozen=True, slots=True)
class _Image:
    field: int
    exposure: int | None

    @property
    def field_id(self) -> str:
        return f"F{self.field:02d}"

    @property
    def image_id(self) -> str:
        return (
            f"{self.field_id}-ref"
            if self.exposure is None
            else f"{self.field_id}-{self.exposure:03d}"
        )


def _render_task(config: SimConfig, image: _Image, ccd: int) -> RenderedCcd:
    return render_ccd(config, image.field, ccd, exposure=image.exposure)


def _rendered_in_order(
    config: SimConfig, jobs: list[tuple[_Image, int]], workers: int
) -> Iterator[RenderedCcd]:
    if workers <= 1:
        for image, ccd in jobs:
            yield _render_task(config, image, ccd)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[RenderedCcd]] = deque()
        queue = iter(jobs)
        for image, ccd in queue:
            pending.append(pool.submit(_render_task, config, image, ccd))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(_render_task, config, *nxt))
            yield result


def simulate_night(
    out_dir: Path,
    config: SimConfig,
    *,
    progress: Callable[[str], None] | None = None,
    max_workers: int | None = None,
) -> NightSummary:
    """Simulate a night of exposures, references, truth catalogues and artifact masks.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created; existing files of the same names are overwritten).
    config : `~skyblink.config.SimConfig`
        What to simulate; the same configuration always gives byte-identical files.
    progress : callable, optional
        Called with one short line per file written.
    max_workers : int, optional
        Processes rendering CCDs (default: the CPU count, at most the number of CCDs); 1 renders
        in the calling process.

    Returns
    -------
    `NightSummary`

    Raises
    ------
    ValueError
        If ``max_workers`` < 1.
    OSError
        If ``out_dir`` cannot be written.

    Notes
    -----
    Stable.

    """
    started = time.perf_counter()
    if max_workers is not None and max_workers < 1:
        msg = f"max_workers must be >= 1, got {max_workers!r}"
        raise ValueError(msg)
    say = progress or (lambda _line: None)
    out_dir = Path(out_dir)
    for sub in ("exposures", "references", "truth"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    images = [
        _Image(f, e) for f in range(config.fields) for e in range(config.exposures_per_field)
    ] + [_Image(f, None) for f in range(config.fields)]
    jobs = [(image, ccd) for image in images for ccd in range(config.ccds)]
    workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))

    rendered = _rendered_in_order(config, jobs, workers)
    exposures: list[Path] = []
    references: list[Path] = []
    truth_paths: list[Path] = []
    mask_paths: list[Path] = []
    records: list[dict[str, Any]] = []
    ids_by_type: dict[str, set[str]] = {}
    pixels = 0
    for image in images:
        paths, record, table = _write_image(out_dir, config, image, rendered)
        pixels += config.ccds * (record["size"] ** 2)
        (references if image.exposure is None else exposures).append(paths[0])
        truth_paths.append(paths[1])
        mask_paths.append(paths[2])
        for path in paths:
            say(f"wrote {path.relative_to(out_dir)}")
        if image.exposure is not None:
            records.append(record)
            for kind, ident in zip(table["type"], table["id"], strict=True):
                ids_by_type.setdefault(str(kind), set()).add(str(ident))

    night = _night_record(config, records)
    night_path = out_dir / "night.json"
    night_path.write_text(json.dumps(night, indent=2, sort_keys=True) + "\n")
    say(f"wrote {night_path.relative_to(out_dir)}")
    counts = Counter({kind: len(ids) for kind, ids in sorted(ids_by_type.items())})
    return NightSummary(
        out_dir=out_dir,
        exposures=tuple(exposures),
        references=tuple(references),
        truth=tuple(truth_paths),
        masks=tuple(mask_paths),
        counts=dict(counts),
        megapixels=pixels / 1e6,
        wall_s=time.perf_counter() - started,
    )


def _write_image(
    out_dir: Path, config: SimConfig, image: _Image, rendered: Iterator[RenderedCcd]
) -> tuple[tuple[Path, Path, Path], dict[str, Any], Any]:
    plane = FocalPlane.for_config(config.ccds, config.image_size)
    if image.exposure is None:
        cond = reference_conditions(config, image.field)
        pointing = reference_pointing(config.seed, image.field)
        path = out_dir / "references" / f"{image.field_id}.fits"
        size = config.image_size + 2 * reference_margin(plane)
    else:
        cond = exposure_conditions(config, image.field, image.exposure)
        pointing = exposure_pointing(
            config.seed, image.field, image.exposure, config.pixel_scale_arcsec
        )
        path = out_dir / "exposures" / f"{image.image_id}.fits"
        size = config.image_size
    header = image_header(
        field_id=image.field_id,
        exposure_id=image.image_id,
        image_type="reference" if image.exposure is None else "science",
        band=config.band,
        cond=cond,
        pointing=pointing,
        n_ccds=config.ccds,
    )
    truth_path = out_dir / "truth" / f"{image.image_id}.parquet"
    mask_path = out_dir / "truth" / f"{image.image_id}-mask.fits"
    mask_header = fits.Header()
    for key in ("TELESCOP", "FIELD", "EXPID", "IMAGETYP", "NCCD"):
        mask_header[key] = (header[key], header.comments[key])
    writer = CcdFileWriter(path, header, config.ccds)
    mask_writer = CcdFileWriter(mask_path, mask_header, config.ccds, mask=True)
    parts: list[dict[str, Any]] = []
    for ccd in range(config.ccds):
        result = next(rendered)
        ccd_header = result.wcs_header.copy()
        ccd_header["SKYLEVEL"] = (result.sky_adu, "[ADU] sky level at the CCD centre")
        writer.add(ccd, result.pixels, ccd_header)
        mask_writer.add(ccd, result.mask, fits.Header([("EXTNAME", f"CCD{ccd:03d}")]))
        parts.extend(result.truth_parts)
    writer.close()
    mask_writer.close()
    meta = {
        "exposure_id": image.image_id,
        "field": image.field_id,
        "image_type": "reference" if image.exposure is None else "science",
        "mjd": cond.mjd_start,
        "mjd_mid": cond.mjd_mid,
        "date_obs": cond.date_obs,
        "exptime": cond.exptime,
        "ncombine": cond.depth,
        "seeing_fwhm_arcsec": cond.fwhm_arcsec,
        "psf_beta": cond.beta,
        "sky_level_adu": cond.sky_adu,
        "zeropoint": cond.magzp,
        "zeropoint_convention": "mag giving 1 ADU/s (MAGZP)",
        "gain": cond.gain,
        "read_noise": cond.read_noise,
        "limiting_mag_5sigma": cond.limiting_mag,
        "image_size": size,
        "ccds": config.ccds,
        "pixel_coordinates": "0-based, wcs.all_world2pix(ra, dec, 0)",
        "simulator_version": SIMULATOR_VERSION,
    }
    table = assemble_truth(parts, meta)
    write_truth(table, truth_path)
    record = {
        "exposure_id": image.image_id,
        "field": image.field_id,
        "mjd": cond.mjd_start,
        "date_obs": cond.date_obs,
        "path": str(path.relative_to(out_dir)),
        "truth": str(truth_path.relative_to(out_dir)),
        "mask": str(mask_path.relative_to(out_dir)),
        "size": size,
    }
    return (path, truth_path, mask_path), record, table


def _night_record(config: SimConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    plane = FocalPlane.for_config(config.ccds, config.image_size)
    fields = []
    for f in range(config.fields):
        ra, dec = field_center(config.seed, f)
        fields.append(
            {
                "field": f"F{f:02d}",
                "ra": ra,
                "dec": dec,
                "reference": f"references/F{f:02d}.fits",
                "reference_truth": f"truth/F{f:02d}-ref.parquet",
                "reference_mask": f"truth/F{f:02d}-ref-mask.fits",
                "reference_margin_px": reference_margin(plane),
            }
        )
    exposures = [{k: v for k, v in r.items() if k != "size"} for r in records]
    return {
        "simulator": "skyblink.sim",
        "simulator_version": SIMULATOR_VERSION,
        "skyblink_version": __version__,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "focal_plane": {
            "ccds": plane.n_ccds,
            "ccd_size": plane.ccd_size,
            "gap_px": plane.gap_px,
            "ncols": plane.ncols,
            "nrows": plane.nrows,
        },
        "fields": fields,
        "exposures": exposures,
    }
