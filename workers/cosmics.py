"""
Cosmic-ray and hot-pixel rejection in one frame: L.A.Cosmic (van Dokkum 2001, PASP 113, 1420),
in numpy/scipy (`detect_cosmics`) and in torch (`detect_cosmics_tensor`), giving the same mask.

One pass of the algorithm, on an image ``I`` with its sky (not background-subtracted):

1. ``L+``: the Laplacian ``[[0,-1,0],[-1,4,-1],[0,-1,0]]`` of ``I`` subsampled 2x, negative
   values clipped to 0, block-averaged back to the original grid. Sharp edges (a cosmic ray's
   charge stops at a pixel boundary, a star's light does not) give large positive values.
2. The noise model ``N = sqrt(gain * med5(I) + read_noise**2) / gain`` and ``S = L+ / (2 N)``;
   ``S' = S - med5(S)`` removes the smooth response of extended sources.
3. The fine-structure image ``F = (med3(I) - med7(med3(I))) / N``, floored at 0.01. A star,
   even undersampled, is symmetric and has fine structure comparable to its Laplacian; a
   cosmic ray's Laplacian is much larger than its fine structure.
4. Candidates: ``S' > sigclip`` and ``S' / F > objlim``; grown once into 8-neighbours with
   ``S' > sigclip`` and once more with ``S' > sigfrac * sigclip``.
5. The flagged pixels are replaced by the median of the good pixels of their 5x5 neighbourhood
   and the pass repeats (at most ``niter`` times) until it finds nothing new.

The ``k x k`` medians ``med3``, ``med5``, ``med7`` are *separable* medians: the median of ``k``
along each column, then the median of ``k`` of those along each row (a median of medians, as
robust to a cosmic ray or a star core as the full ``k x k`` median). They replace L.A.Cosmic's
full window medians because they cost a few dozen elementwise min/max per pixel (a pruned
Batcher sorting network selecting the middle value: 12 for a median of 5, 22 for one of 7),
against a sort of 25 or 49 values per pixel, and a min/max network is exact, so numpy and torch
give bit-identical medians. Measured on the test frames (simulated, 20x the cosmic-ray rate,
FWHM 1.59 and 1.33 px): recall 925/930 (99.5 %) and star-core pixels masked 2/4823 (0.04 %),
against 925/930 and 4/4823 with the full medians. Medians use mirror edges (``scipy.ndimage``
``mode="mirror"``), the Laplacian replicates edges, as L.A.Cosmic's reference code does. ``L+`` is computed without materialising the 4x larger
subsampled image: with each pixel ``v`` repeated in a 2x2 block, each sub-pixel's Laplacian is
``2v - v_vertical_neighbour - v_horizontal_neighbour``, so ``L+`` is the mean of four clipped
terms of the original pixels (the tests check it against the literal subsample-convolve-rebin).

Hot pixels are single-pixel outliers, so one pass flags them like a one-pixel cosmic ray; a hot
pixel is one flagged in every exposure of the same CCD (`persistent_pixels`).

Notes
-----
The numpy version runs passes after the first only in windows around the pixels the previous
cleaning changed (one pass's mask at a pixel depends on the image within 6 pixels). The torch
version computes the detection with elementwise min/max on shifted views (no sort, no per-pixel
window tensors), and never synchronises with the host: it runs all ``niter`` passes (a pass after
one that flagged nothing new changes nothing). The first `DENSE_PASSES` look at the whole tile and
clean every flagged pixel through a fixed-capacity index of them per tile (a cumulative count
gives each its slot; their 5x5 neighbourhoods are gathered and sorted). The later ones work, as
numpy does, only near what the cleaning changed: in a fixed number of 32x32 blocks a tile
(`REPASS_CAPACITY`), each in a window 6 pixels wider, where they detect and then clean again the
flagged pixels within 2 of a new flag (a cleaned value depends on the flags within 2), at most
`RECLEAN_SLOTS` a window. Fixed shapes throughout, so a CUDA graph can hold the loop; a tile over
any of these capacities is reported (`Cosmics.overflow`). It gives the same mask and cleaned image
as the numpy version (both compute in float32 with the same operations in the same order).
Unusable pixels are filled with the median of the good pixels of every 4th row and column (a
fixed subsample, in both versions).
Thread-safe; no global state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import find_objects, label, maximum_filter

from skyblink.lazy_import import lazy_module

if TYPE_CHECKING:
    import torch
    from torch.nn import functional as F
else:
    # The optional [ml] extra, imported by the first tensor function: the numpy functions (and the
    # driver, which imports this module) work without it and do not pay for it.
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

from .fused import fused
from .peaks import max_filter_tensor

__all__ = ["CLEANING_CAPACITY", "DENSE_PASSES", "REPASS_CAPACITY", "Cosmics", "detect_cosmics", "detect_cosmics_tensor", "persistent_pixels"]

#: Fraction of a tile's pixels that the torch version's cleaning has slots for (`detect_cosmics_tensor`'s
#: ``capacity``): the gather and sort of each slot's 5x5 neighbourhood cost the same whether a slot is used or
#: not. Flagged fractions measured with `detect_cosmics`: a raw 150 s CCD frame (shared/data/ccdproc) 0.013 %,
#: the Spitzer mosaic (photutils-datasets) 0.075 %, the simulator's frames 0.20 % (mostly hot pixels) and
#: 0.37-0.41 % at 20 times its cosmic-ray rate (the tests' frames): 1/64 (1.6 %) is 3.9 times the last and 8
#: times the simulator's own, and a tile beyond it is reported (`Cosmics.overflow`) and its flags masked.
CLEANING_CAPACITY = 1 / 64
#: Passes of the torch version computed over the whole tile; later passes recompute only the
#: blocks within reach of the pixels the previous cleaning changed (`_restep_tensor`). Measured
#: with `detect_cosmics` on the 1024x1024 tiles of a simulated 2048^2 frame (benchmarks/cosmics_repass.py):
#: the second pass must look again at 13.0 % of a tile's 32x32 blocks at the simulator's cosmic-ray
#: rate (14.3 % at most), 26.5 % at 10x and 40.5 % at 20x (22.1 % of the real SAAO raw frame of
#: shared/data/ccdproc), too many to gain from a fixed-capacity window pass; the third 1.0 %, 5.2 %
#: and 11.9 % (3.7 %), the fourth under 2 %.
DENSE_PASSES = 2
#: Fraction of a tile's blocks that each pass after `DENSE_PASSES` recomputes (`detect_cosmics_tensor`'s
#: ``repass_capacity``): 1/8 holds every tile measured up to 10x the simulator's cosmic-ray rate
#: (7.1 % at most, over two exposures) and the real frame; a tile that needs more is reported
#: (`Cosmics.overflow`) and its other blocks keep the previous pass's flags.
REPASS_CAPACITY = 1 / 8
#: Flagged pixels that a window of a later pass can clean again (`_restep_tensor`): those within 2 px
#: of the pass's new flags, in the window's block and 2 px around it. Measured with `detect_cosmics`
#: on simulated 2048^2 frames (two exposures each): at most 10 (the simulator's rate), 13 (10x) and 17
#: (20x) in one block's region in the third and fourth passes; a window with more is reported
#: (`Cosmics.overflow`) and its other pixels keep their previous cleaning.
RECLEAN_SLOTS = 32
#: Side of those blocks (pixels). Each is recomputed in a window `_REACH` pixels wider on each
#: side: (32 + 12)^2 / 32^2 = 1.9 times its pixels, so a pass over 1/8 of the blocks costs about
#: a quarter of a dense one.
_BLOCK = 32
#: A pass's mask at a pixel depends on the image within this many pixels (Chebyshev).
_REACH = 6
#: Extra context read around each window of the later passes.
_HALO = 8
#: The fill value of unusable pixels is the median of the good pixels of every this-many-th row and column.
_FALLBACK_STRIDE = 4


def _grown(mask: np.ndarray, reach: int) -> np.ndarray:
    """
    ``mask`` grown by ``reach`` pixels (Chebyshev): `scipy.ndimage.binary_dilation` by a
    (2 reach + 1)^2 square, computed as its separable maximum filter (the same pixels, without
    the square's cost per pixel).
    """
    return maximum_filter(mask, size=2 * reach + 1, mode="constant", cval=False)


@dataclass(frozen=True, slots=True)
class Cosmics:
    """
    Result of cosmic-ray rejection. Stable.

    Attributes
    ----------
    mask : bool ndarray or tensor, the image's shape
        True on pixels flagged as cosmic rays or hot pixels.
    cleaned : float32 ndarray or tensor, the image's shape
        The image with flagged pixels replaced by the median of the good pixels of their 5x5
        neighbourhood (pixels flagged or given as bad are not used).
    overflow : bool tensor or None
        `detect_cosmics_tensor` only: per tile, whether more pixels were flagged in a pass than
        its cleaning capacity (then the result may differ from numpy's); None from numpy.
    """

    mask: Any
    cleaned: Any
    overflow: Any = None


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a Python float (so numpy and torch use the same constant)."""
    return float(np.float32(x))


@dataclass(frozen=True, slots=True)
class _Params:
    gain: float
    read_noise_sq: Any  # float, or a 0-d float32 tensor (a device program's per-field value)
    sigclip: float
    low: float
    objlim: float

    @classmethod
    def make(cls, *, gain: float, read_noise: Any, sigclip: float, sigfrac: float, objlim: float, niter: int) -> _Params:
        for name, value in (("gain", gain), ("sigclip", sigclip), ("sigfrac", sigfrac), ("objlim", objlim)):
            if not value > 0:
                msg = f"{name} must be positive, got {value!r}"
                raise ValueError(msg)
        if niter < 1:
            msg = f"niter must be at least 1, got {niter!r}"
            raise ValueError(msg)
        read_noise_sq: Any
        if not isinstance(read_noise, int | float | np.floating | np.integer):  # a tensor: torch is loaded
            # float64 squared, then rounded: the same constant as a Python float's (checked by the caller)
            read_noise_sq = (read_noise.to(torch.float64) ** 2).to(torch.float32)
        elif read_noise < 0:
            msg = f"read_noise must be >= 0 electrons, got {read_noise!r}"
            raise ValueError(msg)
        else:
            read_noise_sq = _f32(float(read_noise * read_noise))
        return cls(_f32(gain), read_noise_sq, _f32(sigclip), _f32(sigfrac * sigclip), _f32(objlim))


# --------------------------------------------------------------------------------------- numpy


def _lplus(image: np.ndarray) -> np.ndarray:
    """Clipped Laplacian of the 2x subsampled image, block-averaged back (see the module notes)."""
    p = np.pad(image, 1, mode="edge")
    two = p[1:-1, 1:-1] + p[1:-1, 1:-1]
    total = np.zeros_like(image)
    for vertical in (p[:-2, 1:-1], p[2:, 1:-1]):
        for horizontal in (p[1:-1, :-2], p[1:-1, 2:]):
            total += np.maximum(two - vertical - horizontal, np.float32(0.0))
    return total * np.float32(0.25)


def _sorting_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort of ``n`` wires: comparators (i, j), i < j, min to i."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@cache
def _median_plan(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators of `_sorting_network` that the middle wire depends on, with which outputs are used."""
    need = {n // 2}
    plan = []
    for i, j in reversed(_sorting_network(n)):
        low, high = i in need, j in need
        if low or high:
            plan.append((i, j, low, high))
            need |= {i, j}
    return tuple(reversed(plan))


#: The plans the filters use, made at import (a compiler then reads constants, not a cached function).
_PLANS = {n: _median_plan(n) for n in (3, 5, 7)}


def _median_of(values: list[Any], minimum: Any, maximum: Any) -> Any:
    """Elementwise median of an odd number of same-shape arrays (or tensors), with min/max only (exact)."""
    wires: list[Any] = list(values)
    n = len(wires)
    for i, j, low, high in _PLANS[n] if n in _PLANS else _median_plan(n):
        a, b = wires[i], wires[j]
        wires[i] = minimum(a, b) if low else None
        wires[j] = maximum(a, b) if high else None
    return wires[len(wires) // 2]


def _separable_median(padded: Any, size: int, shape: tuple[int, int], minimum: Any, maximum: Any) -> Any:
    """
    Median of ``size`` along columns, then of those along rows, of an array padded by ``size // 2``
    on its last two axes: the separable ``size x size`` median (see the module notes).
    """
    h, w = shape
    columns = _median_of([padded[..., k : k + h, :] for k in range(size)], minimum, maximum)
    return _median_of([columns[..., k : k + w] for k in range(size)], minimum, maximum)


def _median_filter(image: np.ndarray, size: int) -> np.ndarray:
    """The separable ``size x size`` median with mirror edges (``scipy.ndimage`` ``mode="mirror"``)."""
    padded = np.pad(image, size // 2, mode="reflect")
    return _separable_median(padded, size, image.shape, np.minimum, np.maximum)


def _pass(image: np.ndarray, bad: np.ndarray, p: _Params) -> np.ndarray:
    """One L.A.Cosmic detection pass: the pixels it flags."""
    lplus = _lplus(image)
    m5 = _median_filter(image, 5)
    noise = np.sqrt(np.maximum(m5, np.float32(1e-5)) * np.float32(p.gain) + np.float32(p.read_noise_sq)) / np.float32(p.gain)
    s = lplus / (noise * np.float32(2.0))
    sp = s - _median_filter(s, 5)
    m3 = _median_filter(image, 3)
    fine = np.maximum((m3 - _median_filter(m3, 7)) / noise, np.float32(0.01))
    candidates = (sp > np.float32(p.sigclip)) & (sp / fine > np.float32(p.objlim)) & ~bad
    grown = _grown(candidates, 1) & (sp > np.float32(p.sigclip)) & ~bad
    return _grown(grown, 1) & (sp > np.float32(p.low)) & ~bad


def _clean(image: np.ndarray, replace: np.ndarray, exclude: np.ndarray, fallback: np.float32) -> np.ndarray:
    """Replace ``replace`` pixels by the median of the non-``exclude`` pixels of their 5x5 neighbourhood."""
    out = image.copy()
    ys, xs = np.nonzero(replace)
    if not len(ys):
        return out
    source = np.pad(np.where(exclude, np.float32(np.nan), image), 2, mode="constant", constant_values=np.nan)
    windows = sliding_window_view(source, (5, 5))[ys, xs].reshape(len(ys), 25)
    empty = np.isnan(windows).all(axis=1)
    windows[empty, 0] = fallback  # nothing good within 2 pixels: the frame's median of good pixels
    out[ys, xs] = np.nanmedian(windows, axis=1)
    return out


def _protected(bad: np.ndarray, protect: int) -> np.ndarray:
    """``bad`` grown by ``protect`` pixels (Chebyshev)."""
    if protect < 0:
        msg = f"protect must be >= 0 pixels, got {protect!r}"
        raise ValueError(msg)
    return _grown(bad, protect) if protect and bad.any() else bad


def _filled(image: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """The image as float32 with non-finite pixels set to the median of the finite good ones."""
    data = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    bad = bad | ~finite
    good = data[::_FALLBACK_STRIDE, ::_FALLBACK_STRIDE][~bad[::_FALLBACK_STRIDE, ::_FALLBACK_STRIDE]]
    fallback = np.float32(np.median(good)) if good.size else np.float32(0.0)
    return np.where(finite, data, fallback).astype(np.float32, copy=False), bad, fallback


def detect_cosmics(image: np.ndarray, *, read_noise: float, gain: float = 1.0, mask: np.ndarray | None = None,
                   sigclip: float = 5.0, sigfrac: float = 0.3, objlim: float = 8.0, niter: int = 4,
                   protect: int = 2) -> Cosmics:
    """
    Flag cosmic rays and hot pixels in one frame with L.A.Cosmic, and clean them.

    Parameters
    ----------
    image : (ny, nx) ndarray
        The frame with its sky, not background-subtracted: electrons (``gain=1``, e.g. from
        `skyblink.workers.calibration.calibrate`) or ADU with their ``gain``. Non-finite pixels
        are treated as bad.
    read_noise : float
        Read noise in electrons.
    gain : float
        Electrons per unit of ``image``.
    mask : (ny, nx) bool ndarray, optional
        Known bad pixels (saturated, dead): never flagged, never used to clean a neighbour.
        Pixels within ``protect`` pixels of them are not flagged either: the edges of
        saturated stars and their bleed trails are as sharp as cosmic rays.
    sigclip : float
        Detection limit of ``S'`` (sigma) for a cosmic-ray pixel.
    sigfrac : float
        Fraction of ``sigclip`` that neighbouring pixels must reach to join a cosmic ray.
    objlim : float
        Minimum contrast ``S' / F`` between the Laplacian and the fine structure: higher spares
        more of compact stars. van Dokkum's defaults are sigclip 4.5 and objlim 2-5; our
        survey's PSFs (1.3-3.3 px FWHM, undersampled in good seeing) need 5 and 8 to keep
        faint stars unflagged (benchmarks/cosmics_vs_astroscrappy.py).
    niter : int
        Most detect-and-clean passes.
    protect : int
        Pixels (Chebyshev distance) around ``mask`` that are never flagged.

    Returns
    -------
    Cosmics
        ``mask`` (bool) and ``cleaned`` (float32); the mask is all False when nothing is found.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, ``mask`` has another shape, or a parameter is out of range.
    """
    params = _Params.make(gain=gain, read_noise=read_noise, sigclip=sigclip, sigfrac=sigfrac, objlim=objlim, niter=niter)
    if np.ndim(image) != 2:  # one frame
        msg = f"image must be 2-D, got shape {np.shape(image)}"
        raise ValueError(msg)
    given = np.zeros(np.shape(image), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if given.shape != np.shape(image):
        msg = f"mask must have the image's shape {np.shape(image)}, got {given.shape}"
        raise ValueError(msg)
    data, unusable, fallback = _filled(image, given)
    bad = _protected(unusable, protect)
    current = data
    crmask = np.zeros(data.shape, dtype=bool)
    final = _pass(current, bad, params)
    for i in range(niter):
        new = final & ~crmask
        if not new.any():
            break
        crmask |= new
        previous, current = current, _clean(data, crmask, crmask | unusable, fallback)
        if i + 1 < niter:
            final = _repass(current, previous, final, bad, params)
    cleaned = np.where(np.isfinite(np.asarray(image, dtype=np.float32)), current, np.asarray(image, dtype=np.float32))
    return Cosmics(mask=crmask, cleaned=cleaned)


def _repass(current: np.ndarray, previous: np.ndarray, final: np.ndarray, bad: np.ndarray, p: _Params) -> np.ndarray:
    """The next pass's mask, recomputed only within reach of the pixels that the cleaning changed."""
    changed = current != previous
    zone = _grown(changed, _REACH)
    out = final.copy()
    labels, _ = label(zone, structure=np.ones((3, 3), dtype=bool))
    ny, nx = current.shape
    for i, box in enumerate(find_objects(labels), start=1):
        if box is None:
            continue
        y0, y1 = max(0, box[0].start - _HALO), min(ny, box[0].stop + _HALO)
        x0, x1 = max(0, box[1].start - _HALO), min(nx, box[1].stop + _HALO)
        window = _pass(current[y0:y1, x0:x1], bad[y0:y1, x0:x1], p)
        inside = labels[box] == i
        core = window[box[0].start - y0 : box[0].stop - y0, box[1].start - x0 : box[1].stop - x0]
        out[box] = np.where(inside, core, out[box])
    return out


def persistent_pixels(masks: Sequence[np.ndarray] | np.ndarray, *, min_fraction: float = 1.0) -> np.ndarray:
    """
    Hot pixels: the pixels flagged in at least ``min_fraction`` of the exposures of one CCD.

    Cosmic rays land at random; a hot pixel is flagged by `detect_cosmics` in every exposure.

    Parameters
    ----------
    masks : sequence of (ny, nx) bool ndarray
        Per-exposure masks of the same CCD (at least two).
    min_fraction : float
        Fraction of exposures in (0, 1].

    Returns
    -------
    (ny, nx) bool ndarray

    Raises
    ------
    ValueError
        If fewer than two masks are given or ``min_fraction`` is not in (0, 1].
    """
    stack = np.asarray(masks, dtype=bool)
    if stack.ndim != 3 or stack.shape[0] < 2:  # a stack of frames
        msg = f"masks must be at least two (ny, nx) masks of one CCD, got shape {stack.shape}"
        raise ValueError(msg)
    if not 0 < min_fraction <= 1:
        msg = f"min_fraction must be in (0, 1], got {min_fraction!r}"
        raise ValueError(msg)
    return stack.sum(axis=0) >= np.ceil(min_fraction * stack.shape[0] - 1e-9)


# --------------------------------------------------------------------------------------- torch


def _median_filter_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """`_median_filter` of each (H, W) image of a (B, H, W) tensor."""
    half = size // 2
    padded = F.pad(x[:, None], (half,) * 4, mode="reflect")[:, 0]
    return _separable_median(padded, size, (x.shape[1], x.shape[2]), torch.minimum, torch.maximum)


def _lplus_tensor(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    two = p[:, 1:-1, 1:-1] + p[:, 1:-1, 1:-1]
    total = torch.zeros_like(x)
    for vertical in (p[:, :-2, 1:-1], p[:, 2:, 1:-1]):
        for horizontal in (p[:, 1:-1, :-2], p[:, 1:-1, 2:]):
            total = total + (two - vertical - horizontal).clamp(min=0.0)
    return total * 0.25


def _dilate_tensor(mask: torch.Tensor, half: int = 1) -> torch.Tensor:
    """
    Grow a (B, H, W) boolean mask by ``half`` pixels (a square window of ``2 * half + 1``): the
    separable maximum filter of `skyblink.workers.peaks.max_filter_tensor` (4 ``half`` reads a
    pixel; a max-pool also writes an int64 argmax per pixel, 0.46 ms for the protect dilation of
    a batch of 16 1024^2 tiles on the H100).
    """
    return max_filter_tensor(mask.to(torch.float32), 2 * half + 1) > 0


def _pass_tensor(image: torch.Tensor, bad: torch.Tensor, gain: float, read_noise_sq: Any, sigclip: float, low: float,
                 objlim: float) -> torch.Tensor:
    lplus = _lplus_tensor(image)
    m5 = _median_filter_tensor(image, 5)
    noise = torch.sqrt(m5.clamp(min=_f32(1e-5)) * gain + read_noise_sq) / gain
    s = lplus / (noise * 2.0)
    sp = s - _median_filter_tensor(s, 5)
    m3 = _median_filter_tensor(image, 3)
    fine = ((m3 - _median_filter_tensor(m3, 7)) / noise).clamp(min=_f32(0.01))
    candidates = (sp > sigclip) & (sp / fine > objlim) & ~bad
    grown = _dilate_tensor(candidates) & (sp > sigclip) & ~bad
    return _dilate_tensor(grown) & (sp > low) & ~bad


@fused
def _step_tensor(current: torch.Tensor, crmask: torch.Tensor, data: torch.Tensor, bad: torch.Tensor, unusable: torch.Tensor,
                 fallback: torch.Tensor, read_noise_sq: Any, gain: float, sigclip: float, low: float,
                 objlim: float, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One detect-and-clean pass: the grown mask, the cleaned image and the tiles over capacity (fused on CUDA)."""
    crmask = crmask | _pass_tensor(current, bad, gain, read_noise_sq, sigclip, low, objlim)
    cleaned, overflow = _clean_sparse(data, crmask, crmask | unusable, fallback, capacity)
    return crmask, cleaned, overflow


def _slots(flags: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The positions along the last axis of the first ``k`` True values of each row of ``flags``
    (..., n), in order, ``n`` in the slots left over; and the rows with more than ``k``. A
    cumulative count gives each its slot and one scatter writes them: fixed shapes, no host sync.
    """
    n = flags.shape[-1]
    rank = flags.to(torch.int32).cumsum(-1, dtype=torch.int32) - 1
    slot = torch.where(flags & (rank < k), rank, k).to(torch.int64)  # slot k collects the rest, then is dropped
    positions = torch.arange(n, device=flags.device).expand_as(slot)
    empty = torch.full((*flags.shape[:-1], k + 1), n, dtype=torch.int64, device=flags.device)
    return empty.scatter(-1, slot, positions)[..., :k], rank[..., -1] >= k


def _medians_of_good(source: torch.Tensor, corner: torch.Tensor, stride: int, fallback: torch.Tensor) -> torch.Tensor:
    """
    numpy's ``nanmedian`` of the 5x5 window at each ``corner`` (..., k) of ``source`` (..., rows *
    ``stride``, excluded values +inf): `_median_of_finite` of the 25 gathered values, ``fallback``
    where none is good.
    """
    steps = torch.arange(5, device=source.device)
    offsets = (steps[:, None] * stride + steps[None, :]).reshape(25)
    lead, k = corner.shape[:-1], corner.shape[-1]
    neighbours = source.gather(-1, (corner[..., None] + offsets).reshape(*lead, k * 25)).reshape(*lead, k, 25)
    med, count = _median_of_finite(neighbours)
    return torch.where(count > 0, med, fallback.expand_as(med))


def _block_windows(current: torch.Tensor, previous: torch.Tensor,
                   capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The windows a later pass looks at: each tile's first ``capacity`` `_BLOCK`-square blocks within
    `_REACH` of a pixel where ``current`` differs from ``previous``, each with `_REACH` pixels
    around it, moved inside the tile at its edges (so a window's edge is either `_REACH` from its
    block or the tile's own edge). Returns the windows' pixels as flat tile positions (B, k, side,
    side), their blocks' first row and column inside the window (B, k) each, the slots in use
    (B, k), and the (B,) tiles with more blocks than ``capacity``. A partial last block row or
    column is moved inside the tile too (its pixels overlap its neighbour's).
    """
    b, h, w = current.shape
    block, halo = _BLOCK, _REACH
    side = block + 2 * halo
    rows, cols = -(-h // block), -(-w // block)
    nb = rows * cols
    # A block is touched when a changed pixel lies within `halo` of it (its aligned extent: every pixel of the
    # tile is in one aligned block, and the block moved inside the tile covers it).
    changed = F.pad((current != previous)[:, None].to(torch.float32), (halo, cols * block - w + halo, halo, rows * block - h + halo))
    touched = F.max_pool2d(changed, side, stride=block)[:, 0].reshape(b, nb) > 0
    index, overflow = _slots(touched, min(int(capacity), nb))
    at = index.clamp(max=nb - 1)
    y0 = ((at // cols) * block).clamp(max=h - block)
    x0 = ((at % cols) * block).clamp(max=w - block)
    wy, wx = (y0 - halo).clamp(min=0, max=h - side), (x0 - halo).clamp(min=0, max=w - side)
    steps = torch.arange(side, device=current.device)
    where = (wy * w + wx)[:, :, None, None] + (steps[:, None] * w + steps[None, :])
    return where, y0 - wy, x0 - wx, index < nb, overflow


@fused
def _restep_tensor(current: torch.Tensor, previous: torch.Tensor, crmask: torch.Tensor, data: torch.Tensor,
                   bad: torch.Tensor, unusable: torch.Tensor, fallback: torch.Tensor, read_noise_sq: Any, gain: float,
                   sigclip: float, low: float, objlim: float, blocks: int,
                   slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    `_step_tensor` done only near what the last cleaning changed, in the windows of `_block_windows`
    (at most ``blocks`` a tile): the pass on every window as one batch, its flags kept on the
    windows' blocks; then the flagged pixels within 2 of a new flag (all in a block or 2 px
    around it) cleaned again in their window, at most ``slots`` a window. Elsewhere the flags and
    cleaned values stand, as the dense step would find them again (a pass's flags at a pixel
    depend on the image within `_REACH`, a cleaned value on the flags within 2): the dense step's
    result bit for bit. Returns the grown mask, the cleaned image and the tiles over either
    capacity (fused on CUDA).
    """
    b, h, w = current.shape
    n = h * w
    where, cy, cx, used, over_blocks = _block_windows(current, previous, blocks)
    k, side = where.shape[1], where.shape[2]
    flat = where.reshape(b, k * side * side)

    def window(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n).gather(1, flat).reshape(b, k, side, side)

    def within(start: torch.Tensor, size: int, margin: int) -> torch.Tensor:
        """(B, k, side): the window's rows (or columns) from ``start - margin`` to ``start + size + margin``."""
        steps = torch.arange(side, device=where.device)
        return (steps >= start[..., None] - margin) & (steps < start[..., None] + size + margin)

    def scattered(base: torch.Tensor, values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``base`` (B, H, W) with ``values`` written at tile positions ``at``, positions ``n`` dropped."""
        out = F.pad(base.reshape(b, n), (0, 1)).scatter(1, at.reshape(b, -1), values.reshape(b, -1))
        return out[:, :n].reshape(b, h, w)

    found = _pass_tensor(window(current).reshape(b * k, side, side), window(bad).reshape(b * k, side, side), gain,
                         read_noise_sq, sigclip, low, objlim).reshape(b, k, side, side)
    core = within(cy, _BLOCK, 0)[..., :, None] & within(cx, _BLOCK, 0)[..., None, :] & used[..., None, None]
    grown = crmask | scattered(torch.zeros_like(crmask), found, torch.where(core, where, n))
    flagged, before = window(grown), window(crmask)
    # The pixels to clean again lie within 2 of a new flag, so within 2 of a block: their 5x5
    # neighbourhoods (and the new flags near them) lie inside the window.
    near = _dilate_tensor((flagged & ~before).reshape(b * k, side, side), 2).reshape(b, k, side, side)
    region = within(cy, _BLOCK, 2)[..., :, None] & within(cx, _BLOCK, 2)[..., None, :] & used[..., None, None]
    position, over_clean = _slots((flagged & near & region).reshape(b, k, side * side), slots)
    inf = float("inf")
    values = window(data)
    source = torch.where(flagged | window(unusable), torch.full_like(values, inf), values)
    source = F.pad(source.reshape(b * k, 1, side, side), (2, 2, 2, 2), value=inf).reshape(b, k, (side + 4) ** 2)
    at = position.clamp(max=side * side - 1)  # an unused slot reads some pixel; its value is dropped
    med = _medians_of_good(source, (at // side) * (side + 4) + at % side, side + 4, fallback[:, None, None])
    target = torch.where(position < side * side, where.reshape(b, k, side * side).gather(2, at), n)
    return grown, scattered(current, med, target), over_blocks | over_clean.any(dim=1)


@fused
def _prepared_tensor(raw: torch.Tensor, given: torch.Tensor, protect: int) -> tuple[torch.Tensor, ...]:
    """
    The passes' inputs: (finite, unusable, bad: unusable grown by ``protect`` pixels, the
    fallback value of each tile, the data with non-finite pixels at it); fused on CUDA (eagerly
    it was 82 kernels, 1.6 ms a batch of 16 tiles on an H100).
    """
    finite = torch.isfinite(raw)
    unusable = given | ~finite
    bad = unusable
    if protect:
        bad = _dilate_tensor(unusable, protect)
    step = _FALLBACK_STRIDE
    sample = torch.where(unusable, torch.full_like(raw, float("inf")), raw)[:, ::step, ::step].flatten(1)
    fallback, n_good = _median_of_finite(sample)
    fallback = torch.where(n_good > 0, fallback, torch.zeros_like(fallback))
    data = torch.where(finite, raw, fallback[:, None, None])
    return finite, unusable, bad, fallback, data


def _median_of_finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Median over the last axis of the values below +inf (+inf marks the excluded ones): the mean of
    the two middle values of an even count, as numpy's ``nanmedian``; and their count. The values
    are sorted (+inf last); where none counts, the median is +inf (the caller's fallback goes there).
    """
    ordered = x.sort(dim=-1).values
    count = (x != float("inf")).sum(dim=-1, keepdim=True)
    lo = (count - 1).clamp(min=0) // 2
    hi = count // 2
    med = (ordered.gather(-1, lo) + ordered.gather(-1, hi)) * 0.5
    return med[..., 0], count[..., 0]


def _clean_sparse(data: torch.Tensor, replace: torch.Tensor, exclude: torch.Tensor, fallback: torch.Tensor,
                  capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `_clean` with no host synchronisation and work only at the flagged pixels: the ``replace``
    pixels take the median of the non-``exclude`` pixels of their 5x5 neighbourhood (numpy's
    ``nanmedian``: the mean of the two middle values of an even count), the frame's ``fallback``
    where none is good. Also returns the (B,) tiles with more than ``capacity`` such pixels.

    The flagged pixels of each tile get slots in pixel order (a cumulative count); the first
    ``capacity`` slots gather their 25 neighbours (excluded ones +inf), sort them and write the
    median back with one scatter. Shapes are fixed by ``capacity``, so a CUDA graph holds it. A
    tile over capacity keeps its later flagged pixels as they are (reported, never silent).
    """
    b, h, w = data.shape
    n = h * w
    index, overflow = _slots(replace.reshape(b, n), min(int(capacity), n))
    inf = float("inf")
    source = F.pad(torch.where(exclude, torch.full_like(data, inf), data)[:, None], (2, 2, 2, 2), value=inf)
    source = source.reshape(b, (h + 4) * (w + 4))
    at = index.clamp(max=n - 1)  # an unused slot reads some pixel; its median is written to the dropped column n
    med = _medians_of_good(source, (at // w) * (w + 4) + at % w, w + 4, fallback[:, None])
    out = F.pad(data.reshape(b, n), (0, 1)).scatter(1, index, med)
    return out[:, :n].reshape(b, h, w), overflow


def detect_cosmics_tensor(images: torch.Tensor, *, read_noise: float | torch.Tensor, gain: float = 1.0,
                          mask: torch.Tensor | None = None,
                          sigclip: float = 5.0, sigfrac: float = 0.3, objlim: float = 8.0, niter: int = 4,
                          protect: int = 2, capacity: int | None = None, dense_passes: int | None = None,
                          repass_capacity: float = REPASS_CAPACITY) -> Cosmics:
    """
    `detect_cosmics` in torch, for one frame or a batch of tiles on any device.

    Parameters
    ----------
    images : (H, W) or (B, H, W) float tensor
        As ``image`` in `detect_cosmics` (each tile processed on its own).
    read_noise : float or 0-d float64 tensor
        As in `detect_cosmics`; a tensor (not checked, no host sync) lets one compiled program
        serve CCDs of every read noise.
    gain, sigclip, sigfrac, objlim, niter, protect
        As in `detect_cosmics`.
    mask : bool tensor of ``images``' shape, optional
        Known bad pixels.
    capacity : int, optional
        Most flagged pixels per tile that a dense pass cleans (every pixel flagged so far; the
        cleaning works only there, in fixed shapes). Default: `CLEANING_CAPACITY` of the tile's
        pixels, at least 1,024 (16,384 for 1024x1024); ``H * W`` can never overflow.
    dense_passes : int, optional
        Passes computed over the whole tile (at least 1; default `DENSE_PASSES`, read at the
        call); each later pass recomputes only the 32x32 blocks within reach of the pixels the
        previous cleaning changed and cleans again the flagged pixels near its new flags there
        (at most `RECLEAN_SLOTS` a block), which gives the same flags and cleaned image.
        ``niter`` makes every pass dense.
    repass_capacity : float
        Fraction of a tile's blocks (in (0, 1]) that a later pass has slots for; 1 never overflows.

    Returns
    -------
    Cosmics
        ``mask`` (bool tensor) and ``cleaned`` (float32 tensor) of ``images``' shape, equal to
        `detect_cosmics`'s on the CPU; ``overflow`` (bool tensor, one per tile, 0-d for one
        frame) is True for a tile where a pass flagged more than ``capacity`` pixels (its pixels
        beyond the capacity were not cleaned), a later pass had more blocks to recompute than
        ``repass_capacity`` (its other blocks kept the previous pass's flags) or a block more
        pixels to clean again than `RECLEAN_SLOTS` (the others kept their cleaning): its mask and
        cleaned image may differ from numpy's (check it, it costs no host sync to carry).

    Raises
    ------
    ValueError
        If ``images`` is not 2-D or 3-D, ``mask`` has another shape, or a parameter is out of range.
    """
    params = _Params.make(gain=gain, read_noise=read_noise, sigclip=sigclip, sigfrac=sigfrac, objlim=objlim, niter=niter)
    if images.ndim not in (2, 3):
        msg = f"images must be (H, W) or (B, H, W), got shape {tuple(images.shape)}"
        raise ValueError(msg)
    if mask is not None and mask.shape != images.shape:
        msg = f"mask must have the images' shape {tuple(images.shape)}, got {tuple(mask.shape)}"
        raise ValueError(msg)
    single = images.ndim == 2
    raw = (images[None] if single else images).to(torch.float32)
    given = torch.zeros_like(raw, dtype=torch.bool) if mask is None else (mask[None] if single else mask).to(torch.bool)
    if protect < 0:
        msg = f"protect must be >= 0 pixels, got {protect!r}"
        raise ValueError(msg)
    height, width = raw.shape[1], raw.shape[2]
    capacity = max(1024, int(height * width * CLEANING_CAPACITY)) if capacity is None else int(capacity)
    if capacity < 1:
        msg = f"capacity must be at least 1 pixel, got {capacity!r}"
        raise ValueError(msg)
    dense_passes = DENSE_PASSES if dense_passes is None else dense_passes
    if dense_passes < 1:
        msg = f"dense_passes must be at least 1, got {dense_passes!r}"
        raise ValueError(msg)
    if not 0 < repass_capacity <= 1:
        msg = f"repass_capacity must be in (0, 1], got {repass_capacity!r}"
        raise ValueError(msg)
    blocks = max(1, math.ceil(-(-height // _BLOCK) * -(-width // _BLOCK) * repass_capacity))
    finite, unusable, bad, fallback, data = _prepared_tensor(raw, given, protect)
    current = data
    crmask = torch.zeros_like(bad)
    # Every pass runs (no host synchronisation, so a compiler can capture the whole loop): once a
    # pass flags nothing new, the later ones recompute the same mask and cleaned image, so the
    # result is numpy's, which stops there.
    p = params
    overflow = torch.zeros(raw.shape[0], dtype=torch.bool, device=raw.device)
    by_blocks = height >= _BLOCK + 2 * _REACH and width >= _BLOCK + 2 * _REACH
    looked_at = data  # the image the last pass looked at, before its cleaning
    for i in range(niter):
        if i < dense_passes or not by_blocks:
            step = _step_tensor(current, crmask, data, bad, unusable, fallback, p.read_noise_sq, p.gain, p.sigclip, p.low,
                                p.objlim, capacity)
        else:
            step = _restep_tensor(current, looked_at, crmask, data, bad, unusable, fallback, p.read_noise_sq, p.gain,
                                  p.sigclip, p.low, p.objlim, blocks, RECLEAN_SLOTS)
        looked_at = current
        crmask, current, over = step
        overflow = overflow | over
    cleaned = torch.where(finite, current, raw)
    return Cosmics(mask=crmask[0] if single else crmask, cleaned=cleaned[0] if single else cleaned,
                   overflow=overflow[0] if single else overflow)
