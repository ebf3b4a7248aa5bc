"""
``skyblink subtract``: one science/reference pair through the workers' per-tile program, written
as a difference image (with its noise map) and a candidates table.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from . import model_io
from ._cli_common import console, effective_config, fail
from .headers import HeaderFactError
from .lazy_import import lazy_module

if TYPE_CHECKING:
    import numpy as np
    from astropy.io import fits

    from skyblink import storage
    from skyblink.engines import backends
    from skyblink.workers import program_config
    from skyblink.workers import subtract_pair as pair_subtraction
else:
    # numpy, astropy and the worker side (ML extras) load when the command runs, not for --help.
    np = lazy_module("numpy")
    fits = lazy_module("astropy.io.fits")
    storage = lazy_module("skyblink.storage")
    backends = lazy_module("skyblink.engines.backends")
    pair_subtraction = lazy_module("skyblink.workers.subtract_pair")
    program_config = lazy_module("skyblink.workers.program_config")

__all__ = ["register", "subtract", "write_candidates", "write_difference"]


def write_difference(path: Path, result: Any, science: Any) -> None:
    """
    Write DIFF.fits: the difference in the science's units, with the science's WCS, in the primary
    HDU, and its 1-sigma noise in an extension named ``NOISE``.
    """
    header = fits.Header.fromstring(science.wcs_header)
    for key in ("BUNIT", "FILTER", "MJD-OBS", "DATE-OBS", "EXPTIME", "GAIN"):
        if key in science.header:
            header[key] = science.header[key]
    header["SCIFILE"] = (science.path.name[:68], "science image")
    header["SKFWHMS"] = (round(result.fwhm_px[0], 3), "[px] science PSF FWHM used")
    header["SKFWHMR"] = (round(result.fwhm_px[1], 3), "[px] reference PSF FWHM used")
    noise_header = fits.Header.fromstring(science.wcs_header)
    noise_header["EXTNAME"] = "NOISE"
    fits.HDUList([fits.PrimaryHDU(result.difference, header=header),
                  fits.ImageHDU(result.noise, header=noise_header, name="NOISE")]).writeto(path, overwrite=True)


#: Columns of the candidates table, in order.
CANDIDATE_COLUMNS = ("x", "y", "ra", "dec", "snr", "real_bogus", "class", "class_probability", "score", "alert")


def write_candidates(path: Path, records: list[Any], science: Any, *, alert_min_real_bogus: float) -> None:
    """Write the candidates as CSV: 0-based science pixels, ICRS degrees, S/N, real/bogus, class, alert flag."""
    xy = np.array([[r.x, r.y] for r in records], dtype=float).reshape(-1, 2)
    world = science.wcs.all_pix2world(xy, 0) if len(records) else np.empty((0, 2))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CANDIDATE_COLUMNS)
        for record, (ra, dec) in zip(records, world, strict=True):
            best = int(np.argmax(record.class_probs))
            writer.writerow([f"{record.x:.2f}", f"{record.y:.2f}", f"{ra:.7f}", f"{dec:.7f}", f"{record.snr:.2f}",
                             f"{record.real_bogus:.4f}", model_io.CLASSIFIER_CLASSES[best], f"{record.class_probs[best]:.4f}",
                             f"{record.score:.4f}", int(record.real_bogus >= alert_min_real_bogus)])


def subtract(
    ctx: typer.Context,
    science_path: Annotated[Path, typer.Argument(metavar="SCIENCE.fits", help="Science image (FITS, any size, MEF or single HDU).")],
    reference_path: Annotated[Path, typer.Argument(metavar="REFERENCE.fits", help="Reference image; any pixel grid (warped by both WCS).")],
    out: Annotated[Path, typer.Option("--out", help="Difference image to write (primary: difference; NOISE: sigma map).")],
    candidates: Annotated[Path | None, typer.Option("--candidates", help="CSV of candidates to write.")] = None,
    hdu: Annotated[int, typer.Option("--ccd", help="Which image HDU of each file (0-based among its CCDs).")] = 0,
    backend: Annotated[str, typer.Option("--backend", help="auto, onnxruntime (CPU), torch or tensorrt.")] = "auto",
    tile_size: Annotated[int | None, typer.Option("--tile-size", help="Work-unit core edge (config: night.tile_size, else ingest.tile_size, 1024).")] = None,
    psf_match: Annotated[str, typer.Option("--psf-match", help="kernel (solved on each tile's stars) or gaussian (of the FWHMs).")] = "kernel",
    classifier: Annotated[
        str | None,
        typer.Option("--classifier", help="Real/bogus network: classifier (the pipeline's, trained on the simulator) or "
                                          "survey_classifier (braai's trunk, its layer trained on real survey alerts); "
                                          "config: night.classifier."),
    ] = None,
) -> None:
    """Subtract REFERENCE from SCIENCE with the workers' per-tile program; write the difference and candidates."""
    if psf_match not in ("kernel", "gaussian"):
        raise fail(f"error: --psf-match must be kernel or gaussian, got {psf_match!r}")
    if classifier is not None and classifier not in model_io.CLASSIFIER_MODELS:
        raise fail(f"error: --classifier must be one of {', '.join(model_io.CLASSIFIER_MODELS)}, got {classifier!r}")
    config = effective_config(ctx, **{"night.tile_size": tile_size, "night.classifier": classifier})
    try:  # the worker side (ML extras) loads here
        select_runner = backends.select_runner
        read_pair_image, subtract_pair = pair_subtraction.read_pair_image, pair_subtraction.subtract_pair
    except ImportError as exc:
        raise fail(f"error: skyblink subtract needs the worker extras (torch or onnxruntime): {exc}") from None
    try:
        science = read_pair_image(science_path, ccd=hdu, headers=config.headers)
        reference = read_pair_image(reference_path, ccd=hdu, headers=config.headers)
    except storage.InvalidExposureError as exc:
        raise fail(f"error: {exc}") from None
    try:
        # Eager networks: one pair does not repay compiling the detector for its batch shape.
        runners = [select_runner(name, backend=backend).runner  # type: ignore[arg-type]
                   for name in ("detector", config.night.classifier)]
    except RuntimeError as exc:
        raise fail(f"error: --backend {backend}: {exc}") from None
    night = config.night
    with runners[0], runners[1]:
        try:
            program = dataclasses.replace(program_config.TileProgram.from_config(config),
                                          psf_match=cast("program_config.PsfMatchName", psf_match))
            result = subtract_pair(science, reference, runners[0], runners[1], program)
        except HeaderFactError as exc:
            raise fail(f"error: {exc}") from None
    write_difference(out, result, science)
    if candidates is not None:
        write_candidates(candidates, result.candidates, science, alert_min_real_bogus=night.alert_min_real_bogus)
    alerts = sum(r.real_bogus >= night.alert_min_real_bogus for r in result.candidates)
    console.print(f"{out}: difference {result.difference.shape[1]}x{result.difference.shape[0]} "
                  f"(FWHM science {result.fwhm_px[0]:.2f} px, reference {result.fwhm_px[1]:.2f} px); "
                  f"{len(result.candidates)} candidate(s), {alerts} at real/bogus >= {night.alert_min_real_bogus}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``subtract`` command to the ``skyblink`` app."""
    app.command("subtract")(subtract)
