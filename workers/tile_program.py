"""
The per-tile program in torch: the same steps as the CPU functions of this package
(`estimate_background`, `warp`, `normalized_triplet`), on batches of tiles on any torch device.

Each function takes and returns device tensors, so a worker chains them on its compute stream
without host round trips: raw 16-bit science pixels in, the detector's (B, 3, H, W) input out.
They reproduce the numpy versions (the tests compare them) so that training, the CPU path and
the GPU path see the same data.

Notes
-----
Shapes: images are (B, H, W); H and W need not be multiples of the mesh (padding with NaN, as
the CPU version does). Not thread-safe per stream; allocates only temporaries.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from . import background as _bg
from .difference import MIN_MATCH_SIGMA, blurred_noise_factor, match_kernel_sigma
from .fused import fused
from .psf_match_tensor import (
    kernel_fit_pixels,
    kernel_match_tensor,
    solve_kernel_tensor,
    source_pixels_tensor,
)

__all__ = [
    "background",
    "background_operators",
    "blur_taps",
    "gaussian_blur",
    "gaussian_taps",
    "gaussian_triplet",
    "kernel_match_inputs",
    "kernel_triplet",
    "normalized_triplet",
    "psf_match_taps",
    "solve_kernel_tensor",
    "source_pixels_tensor",
    "warp_reference",
]


@fused
def _mesh_histograms(data: torch.Tensor, usable: torch.Tensor, mesh: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The per-pixel part of `_mesh_statistics`: each mesh's clipped moments and its histogram (one pass over the pixels)."""
    b, h, w = data.shape
    bh, bw = mesh
    gy, gx = -(-h // bh), -(-w // bw)
    pad = (0, gx * bw - w, 0, gy * bh - h)
    x = F.pad(data, pad, value=0.0).reshape(b, gy, bh, gx, bw)
    ok = F.pad(usable, pad, value=False).reshape(b, gy, bh, gx, bw)
    x64 = torch.where(ok, x, torch.zeros_like(x)).to(torch.float64)
    heights = torch.clamp(h - torch.arange(gy, device=data.device) * bh, max=bh)
    widths = torch.clamp(w - torch.arange(gx, device=data.device) * bw, max=bw)
    area = (heights[:, None] * widths[None, :]).to(torch.float32)

    def per_mesh(values: torch.Tensor) -> torch.Tensor:
        return values.sum(dim=(2, 4))

    def spread(values: torch.Tensor) -> torch.Tensor:
        return values[:, :, None, :, None]

    n1 = per_mesh(ok.to(torch.float64))
    bad = n1.to(torch.float32) < area * _bg.MIN_GOOD_FRACTION
    mean = per_mesh(x64) / n1
    var = per_mesh(x64 * x64) / n1 - mean * mean
    sigma = torch.where(var > 0, var, torch.zeros_like(var)).sqrt()
    lcut = (mean - _bg.PRECLIP_NSIGMA * sigma).to(torch.float32)
    hcut = (mean + _bg.PRECLIP_NSIGMA * sigma).to(torch.float32)
    keep = ok & (x >= spread(lcut)) & (x <= spread(hcut))
    n2 = per_mesh(keep.to(torch.float64))
    bad |= n2 == 0
    kept = torch.where(keep, x64, torch.zeros_like(x64))
    mean = per_mesh(kept) / n2
    var = per_mesh(kept * kept) / n2 - mean * mean
    sigma = torch.where(var > 0, var, torch.zeros_like(var)).sqrt()
    mean = torch.where(bad, torch.zeros_like(mean), mean)
    sigma = torch.where(bad, torch.zeros_like(sigma), sigma)
    nlevels = torch.clamp((_bg.HISTOGRAM_STEP * n2 + 1.0).to(torch.int64), max=_bg.HISTOGRAM_MAX_LEVELS)
    nlevels = torch.where(bad, torch.ones_like(nlevels), nlevels)
    qscale = torch.where(sigma > 0, 2.0 * _bg.HISTOGRAM_NSIGMA * sigma / nlevels, torch.ones_like(sigma)).to(torch.float32)
    qzero = (mean - _bg.HISTOGRAM_NSIGMA * sigma).to(torch.float32)
    cste = (0.499999 - (qzero / qscale).to(torch.float64)).to(torch.float32)

    # Histogram of every usable pixel, bins as SEP truncates them (float32 arithmetic).
    n_bins = min(_bg.HISTOGRAM_MAX_LEVELS, int(_bg.HISTOGRAM_STEP * bh * bw + 1.0))
    level = x / spread(qscale) + spread(cste)
    inside = ok & (level > -1.0) & (level < spread(nlevels)) & ~spread(bad)
    rows = torch.arange(b * gy * gx, device=data.device).reshape(b, gy, gx)
    index = spread(rows) * n_bins + torch.where(inside, level, torch.zeros_like(level)).to(torch.int64)
    trash = b * gy * gx * n_bins
    index = torch.where(inside, index, torch.full_like(index, trash))
    # scatter-add, not bincount: CUDA's bincount reads the largest index back to the host.
    histo = torch.zeros(trash + 1, dtype=torch.int32, device=data.device)
    histo.index_add_(0, index.reshape(-1), torch.ones(1, dtype=torch.int32, device=data.device).expand(index.numel()))
    histo = histo[:trash].reshape(b * gy * gx, n_bins)
    return histo, nlevels, mean, qscale, qzero, bad


def _mesh_statistics(data: torch.Tensor, usable: torch.Tensor, mesh: tuple[int, int], nsigma: float,
                     max_iters: int, passes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mesh background and sigma (float32, NaN for bad meshes), (B, gy, gx) each; see `_bg`."""
    b, h, w = data.shape
    gy, gx = -(-h // mesh[0]), -(-w // mesh[1])
    histo, nlevels, mean, qscale, qzero, bad = _mesh_histograms(data, usable, mesh)
    mode, clipped = _histogram_mode(histo, nlevels.reshape(-1), mean.to(torch.float32).reshape(-1), nsigma, max_iters,
                                    passes)
    back = (qzero.reshape(-1).to(torch.float64) + mode * qscale.reshape(-1)).to(torch.float32)
    rms = (clipped * qscale.reshape(-1)).to(torch.float32)
    nan = torch.full_like(back, float("nan"))
    flat_bad = bad.reshape(-1)
    return (torch.where(flat_bad, nan, back).reshape(b, gy, gx), torch.where(flat_bad, nan, rms).reshape(b, gy, gx))


def _histogram_mode(histo: torch.Tensor, nlevels: torch.Tensor, mean: torch.Tensor, nsigma: float,
                    max_iters: int, passes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    SEP's ``backguess`` on every histogram row at once (the numpy version's rules, in torch).

    The cumulative counts, first and second moments are one (3, rows, bins + 1) float64 table
    (exact integers), so a pass reads both window ends of all three with one gather and finds the
    median bin with one ``searchsorted``; the state of every row is two packed tensors.
    Eagerly a pass is about 55 small operations, which is what it costs on a GPU (launches, not
    arithmetic); compiled (CUDA), a few kernels.

    With ``passes`` given, exactly that many passes run and nothing asks the host whether they
    converged (a CUDA graph can hold them); on CUDA each pass is compiled (`_histogram_pass`);
    passes after a mesh converged leave it unchanged.
    """
    table, pair, padded, bounds, state = _histogram_tables(histo, nlevels, mean)
    consts = _pass_constants(bounds)
    for it in range(max_iters if passes is None else passes):
        # A convergence test costs a host sync on a GPU: ask every pass on the CPU, every 8th on a GPU
        # (simulated frames converge within 7 passes, real ones within 24); passes after convergence
        # change nothing.
        if (passes is None and (histo.device.type == "cpu" or (it > 0 and it % 8 == 0))
                and not bool(_histogram_active(state).any())):
            break
        bounds, state = _histogram_pass(table, pair, padded, bounds, state, *consts, nsigma=float(nsigma))
    return _histogram_result(state)


@fused
def _histogram_tables(histo: torch.Tensor, nlevels: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """
    The tables a pass reads and the initial state: (3, rows, bins + 1) float64 cumulative counts,
    first and second moments (exact integers); the (rows, bins) pair sums ``C[p] + C[p + 1]`` (nondecreasing); the
    counts with their edge bins repeated (a clamped lookup is a gather at ``index + 1``); the
    window ``[lo, hi]`` (rows, 2) int64; and ``[sig, sig_prev, mean, median]`` (rows, 4) float64.
    Fused on CUDA: built operation by operation the tables cost 3.3 ms a batch of 16 tiles on an
    H100 (8,192 rows of 4,085 bins, about 5 GB of float64 traffic), most of the backgrounds' time.
    """
    n_rows, n_bins = histo.shape
    f64 = torch.float64
    bins = torch.arange(n_bins, device=histo.device, dtype=f64)
    counts = histo.to(f64)
    # Integers, exact in float64: the second moment of a full 64x64 mesh is below 4096**3 < 2**53.
    table = F.pad(torch.stack([counts, counts * bins, counts * bins * bins]).cumsum(2), (1, 0))
    c0 = table[0]
    pair = c0[:, :-1] + c0[:, 1:]
    padded = torch.cat([counts[:, :1], counts, counts[:, -1:]], dim=1)
    top = (nlevels - 1).to(torch.int64)
    bounds = torch.stack([torch.zeros_like(top), top], dim=1)
    mea = mean.to(torch.float64)
    state = torch.stack([10.0 * top.to(torch.float64), torch.ones_like(mea), mea, mea], dim=1)
    return table, pair, padded, bounds, state


def _pass_constants(bounds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """
    Tensors every pass uses: the window-end shift ``[0, 1]``, the signs ``[-1, +1]``, 0.5, and the
    initial window ``[0, top]`` (float64), which is also where a bound falls back to.
    """
    # Made on the device (no copy from the host): a CUDA graph captures these calls too.
    device = bounds.device
    shift = torch.arange(2, dtype=torch.int64, device=device)[None]
    signs = shift.to(torch.float64) * 2.0 - 1.0
    half = torch.full((1, 2), 0.5, dtype=torch.float64, device=device)
    return shift, signs, half, bounds.to(torch.float64)


def _histogram_active(state: torch.Tensor) -> torch.Tensor:
    """Rows whose sigma has not converged (SEP's test, before each pass)."""
    sig, sig_prev = state[:, 0], state[:, 1]
    return (sig >= _bg.MIN_SIGMA_BINS) & ((sig / sig_prev - 1.0).abs() > _bg.CONVERGED)


@fused
def _histogram_pass(table: torch.Tensor, pair: torch.Tensor, padded: torch.Tensor, bounds: torch.Tensor,
                    state: torch.Tensor, shift: torch.Tensor, signs: torch.Tensor, half: torch.Tensor,
                    fallback: torch.Tensor, *, nsigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One pass of `_histogram_mode` on the rows not yet converged: the numpy version's arithmetic,
    value for value (one or a few kernels on CUDA: compiled once per shape and reused by every pass).

    The window stays inside the table (``0 <= lo <= bins``, ``-1 <= hi <= top``), so its ends
    need no clamping; sums over an empty window (``hi < lo``) are zero, as numpy's.
    """
    active = _histogram_active(state)
    f64 = torch.float64
    n_bins = pair.shape[1]
    lo, hi = bounds[:, 0], bounds[:, 1]
    nonempty = hi >= lo
    at = table.gather(2, (bounds + shift)[None].expand(3, -1, -1))  # (3, rows, 2): C, S1, S2 at lo and hi + 1
    sums = (at[:, :, 1] - at[:, :, 0]) * nonempty  # count, s1, s2 of the window
    p = torch.searchsorted(pair, (at[0, :, 1] + at[0, :, 0])[:, None])[:, 0]
    p = torch.where(nonempty, p.clamp(lo, hi), lo)
    high_ptr = torch.where(nonempty, p - 1, hi)
    low_sum = (table[0].gather(1, p[:, None])[:, 0] - at[0, :, 0]) * nonempty
    peak = padded.gather(1, torch.stack([p, high_ptr], dim=1) + 1).amax(dim=1)
    # Integers are exact in float64, so these are numpy's values (2 * peak and total - 2 * low_sum exact too).
    total = sums[0]
    step = (total - 2.0 * low_sum) / (2.0 * peak)
    new_med = torch.where(high_ptr >= 0, high_ptr.to(f64) + 0.5 + step, 0.0)
    moments = torch.where(total > 0, sums[1:] / total, 0.0)  # mean, mean of squares
    new_mea = moments[0]
    new_sig = (moments[1] - new_mea * new_mea).clamp(min=0.0).sqrt()
    # [low, high] = median -+ nsigma sigma, rounded half away from zero (SEP), kept inside [-1, bins];
    # low only where > 0 (else 0), high only where < top (else top): ``-low < 0`` and ``high < top``
    # against the fallback window [0, top] (NaN compares False and falls back, as in numpy).
    ends = new_med[:, None] + (nsigma * new_sig)[:, None] * signs
    rounded = (ends + torch.copysign(half, ends)).clamp(-1.0, float(n_bins))
    new_bounds = torch.where(ends * signs < fallback, rounded, fallback).to(torch.int64)
    new_state = torch.stack([new_sig, state[:, 0], new_mea, new_med], dim=1)
    keep = active[:, None]
    return torch.where(keep, new_bounds, bounds), torch.where(keep, new_state, state)


def _histogram_result(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SEP's mode estimate and the clipped sigma (bin units) from the final state."""
    sig, mea, med = state[:, 0], state[:, 2], state[:, 3]
    skewed = ((mea - med) / sig).abs() >= _bg.SKEW_LIMIT
    mode = torch.where(sig > 0, torch.where(skewed, med, 2.5 * med - 1.5 * mea), mea)
    return mode, sig


def _fill_bad_meshes(level: torch.Tensor, rms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bad (NaN) meshes take the mean of the nearest good meshes of their image; (0, 1) when none is good."""
    b, gy, gx = level.shape
    if level.device.type == "cpu" and not bool(torch.isnan(level).any()):
        return level, rms  # nothing to fill (asked on the CPU only: on a GPU it would cost a host sync)
    iy, ix = torch.meshgrid(torch.arange(gy, device=level.device), torch.arange(gx, device=level.device), indexing="ij")
    iy, ix = iy.reshape(-1), ix.reshape(-1)
    d2 = ((iy[:, None] - iy[None, :]) ** 2 + (ix[:, None] - ix[None, :]) ** 2).to(torch.float32)
    flat_level, flat_rms = level.reshape(b, -1), rms.reshape(b, -1)
    good = ~torch.isnan(flat_level)
    dist = torch.where(good[:, None, :], d2[None], torch.full_like(d2[None], float("inf")))
    nearest = (dist == dist.amin(dim=2, keepdim=True)) & good[:, None, :]
    count = nearest.sum(dim=2).to(torch.float32)
    zero = torch.zeros_like(flat_level)
    fill_level = torch.where(nearest, torch.where(good, flat_level, zero)[:, None, :], zero[:, None, :]).sum(dim=2) / count
    fill_rms = torch.where(nearest, torch.where(good, flat_rms, zero)[:, None, :], zero[:, None, :]).sum(dim=2) / count
    none = ~good.any(dim=1, keepdim=True)
    fill_level = torch.where(none, zero, fill_level)
    fill_rms = torch.where(none, torch.ones_like(fill_rms), fill_rms)
    bad = ~good
    return (torch.where(bad, fill_level, flat_level).reshape(b, gy, gx),
            torch.where(bad, fill_rms, flat_rms).reshape(b, gy, gx))


def _median_filter(level: torch.Tensor, rms: torch.Tensor, filter_size: tuple[int, int],
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SEP's median filter with windows shrinking symmetrically at the grid edges (see `_bg`)."""
    b, gy, gx = level.shape
    hy, hx = filter_size[0] // 2, filter_size[1] // 2
    device = level.device
    ay, ax = torch.arange(gy, device=device), torch.arange(gx, device=device)
    ry = torch.minimum(ay, gy - 1 - ay).clamp(max=hy)
    rx = torch.minimum(ax, gx - 1 - ax).clamp(max=hx)
    dy = torch.arange(-hy, hy + 1, device=device).abs()
    dx = torch.arange(-hx, hx + 1, device=device).abs()
    outside = (dy[None, None, :, None] > ry[:, None, None, None]) | (dx[None, None, None, :] > rx[None, :, None, None])
    outside = outside.reshape(gy, gx, -1)
    middle = ((2 * ry[:, None] + 1) * (2 * rx[None, :] + 1) // 2)[None, :, :, None].expand(b, gy, gx, 1)

    def med(grid: torch.Tensor) -> torch.Tensor:
        padded = F.pad(grid, (hx, hx, hy, hy), value=float("nan"))
        windows = padded.unfold(1, 2 * hy + 1, 1).unfold(2, 2 * hx + 1, 1).reshape(b, gy, gx, -1)
        windows = windows.masked_fill(outside[None], float("nan"))
        ordered, _ = torch.sort(windows, dim=-1)  # NaN sort last
        return ordered.gather(-1, middle)[..., 0]

    med_level, med_rms = med(level), med(rms)
    replace = (med_level - level).abs() >= threshold
    return torch.where(replace, med_level, level), torch.where(replace, med_rms, rms)


def background(images: torch.Tensor, *, mask: torch.Tensor | None = None, mesh: int | tuple[int, int] = 64,
               filter_size: int | tuple[int, int] = 3, filter_threshold: float = 0.0, nsigma: float = 3.0,
               max_iters: int = 100, passes: int | None = None,
               operators: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Background level and noise at every pixel, batched: SEP's rules, as `skyblink.workers.estimate_background`.

    Parameters
    ----------
    images : (B, H, W) tensor
        Pixels, used as float32 (as SEP does); non-finite pixels are ignored.
    mask : (B, H, W) bool tensor, optional
        True where pixels are ignored.
    mesh, filter_size, filter_threshold, nsigma, max_iters
        As in `skyblink.workers.estimate_background`.
    passes : int, optional
        Run exactly this many histogram passes (at most ``max_iters``) without asking the host
        whether every mesh converged: no host synchronisation, as a CUDA graph needs. The same
        result as ``None`` when every mesh converges within ``passes``.
    operators : (ay, ax) float64 tensors, optional
        `background_operators` for this shape and mesh, made once (default: made here, a
        host-to-device copy each call).

    Returns
    -------
    level, rms : (B, H, W) float32 tensors
        Equal to the numpy version's to float32 rounding; ``rms`` is at least 1e-6.

    Notes
    -----
    Experimental. On a GPU, the histogram iterations ask whether every mesh has converged every
    8th pass only, a host sync each time: one per call on simulated frames (they converge within
    7 passes), up to three on real ones (24 passes measured on a Spitzer mosaic); the histogram
    is built with a scatter-add (no sync). The cost on a GPU is mostly kernel launches, so call
    it once for as many tiles as possible (`normalized_triplet` passes science and reference
    together).
    """
    b, h, w = images.shape
    mesh_yx = _bg.as_pair(mesh, "mesh", 4)
    filter_yx = _bg.as_pair(filter_size, "filter_size", 1)
    data = images.to(torch.float32)
    usable = torch.isfinite(data)
    if mask is not None:
        usable &= ~mask.to(torch.bool)
    level, rms = _mesh_statistics(data, usable, mesh_yx, nsigma, max_iters, None if passes is None else min(passes, max_iters))
    level, rms = _fill_bad_meshes(level, rms)
    level, rms = _median_filter(level, rms, filter_yx, filter_threshold)
    ay, ax = background_operators(h, w, mesh_yx, images.device) if operators is None else operators
    return _spline(level, rms, ay, ax)


@fused
def _spline(level: torch.Tensor, rms: torch.Tensor, ay: torch.Tensor, ax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mesh grids mapped to pixels (float64 products, float32 maps; the rms at least 1e-6)."""
    level_px = (ay @ level.to(torch.float64) @ ax.T).to(torch.float32)
    rms_px = (ay @ rms.to(torch.float64) @ ax.T).to(torch.float32).clamp(min=1e-6)
    return level_px, rms_px


def background_operators(height: int, width: int, mesh: int | tuple[int, int],
                         device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """
    The spline operators (``ay`` (H, gy), ``ax`` (W, gx), float64) that `background` maps its mesh
    grid to pixels with (`skyblink.workers.background.spline_operator`), on ``device``.
    """
    bh, bw = _bg.as_pair(mesh, "mesh", 4)
    gy, gx = -(-height // bh), -(-width // bw)
    ay = torch.tensor(_bg.spline_operator(gy, bh, height, axis="y"), dtype=torch.float64, device=device)
    ax = torch.tensor(_bg.spline_operator(gx, bw, width, axis="x", curved=gy > 1), dtype=torch.float64, device=device)
    return ay, ax


def gaussian_taps(sigma: float, *, truncate: float = 4.0, radius: int | None = None,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """
    The unit-sum 1-D Gaussian of ``scipy.ndimage.gaussian_filter`` (radius ``int(truncate * sigma + 0.5)``),
    zero-padded to ``radius`` taps either side when given; a unit impulse when ``sigma <= 0``.

    Returns
    -------
    (2 * radius + 1,) float32 tensor on ``device``

    Raises
    ------
    ValueError
        If ``radius`` is smaller than the Gaussian's own.
    """
    own = int(truncate * sigma + 0.5) if sigma > 0 else 0
    radius = own if radius is None else radius
    if radius < own:
        msg = f"radius {radius} is smaller than the Gaussian's {own} (sigma {sigma}, truncate {truncate})"
        raise ValueError(msg)
    taps = np.zeros(2 * radius + 1)
    if sigma > 0:
        x = np.arange(-own, own + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (x / sigma) ** 2)
        taps[radius - own : radius + own + 1] = kernel / kernel.sum()
    else:
        taps[radius] = 1.0
    return torch.tensor(taps, dtype=torch.float32, device=device)


def blur_taps(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """
    Separable blur of (B, H, W) ``images`` by the 1-D ``taps`` along x then y, edges replicated
    (``scipy.ndimage.correlate1d(mode="nearest")`` twice).

    Written as a sum of shifted views so that a compiler fuses each axis into one kernel, and
    ``taps`` is a tensor so that one compiled program serves every PSF: zero taps (the padding of
    `gaussian_taps`) add nothing, not even a NaN beyond the Gaussian's own radius.
    """
    r = (taps.shape[0] - 1) // 2
    h, w = images.shape[-2:]

    def along(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
        pad = (r, r, 0, 0) if dim == 2 else (0, 0, r, r)
        p = F.pad(x[:, None], pad, mode="replicate")[:, 0]
        out = torch.zeros_like(x)
        for k in range(2 * r + 1):
            view = p.narrow(dim, k, n)
            out = out + torch.where(taps[k] != 0, view * taps[k], torch.zeros_like(view))
        return out

    return along(along(images, 2, w), 1, h)


def gaussian_blur(images: torch.Tensor, sigma: float, *, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur with edge replication, as ``scipy.ndimage.gaussian_filter(mode="nearest")``."""
    if sigma <= 0:
        return images
    return blur_taps(images, gaussian_taps(sigma, truncate=truncate, device=images.device).to(images.dtype))


def warp_reference(reference: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """
    Sample a reference at the (x, y) positions of ``grid`` bilinearly (GridSample); NaN outside.

    Parameters
    ----------
    reference : (Hr, Wr) float tensor
        One reference CCD, resident on the device for the whole field.
    grid : (B, 2, H, W) float tensor
        Reference pixel coordinates (x, y) from `skyblink.workers.sampling_grid`.
    """
    hr, wr = reference.shape
    x, y = grid[:, 0], grid[:, 1]
    norm = torch.stack([2.0 * x / (wr - 1) - 1.0, 2.0 * y / (hr - 1) - 1.0], dim=-1)
    ref = reference.to(torch.float32)[None, None].expand(grid.shape[0], 1, hr, wr)
    out = F.grid_sample(ref, norm.to(torch.float32), mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    inside = (x >= 0) & (x <= wr - 1) & (y >= 0) & (y <= hr - 1)
    return torch.where(inside, out, torch.full_like(out, float("nan")))


def psf_match_taps(science_fwhm_px: float, reference_fwhm_px: float, *, radius: int | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """
    The Gaussian PSF match of two images (`skyblink.workers.difference.match_kernel_sigma`) as blur
    taps: (science taps, reference taps, science noise factor, reference noise factor). The
    sharper image's taps are the matching Gaussian and its noise shrinks by
    `blurred_noise_factor`; the other's (and one matched within `MIN_MATCH_SIGMA`) are a unit
    impulse with factor 1. ``radius`` pads both to that many taps either side (`gaussian_taps`).
    """
    out: list[torch.Tensor | float] = []
    factors = []
    for sigma in match_kernel_sigma(science_fwhm_px, reference_fwhm_px):
        matched = sigma >= MIN_MATCH_SIGMA
        out.append(gaussian_taps(sigma if matched else 0.0, radius=radius, device=device))
        factors.append(blurred_noise_factor(sigma) if matched else 1.0)
    return out[0], out[1], factors[0], factors[1]  # type: ignore[return-value]


def _backgrounds(sci: torch.Tensor, reference_on_grid: torch.Tensor, scale: float | torch.Tensor,
                 science_mask: torch.Tensor | None, mesh: int, passes: int | None,
                 operators: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """(covered, science mask, scaled reference, level (2B, H, W), rms (2B, H, W)): science first."""
    covered = ~torch.isnan(reference_on_grid)
    ref = reference_on_grid.to(torch.float32) * scale
    sci_mask = ~covered if science_mask is None else (science_mask | ~covered)  # as the numpy version
    # One background call for both images: half the kernel launches and host syncs of two.
    level, rms = background(torch.cat([sci, ref]), mask=torch.cat([sci_mask, torch.zeros_like(sci_mask)]), mesh=mesh,
                            passes=passes, operators=operators)
    return covered, sci_mask, ref, level, rms


def _subtracted(sci: torch.Tensor, ref: torch.Tensor, level: torch.Tensor, rms: torch.Tensor,
                covered: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Both images background-subtracted: (sci, sci rms, ref, ref rms)."""
    b = sci.shape[0]
    sci_sub = sci - level[:b]
    ref_sub = torch.where(covered, ref - level[b:], torch.zeros_like(ref))
    return sci_sub, rms[:b], ref_sub, rms[b:]


@fused
def _gaussian_matched(sci: torch.Tensor, ref: torch.Tensor, level: torch.Tensor, rms: torch.Tensor, covered: torch.Tensor,
                      sci_taps: torch.Tensor, ref_taps: torch.Tensor, sci_factor: float | torch.Tensor,
                      ref_factor: float | torch.Tensor) -> torch.Tensor:
    """Subtract, blur, normalise: the per-pixel tail of `gaussian_triplet` (fused on CUDA)."""
    sci_sub, sci_rms, ref_sub, ref_rms = _subtracted(sci, ref, level, rms, covered)
    return _normalised(blur_taps(sci_sub, sci_taps), sci_rms * sci_factor, blur_taps(ref_sub, ref_taps),
                       ref_rms * ref_factor, covered)


def _normalised(sci_m: torch.Tensor, sci_rms: torch.Tensor, ref_m: torch.Tensor, ref_rms: torch.Tensor,
                covered: torch.Tensor) -> torch.Tensor:
    diff_rms = torch.sqrt(sci_rms * sci_rms + ref_rms * ref_rms)
    out = torch.stack([sci_m / sci_rms, ref_m / ref_rms, (sci_m - ref_m) / diff_rms], dim=1)
    out = torch.where(covered[:, None], out, torch.zeros_like(out))
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def gaussian_triplet(science: torch.Tensor, reference_on_grid: torch.Tensor, *, scale: float | torch.Tensor,
                     science_mask: torch.Tensor | None, taps: tuple[torch.Tensor, torch.Tensor],
                     noise_factors: tuple[float | torch.Tensor, float | torch.Tensor], mesh: int = 64,
                     passes: int | None = None, operators: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """
    `normalized_triplet` with a Gaussian PSF match given as blur taps (`psf_match_taps`): every
    per-field number a tensor or a float, so that one compiled program serves every field.

    ``passes`` and ``operators`` go to `background` (fixed histogram passes, no host sync).

    Returns
    -------
    (B, 3, H, W) float32 tensor
    """
    sci = science.to(torch.float32)
    covered, _, ref, level, rms = _backgrounds(sci, reference_on_grid, scale, science_mask, mesh, passes, operators)
    return _gaussian_matched(sci, ref, level, rms, covered, taps[0], taps[1], noise_factors[0], noise_factors[1])


def normalized_triplet(science: torch.Tensor, reference_on_grid: torch.Tensor, *, science_fwhm_px: float,
                       reference_fwhm_px: float, scale: float | torch.Tensor = 1.0, science_mask: torch.Tensor | None = None,
                       mesh: int = 64, psf_match: str = "gaussian", passes: int | None = None,
                       operators: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """
    The detector input for a batch of tiles (see `skyblink.workers.normalized_triplet`).

    Parameters
    ----------
    science : (B, H, W) tensor
        Raw science pixels; 16-bit data is converted on the device.
    reference_on_grid : (B, H, W) float tensor
        From `warp_reference` (NaN where not covered).
    psf_match : {"gaussian", "kernel"}
        As `skyblink.workers.difference.matched_difference`: ``"kernel"`` solves a kernel per
        cell of about 80 pixels on the tile's sources, blended bilinearly
        (`skyblink.workers.psf_match_tensor.kernel_match_tensor`, one host read per batch), a tile
        with too few falling back to the Gaussian.
    passes, operators
        As `gaussian_triplet` (fixed histogram passes: no host sync in the backgrounds).

    Returns
    -------
    (B, 3, H, W) float32 tensor
    """
    sci_taps, ref_taps, sci_factor, ref_factor = psf_match_taps(science_fwhm_px, reference_fwhm_px, device=science.device)
    if psf_match != "kernel":
        return gaussian_triplet(science, reference_on_grid, scale=scale, science_mask=science_mask,
                                taps=(sci_taps, ref_taps), noise_factors=(sci_factor, ref_factor), mesh=mesh,
                                passes=passes, operators=operators)
    parts = kernel_match_inputs(science, reference_on_grid, science_fwhm_px=science_fwhm_px,
                                reference_fwhm_px=reference_fwhm_px, scale=scale, science_mask=science_mask, mesh=mesh,
                                passes=passes, operators=operators)
    sci, sci_rms, ref, ref_rms, covered, usable, fit = parts
    *matched, solved = kernel_match_tensor(sci, sci_rms, ref, ref_rms, covered, usable, science_fwhm_px, reference_fwhm_px,
                                           fit=fit)
    return kernel_triplet(sci, sci_rms, ref, ref_rms, covered, matched=matched, solved=solved, taps=(sci_taps, ref_taps),
                          noise_factors=(sci_factor, ref_factor))


def kernel_match_inputs(science: torch.Tensor, reference_on_grid: torch.Tensor, *, science_fwhm_px: float,
                        reference_fwhm_px: float, scale: float | torch.Tensor, science_mask: torch.Tensor | None,
                        mesh: int = 64, passes: int | None = None,
                        operators: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """
    The solved-kernel triplet's first part, everything before the kernels' solve: both images
    background-subtracted and where the kernels are fitted. No host synchronisation with fixed
    ``passes`` (a CUDA graph captures it). Takes `normalized_triplet`'s arguments.

    Returns
    -------
    (sci, sci rms, ref, ref rms, covered, usable, fit), each (B, H, W)
        The first six are `skyblink.workers.psf_match_tensor.kernel_match_tensor`'s arguments,
        ``fit`` its fit pixels.
    """
    sci = science.to(torch.float32)
    covered, sci_mask, ref, level, rms = _backgrounds(sci, reference_on_grid, scale, science_mask, mesh, passes, operators)
    sci_sub, sci_rms, ref_sub, ref_rms = _subtracted(sci, ref, level, rms, covered)
    usable = covered & ~sci_mask
    fit = kernel_fit_pixels(sci_sub, sci_rms, ref_sub, ref_rms, usable, science_fwhm_px, reference_fwhm_px)
    return sci_sub, sci_rms, ref_sub, ref_rms, covered, usable, fit


def kernel_triplet(sci: torch.Tensor, sci_rms: torch.Tensor, ref: torch.Tensor, ref_rms: torch.Tensor,
                   covered: torch.Tensor, *, matched: list[torch.Tensor] | tuple[torch.Tensor, ...], solved: torch.Tensor,
                   taps: tuple[torch.Tensor, torch.Tensor],
                   noise_factors: tuple[float | torch.Tensor, float | torch.Tensor]) -> torch.Tensor:
    """
    The solved-kernel triplet's last part: the matched images (`kernel_match_tensor`'s four) where
    the window's kernel ``solved``, else the Gaussian match by ``taps`` (`psf_match_taps`), as the
    normalised (B, 3, H, W) float32 triplet. No host synchronisation (a CUDA graph captures it).
    """
    gaussian = (blur_taps(sci, taps[0]), sci_rms * noise_factors[0], blur_taps(ref, taps[1]), ref_rms * noise_factors[1])
    sci_m, sci_rms, ref_m, ref_rms = (torch.where(solved[:, None, None], m, g) for m, g in zip(matched, gaussian, strict=True))
    return _normalised(sci_m, sci_rms, ref_m, ref_rms, covered)


def as_tensor(array: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """A numpy array as a tensor on ``device`` (uint16 goes through int32: torch has no uint16 math)."""
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
