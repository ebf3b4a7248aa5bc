"""
Score real survey alerts (ZTF, Rubin) with skyblink's classifier and, for ZTF, the braai port.

The classifier was trained on simulated nights only (0.6"/px, references 6 exposures deep, the
difference as science minus reference, every pixel sky noise in sigma units). `external_stamps`
brings a survey's stamps (`skyblink.storage.alerts.SurveyStamps`, already 63x63 about the source)
to that input by one documented rule, `ExternalStampRule`:

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

braai (`skyblink.engines.braai_port`) applies to ZTF cutouts only (its own pre-processing on the
raw cutouts); it is left empty (None) for Rubin alerts.

Notes
-----
CPU by default (ONNX Runtime through `select_runner`); no GPU memory unless a GPU backend is
chosen. Not thread-safe while a runner is shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from skyblink.engines.backends import select_runner
from skyblink.lazy_import import lazy_module
from skyblink.storage.alerts.survey_packets import Survey, SurveyAlert

from .model_io import CLASSIFIER_CLASSES, STAMP_SIZE
from .stamps import sigma_normalize

if TYPE_CHECKING:
    import torch

    from . import braai_port
else:
    torch = lazy_module("torch")  # only when braai runs
    braai_port = lazy_module(".braai_port", __package__)

__all__ = [
    "TRAINING_PIXEL_SCALE",
    "TRAINING_REFERENCE_DEPTH",
    "AlertScore",
    "ExternalStampRule",
    "external_stamps",
    "pairwise_auc",
    "score_alerts",
]

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


@dataclass(frozen=True, slots=True)
class AlertScore:
    """
    Scores of one survey alert. Stable.

    Attributes
    ----------
    alert : SurveyAlert
    skyblink_rb : float or None
        skyblink's classifier real/bogus; None when the packet has no cutouts.
    skyblink_class : str or None
        The classifier's most probable class.
    braai_drb : float or None
        The braai d6_m7 port's score (ZTF only).
    """

    alert: SurveyAlert
    skyblink_rb: float | None
    skyblink_class: str | None
    braai_drb: float | None


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


def pairwise_auc(reference: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """
    ROC AUC of ``score`` against a continuous ``reference`` (the concordance index). Stable.

    Over every pair of alerts whose reference scores differ, the fraction that ``score`` orders
    the same way (ties in ``score`` count one half). For a 0/1 reference this is the ROC AUC.

    Parameters
    ----------
    reference, score : array_like of float, same length

    Returns
    -------
    float
        In [0, 1]; NaN when no pair differs in ``reference``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if ref.shape != s.shape:
        msg = f"reference and score must have the same shape, got {ref.shape} and {s.shape}"
        raise ValueError(msg)
    higher = ref[:, None] > ref[None, :]
    pairs = higher.sum()
    if pairs == 0:
        return math.nan
    wins = ((s[:, None] > s[None, :]) & higher).sum() + 0.5 * ((s[:, None] == s[None, :]) & higher).sum()
    return float(wins / pairs)


def _braai_scores(alerts: Sequence[SurveyAlert]) -> dict[int, float]:
    ztf = [(i, a) for i, a in enumerate(alerts) if a.survey is Survey.ZTF and a.stamps is not None and a.stamps.raw is not None]
    if not ztf:
        return {}
    stamps = braai_port.braai_normalize_batch([a.stamps.raw for _, a in ztf if a.stamps is not None and a.stamps.raw is not None])
    with torch.no_grad():
        drb = braai_port.load_braai()(torch.from_numpy(stamps))[:, 0].numpy()
    return {i: float(v) for (i, _), v in zip(ztf, drb, strict=True)}


def score_alerts(alerts: Sequence[SurveyAlert], *, rule: ExternalStampRule | None = None, braai: bool = True,
                 backend: Literal["auto", "tensorrt", "torch", "onnxruntime"] = "auto", batch: int = 256) -> list[AlertScore]:
    """
    Score survey alerts with skyblink's classifier (and braai for ZTF). Stable.

    Parameters
    ----------
    alerts : sequence of SurveyAlert
        E.g. `skyblink.storage.alerts.read_survey_files(...).alerts`.
    rule : ExternalStampRule, optional
        Stamp normalisation (default: the documented rule).
    braai : bool
        Also run the braai d6_m7 port on ZTF alerts (needs torch).
    backend : {"auto", "tensorrt", "torch", "onnxruntime"}
        Classifier backend (`select_runner`); ``auto`` is ONNX Runtime on a machine without GPU.
    batch : int
        Stamps per inference call.

    Returns
    -------
    list of AlertScore
        One per alert, in order; an alert without cutouts gets None scores.
    """
    scorable = [i for i, a in enumerate(alerts) if a.stamps is not None]
    rb: dict[int, float] = {}
    cls: dict[int, str] = {}
    if scorable:
        inputs = np.stack([external_stamps(alerts[i], rule) for i in scorable])
        with select_runner("classifier", backend=backend).runner as runner:
            for start in range(0, len(scorable), batch):
                out = runner.infer({"stamps": inputs[start : start + batch]})
                for j, i in enumerate(scorable[start : start + batch]):
                    rb[i] = float(out["real_bogus"][j, 0])
                    cls[i] = CLASSIFIER_CLASSES[int(np.argmax(out["class_probs"][j]))]
    drb = _braai_scores(alerts) if braai else {}
    return [AlertScore(a, rb.get(i), cls.get(i), drb.get(i)) for i, a in enumerate(alerts)]
