"""
PSF matching by solved kernels in torch: `skyblink.workers.psf_match`'s rules (the fit pixels, the
weighted, clipped least squares of a delta-function kernel, one kernel per cell of about 80 pixels
blended bilinearly) for the device program, on any torch device.

The cells' geometry (`skyblink.workers.psf_match.CellLayout`: their edges, fit regions and tent
weights) is the numpy path's own; here the least squares of every cell of a window are solved
together (batched normal equations and solves, in float64), and the blended kernel is applied as
one sum over its taps of the shifted image times that tap's weight map (the blend is linear, so
this is the numpy path's blend of per-cell convolutions, computed once per tap).

Notes
-----
Each window reads its fit pixels' counts back to the host (the cells' pixel lists differ in
length; all cells' lists are made together, from one ``nonzero``), so a kernel-matched device
program cannot be one CUDA graph. Thread-safe; no global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from . import psf_match as pm

__all__ = ["KernelGridTensor", "kernel_match_tensor", "solve_kernel_grid_tensor", "solve_kernel_tensor",
           "solve_kernels_tensor", "source_pixels_tensor"]

#: Most float64 numbers (pixels x coefficients) of the design matrices held at once when cells are solved together.
_DESIGN_BUDGET = 32_000_000


def _dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Binary dilation by the 4-connected cross, ``iterations`` times (as ``scipy.ndimage.binary_dilation``)."""
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=mask.device).view(1, 1, 3, 3)
    out = mask.to(torch.float32)[None, None]
    for _ in range(iterations):
        out = (F.conv2d(F.pad(out, (1, 1, 1, 1)), cross) > 0).to(torch.float32)
    return out[0, 0] > 0


