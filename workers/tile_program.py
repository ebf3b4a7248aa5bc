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

from ._mesh_spline import mesh_to_pixel_operator
from .difference import MIN_MATCH_SIGMA, blurred_noise_factor, match_kernel_sigma

__all__ = ["background", "gaussian_blur", "normalized_triplet", "warp_reference"]


def _nanmedian(x: torch.Tensor) -> torch.Tensor:
    """Median over the last axis ignoring NaN, the mean of the two middle values as numpy does."""
    ordered, _ = torch.sort(x, dim=-1)  # NaN sort last
    n = (~torch.isnan(x)).sum(dim=-1, keepdim=True)
    lo = ((n - 1).clamp(min=0) // 2).to(torch.int64)
    hi = (n // 2).clamp(max=x.shape[-1] - 1).to(torch.int64)
    med = 0.5 * (ordered.gather(-1, lo) + ordered.gather(-1, hi))
    return torch.where(n > 0, med, torch.full_like(med, float("nan")))


def _clipped_stats(blocks: torch.Tensor, nsigma: float, max_iters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Iterative clipping about the median, as the CPU version does, with one sort per mesh.

    Keeping ``|x - median| <= nsigma * std`` keeps a contiguous run of the sorted values, so
    every pass is a median read at two indices, mean and variance from prefix sums, and two
    binary searches, instead of a new sort of the whole mesh.
    """
    ordered, _ = torch.sort(blocks, dim=-1)  # NaN sort last
    n_valid = (~torch.isnan(blocks)).sum(dim=-1, keepdim=True)
    finite = torch.nan_to_num(ordered, nan=0.0)
    zero = torch.zeros_like(finite[..., :1])
    c1 = torch.cat([zero, finite.cumsum(-1)], dim=-1)
    c2 = torch.cat([zero, (finite * finite).cumsum(-1)], dim=-1)
    searchable = torch.nan_to_num(ordered, nan=float("inf")).contiguous()
    lo, hi = torch.zeros_like(n_valid), n_valid.clone()
    last = ordered.shape[-1] - 1

    def stats(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = (hi - lo).clamp(min=1)
        med = 0.5 * (ordered.gather(-1, (lo + (n - 1) // 2).clamp(max=last)) + ordered.gather(-1, (lo + n // 2).clamp(max=last)))
        mean = (c1.gather(-1, hi) - c1.gather(-1, lo)) / n
        var = ((c2.gather(-1, hi) - c2.gather(-1, lo)) / n - mean * mean).clamp(min=0.0)
        empty = hi <= lo
        nan = torch.full_like(med, float("nan"))
        return torch.where(empty, nan, med), torch.where(empty, nan, mean), torch.where(empty, nan, var.sqrt())

    for _ in range(max_iters):
        med, _, std = stats(lo, hi)
        new_lo = torch.maximum(torch.searchsorted(searchable, med - nsigma * std, side="left"), lo)
        new_hi = torch.minimum(torch.searchsorted(searchable, med + nsigma * std, side="right"), hi)
        new_lo = torch.where(torch.isnan(med), lo, new_lo)
        new_hi = torch.where(torch.isnan(med), hi, new_hi)
        # On a GPU, asking whether every mesh has converged would stall the host each pass;
        # running the remaining passes instead changes nothing once the ranges stop moving.
        if blocks.device.type == "cpu" and bool(((new_lo == lo) & (new_hi == hi)).all()):
            break
        lo, hi = new_lo, new_hi
    return stats(lo, hi)


def background(images: torch.Tensor, *, mask: torch.Tensor | None = None, mesh: int = 64, filter_size: int = 3,
               nsigma: float = 3.0, max_iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Background level and noise at every pixel, batched (see `skyblink.workers.estimate_background`).

    Parameters
    ----------
    images : (B, H, W) float tensor
    mask : (B, H, W) bool tensor, optional
        True where pixels are ignored.

    Returns
    -------
    level, rms : (B, H, W) float32 tensors
    """
    b, h, w = images.shape
    gy, gx = -(-h // mesh), -(-w // mesh)
    data = images.to(torch.float64)
    if mask is not None:
        data = data.masked_fill(mask, float("nan"))
    data = F.pad(data, (0, gx * mesh - w, 0, gy * mesh - h), value=float("nan"))
    blocks = data.reshape(b, gy, mesh, gx, mesh).permute(0, 1, 3, 2, 4).reshape(b, gy * gx, mesh * mesh)
    med, mean, std = _clipped_stats(blocks, nsigma, max_iters)
    skew = (mean - med).abs() / torch.where(std > 0, std, torch.full_like(std, float("inf")))
    level = torch.where(skew < 0.3, 2.5 * med - 1.5 * mean, med).reshape(b, gy, gx)
    rms = std.reshape(b, gy, gx)
    grids = []
    for grid in (level, rms):
        fill = _nanmedian(grid.reshape(b, 1, -1)).reshape(b, 1, 1)
        grid = torch.where(torch.isnan(grid), fill, grid)
        if filter_size > 1:
            pad = filter_size // 2
            padded = F.pad(grid[:, None], (pad, pad, pad, pad), mode="replicate")[:, 0]
            windows = padded.unfold(1, filter_size, 1).unfold(2, filter_size, 1).reshape(b, gy, gx, -1)
            grid = _nanmedian(windows)[..., 0]
        grids.append(grid)
    ay = torch.tensor(mesh_to_pixel_operator(gy, mesh, h), dtype=torch.float64, device=images.device)
    ax = torch.tensor(mesh_to_pixel_operator(gx, mesh, w), dtype=torch.float64, device=images.device)
    level_px = (ay @ grids[0] @ ax.T).to(torch.float32)
    rms_px = (ay @ grids[1] @ ax.T).to(torch.float32).clamp(min=1e-6)
    return level_px, rms_px


def gaussian_blur(images: torch.Tensor, sigma: float, *, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur with edge replication, as ``scipy.ndimage.gaussian_filter(mode="nearest")``."""
    if sigma <= 0:
        return images
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    out = F.pad(images[:, None], (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]


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


def _blur(image: torch.Tensor, rms: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    if sigma < MIN_MATCH_SIGMA:
        return image, rms
    return gaussian_blur(image, sigma), rms * blurred_noise_factor(sigma)


def normalized_triplet(science: torch.Tensor, reference_on_grid: torch.Tensor, *, science_fwhm_px: float,
                       reference_fwhm_px: float, scale: float = 1.0, science_mask: torch.Tensor | None = None,
                       mesh: int = 64) -> torch.Tensor:
    """
    The detector input for a batch of tiles (see `skyblink.workers.normalized_triplet`).

    Parameters
    ----------
    science : (B, H, W) tensor
        Raw science pixels; 16-bit data is converted on the device.
    reference_on_grid : (B, H, W) float tensor
        From `warp_reference` (NaN where not covered).

    Returns
    -------
    (B, 3, H, W) float32 tensor
    """
    sci = science.to(torch.float32)
    covered = ~torch.isnan(reference_on_grid)
    ref = reference_on_grid.to(torch.float32) * scale
    sci_level, sci_rms = background(sci, mask=science_mask, mesh=mesh)
    ref_level, ref_rms = background(ref, mesh=mesh)
    sci_sub = sci - sci_level
    ref_sub = torch.where(covered, ref - ref_level, torch.zeros_like(ref))
    s_sci, s_ref = match_kernel_sigma(science_fwhm_px, reference_fwhm_px)
    sci_m, sci_rms = _blur(sci_sub, sci_rms, s_sci)
    ref_m, ref_rms = _blur(ref_sub, ref_rms, s_ref)
    diff_rms = torch.sqrt(sci_rms * sci_rms + ref_rms * ref_rms)
    out = torch.stack([sci_m / sci_rms, ref_m / ref_rms, (sci_m - ref_m) / diff_rms], dim=1)
    out = torch.where(covered[:, None], out, torch.zeros_like(out))
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def as_tensor(array: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """A numpy array as a tensor on ``device`` (uint16 goes through int32: torch has no uint16 math)."""
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
