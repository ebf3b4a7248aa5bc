"""
Bring stamps from elsewhere (ZTF or Rubin cutouts) to the classifier's input: a 63x63 triplet in
noise units.

`external_stamps` applies to a survey alert's stamps (`skyblink.storage.alerts.SurveyStamps`,
already 63x63 about the source) one documented rule, `ExternalStampRule`, which brings them to
what the classifier saw in training (simulated nights at 0.6"/px, references 6 exposures deep,
the difference as science minus reference, every pixel sky noise in sigma units):

1. **Difference convention**: science minus template. ZTF writes the difference of a negative
   subtraction (``isdiffpos = 'f'``, ``refmsci``) as template minus science, so it is negated.
2. **Pixel scale**: cutouts finer than the training scale are block-averaged by the integer
   factor ``round(0.6 / scale)`` about the source pixel (Rubin 0.2"/px: 3x3 -> 0.6"/px, a 30 px
   cutout becomes 10 px); ZTF (1.01"/px) is left as is.
3. **Sigma units**: each channel minus its median, over its robust sigma (1.4826 x MAD), over
   the finite pixels.
4. **Template depth** (ZTF): the template channel times ``sqrt(6 / nframesref)``, so a static
   source has the signal-to-noise ratio a 6-exposure training reference gives it.
5. **No data**: NaN pixels (masked, or outside the cutout), float sentinels (|value| >= 1e30,
   e.g. the -3.4e38 some ZTF templates carry where masked) and the padding back to 63x63 are
   filled with unit-variance Gaussian noise seeded by the alert id (deterministic), i.e. blank
   sky as the classifier saw it in training rather than a flat patch of zeros.

The generic rule below (`sigma_normalize`, `fit_stamp`):

Rule: each channel has its median subtracted and is divided by its robust noise
(1.4826 x the median absolute deviation), so it is in sigma units like the tile program's
output; NaNs become 0. A stamp larger than 63 px is cropped about its centre; a smaller one is
padded with 0 (the sky level after normalisation) on both sides, the centre kept in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from skyblink.model_io import STAMP_SIZE
from skyblink.storage.alerts.survey_packets import Survey, SurveyAlert

__all__ = ["TRAINING_PIXEL_SCALE", "TRAINING_REFERENCE_DEPTH", "ExternalStampRule", "external_stamps", "fit_stamp",
           "sigma_normalize", "sigma_triplet"]

_MAD_TO_SIGMA = 1.4826


def sigma_normalize(image: np.ndarray) -> np.ndarray:
    """Return ``image`` minus its median, over its robust sigma, NaN -> 0 (float32)."""
    data = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.float32)
    median = np.median(data[finite])
    sigma = _MAD_TO_SIGMA * np.median(np.abs(data[finite] - median))
    if not sigma > 0:
        sigma = float(np.std(data[finite])) or 1.0
    return np.where(finite, (data - median) / sigma, 0.0).astype(np.float32)


def fit_stamp(image: np.ndarray, size: int = STAMP_SIZE) -> np.ndarray:
    """Crop about the centre or zero-pad symmetrically to ``size`` x ``size``."""
    out = np.zeros((size, size), np.float32)
    ny, nx = image.shape
    sy, sx = max(0, (ny - size) // 2), max(0, (nx - size) // 2)
    crop = image[sy : sy + size, sx : sx + size]
    oy, ox = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    out[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    return out


def sigma_triplet(science: np.ndarray, template: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """Return the (3, 63, 63) float32 classifier input for one cutout triplet."""
    return np.stack([fit_stamp(sigma_normalize(c)) for c in (science, template, difference)])


#: Pixel scale of the simulated nights the classifier was trained on (SimConfig default), arcsec.
TRAINING_PIXEL_SCALE = 0.6
#: Depth of the training references in single exposures (SimConfig.reference_depth default).
TRAINING_REFERENCE_DEPTH = 6
#: Pixel values at or beyond this magnitude are masked-pixel sentinels, not sky.
_SENTINEL = 1e30


@dataclass(frozen=True, slots=True)
class ExternalStampRule:
    """
    How survey stamps become classifier input (see the module notes). Stable.

    Attributes
    ----------
    difference : {"science_minus_template", "as_packet"}
        ``as_packet`` keeps ZTF's source-positive ``refmsci`` difference.
    resample : bool
        Block-average cutouts finer than `TRAINING_PIXEL_SCALE` to it.
    template_depth : bool
        Scale the ZTF template channel to a `TRAINING_REFERENCE_DEPTH`-exposure reference.
    fill : {"noise", "zero"}
        What NaN pixels and padding become.
    """

    difference: Literal["science_minus_template", "as_packet"] = "science_minus_template"
    resample: bool = True
    template_depth: bool = True
    fill: Literal["noise", "zero"] = "noise"


def _block_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks, the centre pixel's block at the centre (NaN-aware)."""
    centre = image.shape[0] // 2
    blocks = (centre - factor // 2) // factor  # whole blocks on each side of the centre block
    lo = centre - factor // 2 - blocks * factor
    n = (2 * blocks + 1) * factor
    window = image[lo : lo + n, lo : lo + n].reshape(2 * blocks + 1, factor, 2 * blocks + 1, factor)
    finite = np.isfinite(window)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, window, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def external_stamps(alert: SurveyAlert, rule: ExternalStampRule | None = None) -> np.ndarray:
    """
    Return the classifier input of one survey alert, by `ExternalStampRule`. Stable.

    Parameters
    ----------
    alert : SurveyAlert
        With stamps (`SurveyAlert.stamps` not None).
    rule : ExternalStampRule, optional
        Default: the documented rule (module notes).

    Returns
    -------
    (3, 63, 63) `~numpy.ndarray` of float32
        science, template, difference in sigma units.

    Raises
    ------
    ValueError
        The alert has no stamps.
    """
    rule = rule or ExternalStampRule()
    stamps = alert.stamps
    if stamps is None:
        msg = f"packet {alert.packet}: no cutouts to score"
        raise ValueError(msg)
    factor = round(TRAINING_PIXEL_SCALE / stamps.pixel_scale_arcsec) if rule.resample else 1
    rng = np.random.default_rng(alert.alert_id % (1 << 63))
    channels = []
    for index, image in enumerate(stamps.triplet):
        data = np.array(image, dtype=np.float32)
        data[np.abs(data) >= _SENTINEL] = np.nan  # masked pixels written as -FLT_MAX
        if index == 2 and rule.difference == "science_minus_template":  # the difference
            data *= np.float32(stamps.difference_sign)
        if factor >= 2:  # only downsample by a whole factor
            data = _block_average(data, factor)
        finite = np.isfinite(data)
        normal = sigma_normalize(data)
        if index == 1 and rule.template_depth and alert.survey is Survey.ZTF:
            depth = alert.record.get("nframesref")
            if depth:
                normal *= np.float32(math.sqrt(TRAINING_REFERENCE_DEPTH / float(depth)))
        out = rng.standard_normal((STAMP_SIZE, STAMP_SIZE)).astype(np.float32) if rule.fill == "noise" \
            else np.zeros((STAMP_SIZE, STAMP_SIZE), np.float32)
        n = normal.shape[0]
        off = (STAMP_SIZE - n) // 2
        region = out[off : off + n, off : off + n]
        region[finite] = normal[finite]
        channels.append(out)
    return np.stack(channels)
