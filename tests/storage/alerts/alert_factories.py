"""Tiny known-truth alerts for the alert tests: detections, stamps with a WCS, whole packets."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from skyblink.storage.alerts import (
    Alert,
    AlertBuilder,
    AlertType,
    Band,
    ClassProbabilities,
    Detection,
    DetectionFlag,
    MovingObject,
    cut_stamp,
)

NIGHT = "20261125"
IMAGE_SHAPE = (512, 512)


def image_wcs(shape: tuple[int, int] = IMAGE_SHAPE, *, ra: float = 150.0, dec: float = 2.0) -> WCS:
    """A TAN WCS with a slightly rotated CD matrix, 0.6 arcsec pixels."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    theta = np.deg2rad(3.0)
    scale = 0.6 / 3600
    wcs.wcs.cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return wcs


def detection(i: int, *, score: float = 0.9, exposure: str = "f0-000", x: float = 200.0, y: float = 300.0,
              alert_type: AlertType = AlertType.TRANSIENT) -> Detection:
    """Detection number i (distinct candidate ids), float32-exact values."""
    return Detection(
        candidate_id=1000 + i,
        mjd=61004.125 + i * 1e-4,
        ra=150.01 + i * 1e-5,
        dec=2.02,
        ra_err=0.0625,
        dec_err=0.0625,
        x=x,
        y=y,
        exposure_id=exposure,
        field="f0",
        ccd=0,
        band=Band.R,
        flux=1250.5,
        flux_err=12.25,
        snr=102.0,
        mag=21.25,
        mag_err=0.015625,
        real_bogus=score,
        class_probabilities=ClassProbabilities(0.0625, 0.0625, 0.5, 0.125, 0.125, 0.125),
        alert_type=alert_type,
        flags=DetectionFlag.EDGE | DetectionFlag.DIPOLE,
    )


def stamps(seed: int = 0, *, smooth: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, WCS, tuple[int, int]]:
    """Science, template, difference stamps around (200, 300) of a 512x512 image, its WCS and the origin."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: IMAGE_SHAPE[0], : IMAGE_SHAPE[1]]
    source = 5000.0 * np.exp(-((xx - 200.0) ** 2 + (yy - 300.0) ** 2) / 8.0)
    if smooth:
        template = np.full(IMAGE_SHAPE, 1000.0)
        science = template + source
    else:
        template = rng.normal(1000.0, 8.0, IMAGE_SHAPE)
        science = rng.normal(1000.0, 30.0, IMAGE_SHAPE) + source
    difference = science - template
    sci, x0, y0 = cut_stamp(science, 200.0, 300.0)
    tmpl, _, _ = cut_stamp(template, 200.0, 300.0)
    diff, _, _ = cut_stamp(difference, 200.0, 300.0)
    return sci, tmpl, diff, image_wcs(), (x0, y0)


def moving_object() -> MovingObject:
    """A main-belt-like motion with a prediction one hour ahead."""
    return MovingObject(
        rate=30.5, rate_err=0.25, position_angle=112.5, position_angle_err=0.5, n_detections=3,
        predicted_mjd=61004.166666, predicted_ra=150.0184, predicted_dec=2.0171,
        predicted_err_major=0.75, predicted_err_minor=0.25, predicted_err_pa=112.5,
    )


def make_alerts(n: int, *, start: int = 0, score: float = 0.9, with_cutouts: bool = True, builder: AlertBuilder | None = None,
                night: str = NIGHT) -> list[Alert]:
    """n distinct alerts (candidate ids start..start+n-1); they share one set of stamps."""
    builder = builder or AlertBuilder(night)
    sci, tmpl, diff, wcs, origin = stamps()
    out = []
    for i in range(start, start + n):
        det = detection(i, score=score)
        out.append(
            builder.build(
                det,
                object_id=7_000_000 + i,
                science=sci if with_cutouts else None,
                template=tmpl if with_cutouts else None,
                difference=diff if with_cutouts else None,
                wcs=wcs,
                origin=origin,
                prv_detections=(detection(i + 100_000, score=score),) if i % 2 else (),
                moving_object=moving_object() if i % 3 == 0 else None,
            )
        )
    return out
