"""
Instrumental calibration of raw pixels: bias, flat field and gain, to electrons, with the
saturated pixels flagged.

One formula, ``electrons = gain * (raw - bias) / flat``, applied where each term is given
(a missing bias is 0, a missing flat is 1, a missing gain is 1 e-/ADU), in numpy (`calibrate`)
and in torch (`calibrate_tensor`, for batches on any device). A pixel is saturated when its raw
value is at or above the header's ``SATURATE`` (ADU, before bias), which the simulator writes as
the value saturated pixels hold; pixels whose flat is not a positive finite number cannot be
calibrated and are flagged too (and set to NaN).

Notes
-----
Pure functions, thread-safe; the torch version allocates only its outputs and runs on the
tensors' device without host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from skyblink.headers import HeadersConfig
from skyblink.lazy_import import lazy_module
from skyblink.storage.ccd_context import CcdContext, calibration_facts

if TYPE_CHECKING:
    import torch
else:
    # The optional [ml] extra, imported by the first tensor function: the numpy functions (and the
    # driver, which imports this module) work without it and do not pay for it.
    torch = lazy_module("torch")

__all__ = ["Calibrated", "CalibrationSpec", "calibrate", "calibrate_tensor"]


@dataclass(frozen=True, slots=True)
class CalibrationSpec:
    """
    The calibration constants of one CCD, read from its FITS header. Stable.

    Attributes
    ----------
    gain : float or None
        Electrons per ADU (``GAIN``); None when the header has none.
    saturate : float or None
        Raw ADU at or above which a pixel is saturated (``SATURATE``).
    read_noise : float
        Read noise in electrons (``RDNOISE``; 0 when absent).
    """

    gain: float | None = None
    saturate: float | None = None
    read_noise: float = 0.0

    @classmethod
    def from_header(cls, header: Mapping[str, Any], headers: HeadersConfig | None = None) -> CalibrationSpec:
        """
        Read the gain, saturation and read noise of a FITS header (or any mapping) by the store's
        rule (`skyblink.storage.ccd_context.calibration_facts`): the first of each fact's
        ``headers`` keywords (default: the `skyblink.headers.HeadersConfig` defaults).

        Raises
        ------
        ValueError
            If the gain is present but not positive (the message names the keyword).
        """
        gain, saturate, read_noise = calibration_facts(header, headers)
        return cls(gain=gain, saturate=saturate, read_noise=read_noise)

    @classmethod
    def of(cls, context: CcdContext) -> CalibrationSpec:
        """The calibration constants of a CCD's `CcdContext` (`skyblink.storage.NightStore.ccd_context`)."""
        return cls(gain=context.gain, saturate=context.saturate, read_noise=context.read_noise)


@dataclass(frozen=True, slots=True)
class Calibrated:
    """
    Calibrated pixels. Stable.

    Attributes
    ----------
    electrons : (..., ny, nx) ndarray or tensor of float32
        ``gain * (raw - bias) / flat``; NaN where the flat is unusable.
    mask : (..., ny, nx) bool ndarray or tensor
        True where the raw value is at or above ``saturate``, or the flat is not positive and finite.
    """

    electrons: Any
    mask: Any


def _check_gain(gain: float | None) -> float:
    if gain is None:
        return 1.0
    if not gain > 0:
        msg = f"gain must be a positive number of e-/ADU, got {gain!r}"
        raise ValueError(msg)
    return float(gain)


def calibrate(raw: np.ndarray, *, gain: float | None = None, bias: float | np.ndarray | None = None,
              flat: np.ndarray | None = None, saturate: float | None = None) -> Calibrated:
    """
    Turn raw ADU into electrons: ``gain * (raw - bias) / flat``, each term where given.

    Parameters
    ----------
    raw : (ny, nx) ndarray
        Raw pixels in ADU (any integer or float type).
    gain : float, optional
        Electrons per ADU (header ``GAIN``); 1 when not given.
    bias : float or (ny, nx) ndarray, optional
        Bias level (ADU), a scalar overscan level or a bias frame; 0 when not given.
    flat : (ny, nx) ndarray, optional
        Flat field normalised to about 1; 1 when not given.
    saturate : float, optional
        Raw level (ADU, before bias) at or above which a pixel is saturated (header ``SATURATE``).

    Returns
    -------
    Calibrated
        ``electrons`` (float32) and ``mask`` (saturated or unusable flat).

    Raises
    ------
    ValueError
        If ``gain`` is not positive, or ``bias``/``flat`` frames do not have ``raw``'s shape.
    """
    g = np.float32(_check_gain(gain))
    data = np.asarray(raw).astype(np.float32)
    for name, frame in (("bias", bias), ("flat", flat)):
        if frame is not None and np.ndim(frame) and np.shape(frame) != data.shape:
            msg = f"{name} must be a scalar or have the raw frame's shape {data.shape}, got {np.shape(frame)}"
            raise ValueError(msg)
    mask = np.zeros(data.shape, dtype=bool) if saturate is None else data >= np.float32(saturate)
    if bias is not None:
        data = data - np.asarray(bias, dtype=np.float32)
    if flat is not None:
        f = np.asarray(flat, dtype=np.float32)
        usable = np.isfinite(f) & (f > 0)
        data = np.where(usable, data / np.where(usable, f, np.float32(1.0)), np.float32(np.nan))
        mask |= ~usable
    return Calibrated(electrons=(data * g).astype(np.float32, copy=False), mask=mask)


def calibrate_tensor(raw: torch.Tensor, *, gain: float | torch.Tensor | None = None, bias: float | torch.Tensor | None = None,
                     flat: torch.Tensor | None = None, saturate: float | torch.Tensor | None = None) -> Calibrated:
    """
    `calibrate` in torch, for a batch of tiles on any device (the same formula, float32).

    Parameters
    ----------
    raw : (..., ny, nx) tensor
        Raw ADU (16-bit data already widened, e.g. by ``uint16_from_int16``).
    gain, saturate : float or 0-d float32 tensor, optional
        As in `calibrate`; tensors (not checked, no host sync) let one compiled program serve
        every CCD.
    bias : float or tensor broadcastable to ``raw``, optional
    flat : tensor broadcastable to ``raw``, optional

    Returns
    -------
    Calibrated
        ``electrons`` (float32 tensor) and ``mask`` (bool tensor), on ``raw``'s device.

    Raises
    ------
    ValueError
        If ``gain`` is not positive.
    """
    g = gain if isinstance(gain, torch.Tensor) else float(np.float32(_check_gain(gain)))
    data = raw.to(torch.float32)
    level = saturate if saturate is None or isinstance(saturate, torch.Tensor) else float(np.float32(saturate))
    mask = torch.zeros_like(data, dtype=torch.bool) if level is None else data >= level
    if bias is not None:
        data = data - (bias.to(device=data.device, dtype=torch.float32) if isinstance(bias, torch.Tensor)
                       else float(np.float32(bias)))
    if flat is not None:
        f = flat.to(device=data.device, dtype=torch.float32)
        usable = torch.isfinite(f) & (f > 0)
        data = torch.where(usable, data / torch.where(usable, f, torch.ones_like(f)), torch.full_like(data, float("nan")))
        mask = mask | ~usable
    return Calibrated(electrons=data * g, mask=mask)