def source_pixels_tensor(image: torch.Tensor, rms: torch.Tensor, target: torch.Tensor, target_rms: torch.Tensor,
                         usable: torch.Tensor, half_width: int) -> torch.Tensor:
    """`skyblink.workers.psf_match.source_pixels` in torch, for one (H, W) window on any device."""
    def detected(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = torch.nan_to_num(data.to(torch.float64) / noise.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
        mean = F.avg_pool2d(F.pad(z[None, None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0, 0]
        return mean * 3.0 > pm.FIT_NSIGMA

    near = _dilate(detected(image, rms) | detected(target, target_rms), half_width)
    near &= ~_dilate(~usable, half_width)
    h = half_width
    near[:h] = False
    near[-h:] = False
    near[:, :h] = False
    near[:, -h:] = False
    return near


def _median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row, the median of ``values`` where ``valid`` (numpy's: the mean of the two middle values of an even count)."""
    ordered = torch.sort(torch.where(valid, values, torch.full_like(values, float("inf"))), dim=1).values
    n = valid.sum(dim=1)
    lower = ordered.gather(1, ((n - 1) // 2).clamp(min=0)[:, None])[:, 0]
    upper = ordered.gather(1, (n // 2).clamp(max=values.shape[1] - 1)[:, None])[:, 0]
    return 0.5 * (lower + upper)


def _subsample(n: torch.Tensor, least: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    For lists of ``n`` pixels: the step `solve_kernel` keeps every one of (an even subsample
    beyond `MAX_PIXELS`), and the length kept (0 when fewer than ``least``: the kernel fails).
    """
    step = ((n + pm.MAX_PIXELS - 1) // pm.MAX_PIXELS).clamp(min=1)
    return step, torch.where(n >= least, (n + step - 1) // step, torch.zeros_like(n))


def _pixel_lists(fits: list[torch.Tensor], least: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """
    Fit masks' pixels as `solve_kernel` takes them: row-major, an even subsample beyond
    `MAX_PIXELS`, none when fewer than ``least``. Returns (ys, xs) padded to one length, (C, L)
    each, and each list's length (read back to the host).
    """
    lists = []
    for fit in fits:
        ys, xs = torch.nonzero(fit, as_tuple=True)
        step, kept = _subsample(torch.tensor(ys.numel()), least)
        lists.append((ys[:: int(step)][: int(kept)], xs[:: int(step)][: int(kept)]))
    counts = [int(ys.numel()) for ys, _ in lists]
    device = fits[0].device
    out_y = torch.zeros((len(lists), max(1, *counts)), dtype=torch.int64, device=device)
    out_x = torch.zeros_like(out_y)
    for i, (ys, xs) in enumerate(lists):
        out_y[i, : counts[i]] = ys
        out_x[i, : counts[i]] = xs
    return out_y, out_x, counts


def _grid_pixel_lists(fit: torch.Tensor, layout: pm.CellLayout, least: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """
    `_pixel_lists` of the window's fit mask and of its restriction to each cell's fit region
    (row-major cells), computed together: one ``nonzero`` for the window, and each cell's list
    picked from the run of rows its region spans (a region is a rectangle; the window's pixels
    are row-major, so a band of rows is one contiguous run). Returns the window's list first.
    """
    device = fit.device
    ys, xs = torch.nonzero(fit, as_tuple=True)
    regions = layout.fit_regions()
    n_y, n_x = layout.grid_shape
    top, bottom = (torch.tensor([getattr(r[0], end) for r in regions[::n_x]], device=device) for end in ("start", "stop"))
    columns = torch.tensor([[r[1].start, r[1].stop] for r in regions[:n_x]], device=device)  # (n_x, 2)
    first = torch.searchsorted(ys, top)
    run = torch.searchsorted(ys, bottom) - first  # pixels in each band of rows
    length = max(1, int(run.max()))
    offset = torch.arange(length, device=device)
    in_run = offset[None] < run[:, None]  # (n_y, L)
    index = (first[:, None] + offset[None]).clamp(max=max(0, ys.numel() - 1))
    band_y, band_x = (ys[index], xs[index]) if ys.numel() else (index, index)
    member = in_run[:, None] & (band_x[:, None] >= columns[None, :, 0, None]) & (band_x[:, None] < columns[None, :, 1, None])
    position = member.cumsum(dim=2, dtype=torch.int32) - 1  # (n_y, n_x, L): row-major order within the cell
    n = member.sum(dim=2, dtype=torch.int64)
    step, kept = _subsample(n, least)
    whole_step, whole_kept = _subsample(torch.tensor(ys.numel(), device=device), least)
    counts = [int(c) for c in torch.cat([whole_kept.reshape(1), kept.reshape(-1)]).tolist()]
    width = max(1, *counts)
    # The window's list, then each cell's kept pixels scattered to their slots (others to a spare slot).
    out_y = torch.zeros((1 + n_y * n_x) * width + 1, dtype=torch.int64, device=device)
    out_x = torch.zeros_like(out_y)
    whole = torch.arange(counts[0], device=device)
    out_y[whole] = ys[whole * whole_step]
    out_x[whole] = xs[whole * whole_step]
    keep = member & (position % step[..., None] == 0) & (position // step[..., None] < kept[..., None])
    cell = torch.arange(1, 1 + n_y * n_x, device=device).reshape(n_y, n_x, 1)
    slot = torch.where(keep, cell * width + position // step[..., None], torch.full_like(position, out_y.numel() - 1))
    out_y.scatter_(0, slot.reshape(-1).to(torch.int64), band_y[:, None].expand(-1, n_x, -1).reshape(-1))
    out_x.scatter_(0, slot.reshape(-1).to(torch.int64), band_x[:, None].expand(-1, n_x, -1).reshape(-1))
    return out_y[:-1].reshape(-1, width), out_x[:-1].reshape(-1, width), counts


def _variance(values: torch.Tensor | float, shape: torch.Size, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64, device=ys.device)
    return (v * v).expand(shape)[ys, xs]


def _solve_batch(image: torch.Tensor, target: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, valid: torch.Tensor,
                 half_width: int, image_rms: torch.Tensor | float, target_rms: torch.Tensor | float,
                 centred: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`solve_kernel`'s two clipped fits on C pixel lists at once: (coefficients (C, K*K + 1), ok (C,))."""
    size = 2 * half_width + 1
    least = pm.MIN_PIXELS_PER_COEFFICIENT * size * size
    device = image.device
    d = torch.arange(-half_width, half_width + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    src = image.to(torch.float64)
    c, n = ys.shape
    design = src[ys[..., None] + dy.reshape(-1), xs[..., None] + dx.reshape(-1)]  # (C, N, K*K)
    design = torch.cat([design, torch.ones((c, n, 1), dtype=torch.float64, device=device)], dim=2)
    design = torch.where(valid[..., None], design, torch.zeros_like(design))
    t = torch.where(valid, target.to(torch.float64)[ys, xs], torch.zeros((), dtype=torch.float64, device=device))
    var_t = torch.where(valid, _variance(target_rms, target.shape, ys, xs), torch.ones((), dtype=torch.float64, device=device))
    var_i = torch.where(valid, _variance(image_rms, image.shape, ys, xs), torch.ones((), dtype=torch.float64, device=device))
    keep = valid.clone()
    ok = valid.sum(dim=1) >= least
    k2 = size * size
    diagonal = torch.arange(k2, device=device)
    penalty = torch.as_tensor(pm.centring_penalty(half_width), device=device) if centred else None
    coef = torch.zeros((c, k2 + 1), dtype=torch.float64, device=device)
    for iteration in range(2):
        power = (coef[:, :-1] ** 2).sum(dim=1, keepdim=True)
        w = 1.0 / var_t if iteration == 0 else 1.0 / (var_t + power * var_i)
        w = torch.where(keep, w, torch.zeros_like(w))
        weighted = design * w[..., None]
        normal = weighted.transpose(1, 2) @ design
        ridge = pm.RIDGE * torch.diagonal(normal, dim1=1, dim2=2)[:, :-1].mean(dim=1)
        normal[:, diagonal, diagonal] += ridge[:, None]
        if penalty is not None:
            mean_diag = torch.diagonal(normal, dim1=1, dim2=2)[:, :-1].mean(dim=1)
            normal[:, :-1, :-1] += penalty * (pm.CENTRING_WEIGHT * mean_diag)[:, None, None]
        rhs = (weighted * t[..., None]).sum(dim=1)
        # A failed cell's system is made the identity, so one batched solve serves every cell.
        eye = torch.eye(k2 + 1, dtype=torch.float64, device=device)
        normal = torch.where(ok[:, None, None], normal, eye)
        coef = torch.linalg.solve(normal, torch.where(ok[:, None], rhs, torch.zeros_like(rhs)))
        power = (coef[:, :-1] ** 2).sum(dim=1, keepdim=True)
        residual = (t - (design @ coef[..., None])[..., 0]) / torch.sqrt(var_t + power * var_i)
        scale = 1.4826 * _median(residual.abs(), keep)
        keep = valid & (residual.abs() < pm.CLIP_NSIGMA * scale.clamp(min=1.0)[:, None])
        ok &= keep.sum(dim=1) >= least
    ratio = coef[:, :-1].sum(dim=1)
    ok &= (ratio >= pm.FLUX_RATIO_RANGE[0]) & (ratio <= pm.FLUX_RATIO_RANGE[1])
    return coef, ok


def solve_kernels_tensor(image: torch.Tensor, target: torch.Tensor, fits: list[torch.Tensor], half_width: int, *,
                         image_rms: torch.Tensor | float = 1.0, target_rms: torch.Tensor | float = 1.0,
                         centred: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    `skyblink.workers.psf_match.solve_kernel` on several fit masks of one (H, W) window at once
    (the cells of a kernel grid): their least squares batched, float64, on ``image``'s device.

    Parameters
    ----------
    image, target : (H, W) tensors
        As `solve_kernel`.
    fits : list of (H, W) bool tensors
        The pixels each kernel is fitted on.
    half_width, image_rms, target_rms, centred
        As `solve_kernel`.

    Returns
    -------
    kernels : (C, 2h+1, 2h+1) float64 tensor
    background : (C,) float64 tensor
    ok : (C,) bool tensor
        False where `solve_kernel` returns None (too few pixels, or a flux ratio out of range);
        the kernel and background there are meaningless.
    """
    size = 2 * half_width + 1
    ys, xs, counts = _pixel_lists(fits, pm.MIN_PIXELS_PER_COEFFICIENT * size * size)
    return _solve_lists(image, target, ys, xs, counts, half_width, image_rms, target_rms, centred)


def _solve_lists(image: torch.Tensor, target: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, counts: list[int],
                 half_width: int, image_rms: torch.Tensor | float, target_rms: torch.Tensor | float,
                 centred: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`solve_kernels_tensor` on pixel lists padded to one length ((C, L) each, ``counts`` long)."""
    size = 2 * half_width + 1
    coef = torch.zeros((len(counts), size * size + 1), dtype=torch.float64, device=image.device)
    ok = torch.zeros(len(counts), dtype=torch.bool, device=image.device)
    # Lists of similar lengths solved together (padding costs as much as pixels), within the design budget.
    order = sorted(range(len(counts)), key=lambda i: counts[i])
    chunk: list[int] = []
    for n, i in enumerate(order):
        chunk.append(i)
        longest = max(1, counts[i])
        following = counts[order[n + 1]] if n + 1 < len(order) else 0
        if n + 1 == len(order) or (len(chunk) + 1) * max(longest, following) * (size * size + 1) > _DESIGN_BUDGET:
            index = torch.tensor(chunk, device=image.device)
            valid = torch.arange(longest, device=image.device)[None] < index.new_tensor([counts[j] for j in chunk])[:, None]
            coef[index], ok[index] = _solve_batch(image, target, ys[index, :longest], xs[index, :longest], valid,
                                                  half_width, image_rms, target_rms, centred)
            chunk = []
    return coef[:, :-1].reshape(-1, size, size), coef[:, -1], ok


def solve_kernel_tensor(image: torch.Tensor, target: torch.Tensor, fit: torch.Tensor, half_width: int, *,
                        image_rms: torch.Tensor | float = 1.0,
                        target_rms: torch.Tensor | float = 1.0, centred: bool = False) -> tuple[torch.Tensor, float] | None:
    """
    `skyblink.workers.psf_match.solve_kernel` in torch (float64), for one (H, W) window on any device.

    Returns ``(kernel (2h+1, 2h+1) tensor, background)`` or None (too few pixels, or a flux ratio
    out of range). Reads the result back to the host (one sync).
    """
    kernels, background, ok = solve_kernels_tensor(image, target, [fit], half_width, image_rms=image_rms,
                                                   target_rms=target_rms, centred=centred)
    if not bool(ok[0]):
        return None
    return kernels[0], float(background[0])


@dataclass(frozen=True, slots=True)
class KernelGridTensor:
    """
    `skyblink.workers.psf_match.KernelGrid` in torch: one kernel per cell of a `CellLayout`
    (a single cell: one kernel for the window), blended bilinearly by the layout's tent weights.

    Attributes
    ----------
    kernels : (n_y, n_x, 2h+1, 2h+1) float64 tensor
    background : (n_y, n_x) float64 tensor
    layout : CellLayout
    """

    kernels: torch.Tensor
    background: torch.Tensor
    layout: pm.CellLayout

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        wy, wx = self.layout.weights()
        device = self.kernels.device
        return (torch.as_tensor(wy, dtype=torch.float64, device=device),
                torch.as_tensor(wx, dtype=torch.float64, device=device))

    def blend(self, values: torch.Tensor) -> torch.Tensor:
        """Per pixel (H, W), the tent-weighted mean of one value per cell (n_y, n_x)."""
        wy, wx = self._weights()
        return wy.T @ values.to(torch.float64) @ wx

    @property
    def flux_ratio(self) -> torch.Tensor:
        """Per pixel: the blended kernel's sum."""
        return self.blend(self.kernels.sum(dim=(2, 3)))

    @property
    def noise_factor(self) -> torch.Tensor:
        """Per pixel: sqrt of the blend of the kernels' sum k^2 (as `KernelGrid.noise_factor`)."""
        return torch.sqrt(self.blend((self.kernels**2).sum(dim=(2, 3))))

    @property
    def background_map(self) -> torch.Tensor:
        """Per pixel: the blended constant."""
        return self.blend(self.background)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """
        The (H, W) image convolved with the kernel of each pixel, edges replicated, float32: as
        `KernelGrid.apply` (each tap's weight map times the shifted image, summed in float64).
        """
        wy, wx = self._weights()
        size = self.kernels.shape[-1]
        h = size // 2
        ny, nx = self.layout.shape
        padded = F.pad(image.to(torch.float64)[None, None], (h,) * 4, mode="replicate")[0, 0]
        out = torch.zeros((ny, nx), dtype=torch.float64, device=image.device)
        rows = wy.T @ self.kernels.reshape(*self.kernels.shape[:2], -1).permute(2, 0, 1)  # (taps, H, n_x)
        for j in range(size):  # a row of taps at a time: its weight maps and the image shifted by each
            weights = rows[j * size: (j + 1) * size] @ wx  # (size, H, W)
            shifted = padded[j: j + ny].unfold(1, nx, 1).permute(1, 0, 2)  # [i, y, x] = padded[j + y, i + x]
            out += (weights * shifted).sum(dim=0)
        return out.to(torch.float32)


def solve_kernel_grid_tensor(image: torch.Tensor, target: torch.Tensor, fit: torch.Tensor, half_width: int, *,
                             image_rms: torch.Tensor | float = 1.0, target_rms: torch.Tensor | float = 1.0,
                             centred: bool = False, cell: int = pm.KERNEL_CELL_PX) -> KernelGridTensor | None:
    """
    `skyblink.workers.psf_match.solve_kernel_grid` in torch, for one (H, W) window: the window's
    kernel and one per cell of the same `CellLayout`, solved together; a cell whose own solve
    fails takes the window's kernel; a single cell, or no cell solved, is the window's kernel
    alone (a 1x1 grid). None when not even the window's kernel solves.
    """
    layout = pm.CellLayout.of(tuple(image.shape), cell)  # type: ignore[arg-type]
    n_y, n_x = layout.grid_shape
    least = pm.MIN_PIXELS_PER_COEFFICIENT * (2 * half_width + 1) ** 2
    if n_y * n_x > 1:
        ys, xs, counts = _grid_pixel_lists(fit, layout, least)
    else:
        ys, xs, counts = _pixel_lists([fit], least)
    kernels, background, ok = _solve_lists(image, target, ys, xs, counts, half_width, image_rms, target_rms, centred)
    ok_host = ok.tolist()
    if not ok_host[0]:
        return None
    if len(counts) == 1 or not any(ok_host[1:]):
        return KernelGridTensor(kernels[:1, None], background[:1, None], pm.CellLayout.single(layout.shape))
    own = ok[1:]
    cells = torch.where(own[:, None, None], kernels[1:], kernels[:1])
    back = torch.where(own, background[1:], background[:1])
    size = kernels.shape[-1]
    return KernelGridTensor(cells.reshape(n_y, n_x, size, size), back.reshape(n_y, n_x), layout)


def kernel_match_tensor(sci: torch.Tensor, sci_rms: torch.Tensor, ref: torch.Tensor, ref_rms: torch.Tensor,
                        covered: torch.Tensor, usable: torch.Tensor, science_fwhm_px: float,
                        reference_fwhm_px: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """
    One (H, W) window matched by a solved kernel grid, `skyblink.workers.difference.matched_difference`'s
    rules: the sharper image is convolved onto the broader one (the science then put back on its
    own flux scale by the blended flux ratio).

    Parameters
    ----------
    sci, sci_rms, ref, ref_rms : (H, W) float32 tensors
        Background-subtracted science and reference (0 where not covered) and their noise.
    covered, usable : (H, W) bool tensors
        Where the reference covers; where both images may be fitted on.
    science_fwhm_px, reference_fwhm_px : float

    Returns
    -------
    (sci, sci_rms, ref, ref_rms) float32 tensors, or None
        The matched images and their noise; None when no kernel solves (the caller falls back
        to the Gaussian match).
    """
    half = pm.kernel_half_width(science_fwhm_px, reference_fwhm_px)
    ref_convolved = science_fwhm_px >= reference_fwhm_px
    image, image_rms, target, target_rms = (ref, ref_rms, sci, sci_rms) if ref_convolved else (sci, sci_rms, ref, ref_rms)
    fit = source_pixels_tensor(image, image_rms, target, target_rms, usable, half)
    grid = solve_kernel_grid_tensor(image, target, fit, half, image_rms=image_rms, target_rms=target_rms,
                                    centred=not ref_convolved)
    if grid is None:
        return None
    convolved = grid.apply(image) + grid.background_map.to(torch.float32)
    noise_factor = grid.noise_factor.to(torch.float32)
    if ref_convolved:
        return sci, sci_rms, torch.where(covered, convolved, torch.zeros_like(convolved)), ref_rms * noise_factor
    ratio = grid.flux_ratio.to(torch.float32)
    return convolved / ratio, sci_rms * noise_factor / ratio, ref / ratio, ref_rms / ratio
