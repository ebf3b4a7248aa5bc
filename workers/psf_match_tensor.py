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
length), so a kernel-matched device program cannot be one CUDA graph. Thread-safe; no global state.
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


def _pixel_list(fit: torch.Tensor, least: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A fit mask's pixels as `solve_kernel` takes them: row-major, an even subsample beyond
    `MAX_PIXELS`; none when fewer than ``least`` (the kernel fails).
    """
    ys, xs = torch.nonzero(fit, as_tuple=True)
    n = int(ys.numel())
    if n < least:
        return ys[:0], xs[:0]
    if n > pm.MAX_PIXELS:
        step = -(-n // pm.MAX_PIXELS)
        return ys[::step], xs[::step]
    return ys, xs


def _padded(lists: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel lists padded to one length: (ys, xs, valid), (C, N) each."""
    length = max(1, *(int(ys.numel()) for ys, _ in lists))
    device = lists[0][0].device
    out_y = torch.zeros((len(lists), length), dtype=torch.int64, device=device)
    out_x = torch.zeros_like(out_y)
    valid = torch.zeros((len(lists), length), dtype=torch.bool, device=device)
    for i, (ys, xs) in enumerate(lists):
        out_y[i, : ys.numel()] = ys
        out_x[i, : xs.numel()] = xs
        valid[i, : ys.numel()] = True
    return out_y, out_x, valid


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
    lists = [_pixel_list(fit, pm.MIN_PIXELS_PER_COEFFICIENT * size * size) for fit in fits]
    coef = torch.zeros((len(fits), size * size + 1), dtype=torch.float64, device=image.device)
    ok = torch.zeros(len(fits), dtype=torch.bool, device=image.device)
    # Lists of similar lengths solved together (padding costs as much as pixels), within the design budget.
    order = sorted(range(len(fits)), key=lambda i: int(lists[i][0].numel()))
    chunk: list[int] = []
    for n, i in enumerate(order):
        chunk.append(i)
        longest = max(1, int(lists[i][0].numel()))
        following = int(lists[order[n + 1]][0].numel()) if n + 1 < len(order) else 0
        if n + 1 == len(order) or (len(chunk) + 1) * max(longest, following) * (size * size + 1) > _DESIGN_BUDGET:
            ys, xs, valid = _padded([lists[j] for j in chunk])
            index = torch.tensor(chunk, device=image.device)
            coef[index], ok[index] = _solve_batch(image, target, ys, xs, valid, half_width, image_rms, target_rms, centred)
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
        for tap in range(size * size):
            j, i = divmod(tap, size)
            out += (rows[tap] @ wx) * padded[j: j + ny, i: i + nx]
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
    fits = [fit]
    if n_y * n_x > 1:
        for ys, xs in layout.fit_regions():
            region = torch.zeros_like(fit)
            region[ys, xs] = True
            fits.append(fit & region)
    kernels, background, ok = solve_kernels_tensor(image, target, fits, half_width, image_rms=image_rms,
                                                   target_rms=target_rms, centred=centred)
    ok_host = ok.tolist()
    if not ok_host[0]:
        return None
    if len(fits) == 1 or not any(ok_host[1:]):
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
