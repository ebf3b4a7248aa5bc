"""
PSF matching by a convolution kernel solved on the window's own stars (Alard & Lupton 1998 with a
delta-function basis, as Bramich 2008): the kernel that best turns the sharper image into the
broader one, by least squares on the pixels of the bright sources, with its sum the photometric
ratio of the two images.

A Gaussian match (`skyblink.workers.difference.match_kernel_sigma`) assumes Gaussian PSFs of the
headers' FWHM and equal zero points; real PSFs are not Gaussian and real zero points differ, so a
Gaussian match leaves dipoles at every bright star. A solved kernel absorbs the PSFs' shapes, a
sub-pixel shift between the images and their flux ratio.

Notes
-----
Pure numpy/scipy, thread-safe. One kernel per window (`solve_kernel`) or one per cell of about
80 pixels, blended bilinearly (`solve_kernel_grid`). The torch version for the device program is
`skyblink.workers.psf_match_tensor`; the cells' geometry (`CellLayout`, `tent_weights`) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, correlate, uniform_filter

__all__ = ["KERNEL_CELL_PX", "CellLayout", "KernelGrid", "SolvedKernel", "kernel_half_width", "solve_kernel",
           "solve_kernel_grid", "source_pixels", "tent_reaches", "tent_weights"]

#: Detection level (sigma, 3x3 mean) of the pixels a kernel is fitted on.
FIT_NSIGMA = 20.0
#: Residuals beyond this many sigma are left out of the second fit (variables, transients, cosmic rays).
CLIP_NSIGMA = 5.0
#: Fewest fitted pixels per kernel coefficient; fewer and no kernel is solved.
MIN_PIXELS_PER_COEFFICIENT = 4
#: Tikhonov weight, relative to the normal matrix's mean diagonal.
RIDGE = 1e-4
#: Flux ratios (kernel sums) a solved kernel may have; outside, the fit is taken as failed
#: (too few or confused sources: a 512x512 simulated tile gave -0.006) and not used.
FLUX_RATIO_RANGE = (0.1, 10.0)
#: Most pixels a kernel is fitted on (an even subsample beyond).
MAX_PIXELS = 20000


#: Weight of the symmetry constraint, relative to the normal matrix's mean diagonal.
CENTRING_WEIGHT = 1e4


def centring_penalty(half_width: int) -> np.ndarray:
    """
    (K^2, K^2) matrix (I - F)^T (I - F), F the kernel's point reflection: the squared antisymmetric
    part of a kernel as a quadratic form. A point-symmetric kernel moves no symmetric source (a
    kernel held to zero first moments only can still move a source's core, and pay it back in
    its wings).
    """
    n = (2 * half_width + 1) ** 2
    a = np.eye(n) - np.eye(n)[::-1]
    return a.T @ a


@dataclass(frozen=True, slots=True)
class SolvedKernel:
    """
    A matching kernel. Stable.

    Attributes
    ----------
    kernel : (2h+1, 2h+1) ndarray of float64
        Applied by correlation (`scipy.ndimage.correlate`): model[y, x] = sum k[j, i] image[y+j-h, x+i-h].
    background : float
        Constant added to the model.
    n_pixels : int
        Pixels the final fit used.
    """

    kernel: np.ndarray
    background: float
    n_pixels: int

    @property
    def flux_ratio(self) -> float:
        """Sum of the kernel: target flux per unit of the convolved image's flux."""
        return float(self.kernel.sum())

    @property
    def noise_factor(self) -> float:
        """sqrt(sum k^2): the factor by which the kernel scales white noise."""
        return float(np.sqrt(np.sum(self.kernel**2)))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image convolved with the kernel (edges replicated), float32."""
        return correlate(image.astype(np.float64), self.kernel, mode="nearest").astype(np.float32)


def kernel_half_width(fwhm_a_px: float, fwhm_b_px: float) -> int:
    """Half-width of the kernel for two PSFs: 1.5 times the broader FWHM, between 3 and 10 pixels."""
    return int(np.clip(np.ceil(1.5 * max(fwhm_a_px, fwhm_b_px)), 3, 10))


def source_pixels(image: np.ndarray, rms: np.ndarray, target: np.ndarray, target_rms: np.ndarray,
                  usable: np.ndarray, half_width: int) -> np.ndarray:
    """
    The pixels a kernel is fitted on: around sources detected in either image (3x3 mean above
    `FIT_NSIGMA`), grown by the kernel's half-width, where both images are usable, away from the edges.
    """
    def detected(data: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return uniform_filter(np.nan_to_num(data / noise), 3) * 3.0 > FIT_NSIGMA

    near = binary_dilation(detected(image, rms) | detected(target, target_rms), iterations=half_width)
    bad = binary_dilation(~usable, iterations=half_width)
    near &= ~bad
    near[:half_width] = near[-half_width:] = False
    near[:, :half_width] = near[:, -half_width:] = False
    return near


def solve_kernel(image: np.ndarray, target: np.ndarray, fit: np.ndarray, half_width: int, *,
                 image_rms: np.ndarray | float = 1.0, target_rms: np.ndarray | float = 1.0,
                 centred: bool = False) -> SolvedKernel | None:
    """
    Solve the kernel k and constant b minimising sum (target - image * k - b)^2 / var on ``fit``.

    Parameters
    ----------
    image : (ny, nx) ndarray
        The image convolved (the sharper one), background-subtracted.
    target : (ny, nx) ndarray
        The image matched (the broader one), background-subtracted.
    fit : (ny, nx) bool ndarray
        Pixels to fit on (`source_pixels`); at least ``half_width`` from the edges.
    half_width : int
        Kernel half-width h (a (2h+1)^2 kernel).
    image_rms, target_rms : ndarray or float
        Background noise of each image, to weight the fit and clip outliers.
    centred : bool
        Hold the kernel point-symmetric: it may not move the convolved image's sources. Set when
        the science is the convolved image, so that its sources keep their positions (a shift
        between the images then stays in the difference, as with a Gaussian match).

    Returns
    -------
    SolvedKernel or None
        None when there are too few pixels for the kernel's coefficients, or its sum (the flux
        ratio) is outside `FLUX_RATIO_RANGE`.
    """
    size = 2 * half_width + 1
    ys, xs = np.nonzero(fit)
    if ys.size < MIN_PIXELS_PER_COEFFICIENT * size * size:
        return None
    if ys.size > MAX_PIXELS:
        step = int(np.ceil(ys.size / MAX_PIXELS))
        ys, xs = ys[::step], xs[::step]
    d = np.arange(-half_width, half_width + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    src = image.astype(np.float64)
    design = src[ys[:, None] + dy.ravel()[None, :], xs[:, None] + dx.ravel()[None, :]]
    design = np.hstack([design, np.ones((ys.size, 1))])
    t = target.astype(np.float64)[ys, xs]
    var_t = np.broadcast_to(np.asarray(target_rms, dtype=np.float64) ** 2, target.shape)[ys, xs]
    var_i = np.broadcast_to(np.asarray(image_rms, dtype=np.float64) ** 2, image.shape)[ys, xs]
    keep = np.ones(ys.size, dtype=bool)
    coef: np.ndarray | None = None
    for _ in range(2):
        a, y = design[keep], t[keep]
        if coef is None:
            w = 1.0 / var_t[keep]
        else:
            w = 1.0 / (var_t[keep] + float(np.sum(coef[:-1] ** 2)) * var_i[keep])  # the model's noise too
        normal = (a * w[:, None]).T @ a
        diagonal = np.arange(size * size)
        normal[diagonal, diagonal] += RIDGE * np.mean(np.diag(normal)[:-1])
        if centred:
            normal[:-1, :-1] += centring_penalty(half_width) * CENTRING_WEIGHT * np.mean(np.diag(normal)[:-1])
        coef = np.linalg.solve(normal, (a * w[:, None]).T @ y)
        residual = (t - design @ coef) / np.sqrt(var_t + float(np.sum(coef[:-1] ** 2)) * var_i)
        scale = 1.4826 * np.median(np.abs(residual[keep]))
        keep = np.abs(residual) < CLIP_NSIGMA * max(scale, 1.0)
        if keep.sum() < MIN_PIXELS_PER_COEFFICIENT * size * size:
            return None
    assert coef is not None  # the loop ran
    if not FLUX_RATIO_RANGE[0] <= float(np.sum(coef[:-1])) <= FLUX_RATIO_RANGE[1]:
        return None
    return SolvedKernel(coef[:-1].reshape(size, size), float(coef[-1]), int(keep.sum()))


#: Edge (pixels) of the cells a spatially varying kernel is solved on (`solve_kernel_grid`).
KERNEL_CELL_PX = 80


def tent_weights(centres: np.ndarray, n: int) -> np.ndarray:
    """
    Bilinear blending weights along one axis: cell ``i``'s tent, 1 at its centre, falling to 0 at
    its neighbours' centres and staying 1 beyond the outer centres; they sum to 1 at every pixel.

    Parameters
    ----------
    centres : (m,) ndarray
        Cell centres along the axis, increasing, pixels.
    n : int
        Pixels along the axis.

    Returns
    -------
    (m, n) ndarray of float64
    """
    coord = np.arange(n, dtype=np.float64)
    out = np.empty((len(centres), n))
    for i, c in enumerate(centres):
        lo = centres[i - 1] if i > 0 else -np.inf
        hi = centres[i + 1] if i + 1 < len(centres) else np.inf
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(coord <= c, (coord - lo) / (c - lo) if np.isfinite(lo) else 1.0,
                         (hi - coord) / (hi - c) if np.isfinite(hi) else 1.0)
        out[i] = np.clip(w, 0.0, 1.0)
    return out


def tent_reaches(centres: np.ndarray, n: int) -> list[tuple[slice, np.ndarray]]:
    """
    Per cell along one axis: the pixels where its tent weight (`tent_weights`) is non-zero, and
    the weights there.
    """
    out = []
    for w in tent_weights(centres, n):
        inside = np.flatnonzero(w > 0)
        out.append((slice(int(inside[0]), int(inside[-1]) + 1), w[inside[0]: inside[-1] + 1]))
    return out


@dataclass(frozen=True, slots=True)
class CellLayout:
    """
    The cells a spatially varying kernel is solved on over one window: its pure geometry, the same
    for the numpy path (`solve_kernel_grid`) and the torch one
    (`skyblink.workers.psf_match_tensor.solve_kernel_grid_tensor`). Stable.

    Attributes
    ----------
    shape : (int, int)
        The window's shape.
    edges_y, edges_x : ndarray
        Cell edges, pixels (``n + 1`` each, from 0 to the window's edge).
    """

    shape: tuple[int, int]
    edges_y: np.ndarray
    edges_x: np.ndarray

    @classmethod
    def of(cls, shape: tuple[int, int], cell: int = KERNEL_CELL_PX) -> CellLayout:
        """About ``cell``-pixel cells over a window of ``shape`` (a window no larger than 1.5 cells is one cell)."""
        ny, nx = shape
        n_y, n_x = max(1, round(ny / cell)), max(1, round(nx / cell))
        return cls((ny, nx), np.linspace(0, ny, n_y + 1), np.linspace(0, nx, n_x + 1))

    @classmethod
    def single(cls, shape: tuple[int, int]) -> CellLayout:
        """The whole window as one cell (one kernel)."""
        return cls((shape[0], shape[1]), np.array([0.0, shape[0]]), np.array([0.0, shape[1]]))

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Cells along y and x."""
        return len(self.edges_y) - 1, len(self.edges_x) - 1

    @property
    def centres_y(self) -> np.ndarray:
        """Cell centres along y, pixels."""
        return 0.5 * (self.edges_y[:-1] + self.edges_y[1:])

    @property
    def centres_x(self) -> np.ndarray:
        """Cell centres along x, pixels."""
        return 0.5 * (self.edges_x[:-1] + self.edges_x[1:])

    def fit_regions(self) -> list[tuple[slice, slice]]:
        """Row-major per cell: the pixels its kernel is fitted on, the cell and half a cell around it."""
        ny, nx = self.shape
        hy, hx = 0.5 * (self.edges_y[1] - self.edges_y[0]), 0.5 * (self.edges_x[1] - self.edges_x[0])
        n_y, n_x = self.grid_shape
        return [(slice(int(max(0.0, self.edges_y[i] - hy)), int(min(ny, self.edges_y[i + 1] + hy))),
                 slice(int(max(0.0, self.edges_x[j] - hx)), int(min(nx, self.edges_x[j + 1] + hx))))
                for i in range(n_y) for j in range(n_x)]

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(wy (n_y, H), wx (n_x, W)): `tent_weights` of the cells' centres along each axis."""
        return tent_weights(self.centres_y, self.shape[0]), tent_weights(self.centres_x, self.shape[1])


@dataclass(frozen=True, slots=True)
class KernelGrid:
    """
    A spatially varying matching kernel: one `SolvedKernel` per cell of a regular grid, blended
    bilinearly between the cells' centres (constant beyond the outer centres), so that the kernel
    at a pixel is the weighted mean of its four nearest cells' kernels. Stable.

    Attributes
    ----------
    kernels : list of list of SolvedKernel
        [row][column] of the grid.
    centres_y, centres_x : (n,) ndarray
        Cell centres, pixels.
    shape : (int, int)
        The image shape the grid covers.
    """

    kernels: list[list[SolvedKernel]]
    centres_y: np.ndarray
    centres_x: np.ndarray
    shape: tuple[int, int]

    def _blend(self, value: Callable[[SolvedKernel, slice, slice], np.ndarray | float]) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float64)
        for (ys, wy), row in zip(tent_reaches(self.centres_y, self.shape[0]), self.kernels, strict=True):
            for (xs, wx), kernel in zip(tent_reaches(self.centres_x, self.shape[1]), row, strict=True):
                out[ys, xs] += wy[:, None] * wx[None, :] * value(kernel, ys, xs)
        return out

    @property
    def flux_ratio(self) -> np.ndarray:
        """Per pixel: the blended kernel's sum."""
        return self._blend(lambda k, ys, xs: k.flux_ratio)

    @property
    def noise_factor(self) -> np.ndarray:
        """Per pixel: sqrt(sum k^2) of the blended kernel (of the weighted kernels' squares: an upper bound)."""
        return np.sqrt(self._blend(lambda k, ys, xs: k.noise_factor**2))

    @property
    def background(self) -> np.ndarray:
        """Per pixel: the blended constant."""
        return self._blend(lambda k, ys, xs: k.background)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image convolved with the kernel of each pixel (edges replicated), float32."""
        h = self.kernels[0][0].kernel.shape[0] // 2
        ny, nx = self.shape
        src = image.astype(np.float64)

        def convolved(k: SolvedKernel, ys: slice, xs: slice) -> np.ndarray:
            y0, y1, x0, x1 = max(ys.start - h, 0), min(ys.stop + h, ny), max(xs.start - h, 0), min(xs.stop + h, nx)
            part = correlate(src[y0:y1, x0:x1], k.kernel, mode="nearest")
            return part[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]

        return self._blend(convolved).astype(np.float32)


def solve_kernel_grid(image: np.ndarray, target: np.ndarray, fit: np.ndarray, half_width: int, *,
                      image_rms: np.ndarray | float = 1.0, target_rms: np.ndarray | float = 1.0, centred: bool = False,
                      cell: int = KERNEL_CELL_PX) -> KernelGrid | SolvedKernel | None:
    """
    A matching kernel that varies over the image: `solve_kernel` on each cell of about ``cell``
    pixels (its fit pixels and those of half a cell around it), blended bilinearly (`KernelGrid`),
    as HOTPANTS's kernel solved per stamp region or SFFT's polynomial kernel field absorb a PSF
    and a registration that change across a CCD. A cell whose own solve fails (too few sources)
    takes the whole window's kernel.

    Parameters
    ----------
    image, target, fit, half_width, image_rms, target_rms, centred
        As `solve_kernel`.
    cell : int
        Edge of a cell, pixels; a window no larger than 1.5 cells gets one kernel.

    Returns
    -------
    KernelGrid, SolvedKernel or None
        The grid; the window's one kernel when there is one cell or no cell solves on its own;
        None when not even the window's kernel solves.
    """
    whole = solve_kernel(image, target, fit, half_width, image_rms=image_rms, target_rms=target_rms, centred=centred)
    layout = CellLayout.of(image.shape, cell)
    n_y, n_x = layout.grid_shape
    if whole is None or n_y * n_x == 1:
        return whole
    solved: list[SolvedKernel | None] = []
    for ys, xs in layout.fit_regions():
        region = np.zeros_like(fit)
        region[ys, xs] = True
        solved.append(solve_kernel(image, target, fit & region, half_width, image_rms=image_rms, target_rms=target_rms,
                                   centred=centred))
    if all(k is None for k in solved):
        return whole
    rows = [[k if k is not None else whole for k in solved[i * n_x: (i + 1) * n_x]] for i in range(n_y)]
    return KernelGrid(rows, layout.centres_y, layout.centres_x, layout.shape)
