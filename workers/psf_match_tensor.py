"""
PSF matching by solved kernels in torch: `skyblink.workers.psf_match`'s rules (the fit pixels, the
weighted, clipped least squares of a delta-function kernel, one kernel per cell of about 80 pixels
blended bilinearly) for the device program, on any torch device, for a batch of windows at once.

The cells' geometry (`skyblink.workers.psf_match.CellLayout`: their edges, fit regions and tent
weights) is the numpy path's own. Every least squares of a batch (each window's and each of its
cells') is solved together: the pixel lists of all of them come from one ``nonzero`` and one
stable sort, the design matrices are gathered from a strided view of the image (no index per
coefficient), the normal equations are batched matrix products in float64 and solved by
Cholesky factorisation. The blended kernel is applied as one depthwise convolution per cell over
the pixels its tent weight reaches (float32), the weighted pieces summed.

Notes
-----
One host read per batch (the pixel lists' lengths, to size the padded lists and group them by
length), so a kernel-matched device program cannot be one CUDA graph; no read per window or
per cell. Thread-safe; no global state.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from . import psf_match as pm

__all__ = ["KernelGridTensor", "kernel_fit_pixels", "kernel_match_tensor", "solve_kernel_grid_tensor", "solve_kernel_tensor",
           "solve_kernels_tensor", "source_pixels_tensor"]

#: Most float64 numbers (pixels x coefficients) of the design matrices held at once, on the CPU and on a GPU.
_DESIGN_BUDGET = {"cpu": 32_000_000, "cuda": 128_000_000}


#: Longest over shortest list of the lists solved in one batched call (their padding is computed for nothing).
_LENGTH_SPREAD = 1.25


def _design_budget(device: torch.device) -> int:
    return _DESIGN_BUDGET.get(device.type, _DESIGN_BUDGET["cpu"])


def _dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """(N, H, W) masks dilated by the 4-connected cross ``iterations`` times (``scipy.ndimage.binary_dilation``'s, border False)."""
    out = mask
    for _ in range(iterations):  # each pixel or'ed with its four neighbours
        grown = out.clone()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def source_pixels_tensor(image: torch.Tensor, rms: torch.Tensor, target: torch.Tensor, target_rms: torch.Tensor,
                         usable: torch.Tensor, half_width: int) -> torch.Tensor:
    """
    `skyblink.workers.psf_match.source_pixels` in torch: the fit pixels of (H, W) or (B, H, W)
    windows (the noise maps broadcast to the images), on any device. Returns a bool tensor of
    ``image``'s shape.
    """
    shape = image.shape
    height, width = shape[-2:]

    def detected(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = data.to(torch.float64) / torch.broadcast_to(noise, shape).to(torch.float64)
        z = torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).reshape(-1, 1, height, width)
        mean = F.avg_pool2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3, stride=1)[:, 0]
        return mean * 3.0 > pm.FIT_NSIGMA

    near = _dilate(detected(image, rms) | detected(target, target_rms), half_width)
    near &= ~_dilate(~torch.broadcast_to(usable, shape).reshape(-1, height, width), half_width)
    h = half_width
    for border in (near[:, :h], near[:, -h:], near[:, :, :h], near[:, :, -h:]):
        border.fill_(False)  # in place, no tensor from the host (a CUDA graph captures this)
    return near.reshape(shape)


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


def _layout_key(layout: pm.CellLayout) -> tuple:
    """A hashable key of a layout's geometry (for the per-process caches of its tensors)."""
    return layout.shape, tuple(layout.edges_y.tolist()), tuple(layout.edges_x.tolist())


def _region_table(regions: list[slice], n: int) -> np.ndarray:
    """Per pixel along one axis: the indices of the fit regions that hold it, padded with -1 ((n, most) int64)."""
    member = np.zeros((len(regions), n), dtype=bool)
    for i, region in enumerate(regions):
        member[i, region] = True
    count = member.sum(axis=0)
    most = max(1, int(count.max()))
    table = np.argsort(~member, axis=0, kind="stable")[:most].T  # (n, most): the regions holding each pixel first, in order
    return np.where(np.arange(most)[None] < count[:, None], table, -1)


def _layout_of(key: tuple) -> pm.CellLayout:
    """The layout `_layout_key` was made of."""
    return pm.CellLayout(key[0], np.array(key[1]), np.array(key[2]))


@functools.lru_cache(maxsize=32)
def _region_tables(key: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`_region_table` of a layout's rows and columns, on ``device`` (made once per layout and device)."""
    layout = _layout_of(key)
    regions = layout.fit_regions()
    n_x = layout.grid_shape[1]
    return (torch.from_numpy(_region_table([r[0] for r in regions[::n_x]], layout.shape[0])).to(device),
            torch.from_numpy(_region_table([r[1] for r in regions[:n_x]], layout.shape[1])).to(device))


@functools.lru_cache(maxsize=32)
def _tents(key: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A layout's tent weights (wy (n_y, H), wx (n_x, W)) as float64 tensors on ``device`` (made once)."""
    wy, wx = _layout_of(key).weights()
    return (torch.as_tensor(wy, dtype=torch.float64, device=device), torch.as_tensor(wx, dtype=torch.float64, device=device))


@functools.lru_cache(maxsize=32)
def _reaches(key: tuple, half_width: int, device: torch.device) -> tuple[tuple[torch.Tensor, ...], ...]:
    """
    Per axis of a layout, for `KernelGridTensor.apply`: each cell's rows of the padded image
    (span + 2h), the output rows it writes (span; past its tent's reach (`psf_match.tent_reaches`):
    the spare row n) and its tent weights there (float32, 0 past its reach). Made once per layout,
    half-width and device.
    """
    layout = _layout_of(key)
    axes = []
    for centres, n in ((layout.centres_y, layout.shape[0]), (layout.centres_x, layout.shape[1])):
        reaches = pm.tent_reaches(centres, n)
        span = max(r.stop - r.start for r, _ in reaches)
        pixels = np.array([r.start for r, _ in reaches])[:, None] + np.arange(span)[None]  # (cells, span)
        inside = pixels < np.array([r.stop for r, _ in reaches])[:, None]
        tent = np.array([np.pad(w, (0, span - w.size)) for _, w in reaches])
        source = np.minimum(pixels[:, :1] + np.arange(span + 2 * half_width)[None], n + 2 * half_width - 1)
        axes.append((torch.from_numpy(source).to(device), torch.from_numpy(np.where(inside, pixels, n)).to(device),
                     torch.from_numpy(tent).to(device=device, dtype=torch.float32)))
    return tuple(axes)


@functools.lru_cache(maxsize=8)
def _penalty(half_width: int, device: torch.device) -> torch.Tensor:
    """`psf_match.centring_penalty` on ``device`` (made once)."""
    return torch.as_tensor(pm.centring_penalty(half_width), device=device)


def _pixel_lists(fit: torch.Tensor, layout: pm.CellLayout | None, least: int) -> tuple[torch.Tensor, list[int]]:
    """
    The pixel lists `solve_kernel` fits on, for (B, H, W) fit masks: per window, its whole mask's
    list and then (with a ``layout`` of more than one cell) each cell's fit region's, row-major
    cells. Each list is row-major, an even subsample beyond `MAX_PIXELS`, and empty when shorter
    than ``least``. All lists come from one ``nonzero``: each fit pixel is entered once for its
    window and once for each cell whose region holds it, and a stable sort by list keeps every
    list row-major.

    Returns
    -------
    index : (B * (1 + cells), L) int64 tensor
        Flat indices into the (B, H, W) stack, padded with 0.
    counts : list of int
        Each list's length (the batch's one host read).
    """
    b_count, height, width = fit.shape
    device = fit.device
    b, y, x = torch.nonzero(fit, as_tuple=True)
    pixel = (b * height + y) * width + x
    n_y, n_x = layout.grid_shape if layout is not None else (1, 1)
    cells = n_y * n_x if n_y * n_x > 1 else 0
    per = 1 + cells
    lists = [torch.zeros_like(pixel)[:, None]]  # the window's own list
    if cells:
        assert layout is not None
        rows, columns = _region_tables(_layout_key(layout), device)
        in_y, in_x = rows[y], columns[x]  # (P, most): the cells' rows and columns whose regions hold each pixel
        cell = in_y[:, :, None] * n_x + in_x[:, None, :]
        lists.append(torch.where((in_y[:, :, None] >= 0) & (in_x[:, None, :] >= 0), 1 + cell, -1).flatten(1))
    spare = b_count * per  # entries of no list go to a spare list, dropped below
    ids = torch.cat(lists, dim=1)
    entries = ids.shape[1]
    ids = torch.where(ids >= 0, b[:, None] * per + ids, spare).reshape(-1)
    ids, order = torch.sort(ids, stable=True)
    pixel = pixel[:, None].expand(-1, entries).reshape(-1)[order]
    n = torch.bincount(ids, minlength=spare + 1)
    start = torch.cumsum(n, 0) - n
    position = torch.arange(ids.numel(), device=device) - start[ids]
    step, kept = _subsample(n, least)
    kept[spare] = 0
    counts = kept[:spare].tolist()
    length = max(1, *counts) if counts else 1
    take = (position % step[ids] == 0) & (position // step[ids] < kept[ids])
    slot = torch.where(take, ids * length + position // step[ids], spare * length)
    out = torch.zeros(spare * length + 1, dtype=torch.int64, device=device)
    out.scatter_(0, slot, pixel)
    return out[:-1].reshape(spare, length), counts


def _as_map(values: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-pixel float64 map of ``like``'s shape, flattened (a scalar or a broadcastable tensor)."""
    v = torch.as_tensor(values, dtype=torch.float64, device=like.device)
    return torch.broadcast_to(v, like.shape).reshape(-1)


def _solve_batch(patches: torch.Tensor, target: torch.Tensor, var_t: torch.Tensor, var_i: torch.Tensor,
                 chunks: list[tuple[torch.Tensor, torch.Tensor]], origin: int, least: int,
                 penalty: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `solve_kernel`'s two clipped fits on C pixel lists at once: (coefficients (C, K*K + 1), ok (C,)),
    the lists in the order of ``chunks``.

    ``patches`` is the (M, K, K) strided view of the flattened float64 image whose entry m is the
    patch centred on pixel m + ``origin``; each chunk holds ``index`` (c, n), flat pixel indices
    (the first ``counts`` (c,) of each row valid), of lists of similar lengths, so that little of
    the padding is computed; ``target``, ``var_t`` and ``var_i`` are flat float64 maps. The normal
    equations of every chunk are solved together: one factorisation a fit, whatever the chunks.
    """
    k = patches.shape[-1]
    k2 = k * k
    device = patches.device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    designs, targets, var_ts, var_is, valids = [], [], [], [], []
    for index, counts in chunks:
        c, n = index.shape
        valid = torch.arange(n, device=device)[None] < counts[:, None]
        designs.append(patches[(index - origin).clamp(0, patches.shape[0] - 1)].reshape(c, n, k2))  # (c, n, K*K)
        targets.append(torch.where(valid, target[index], zero))
        var_ts.append(torch.where(valid, var_t[index], zero + 1.0))
        var_is.append(torch.where(valid, var_i[index], zero + 1.0))
        valids.append(valid)
    sizes = [index.shape[0] for index, _ in chunks]
    keeps = list(valids)
    ok = torch.cat([counts for _, counts in chunks]) >= least
    diagonal = torch.arange(k2, device=device)
    eye = torch.eye(k2 + 1, dtype=torch.float64, device=device)
    coef = torch.zeros((sum(sizes), k2 + 1), dtype=torch.float64, device=device)
    for _ in range(2):
        normals, sides_all = [], []
        for j, part in enumerate(coef.split(sizes)):
            power = (part[:, :-1] ** 2).sum(dim=1, keepdim=True)
            w = torch.where(keeps[j], 1.0 / (var_ts[j] + power * var_is[j]), zero)  # power is 0 on the first fit
            weighted = designs[j] * w[..., None]
            # The normal equations of [design, 1]: the constant's column from sums, no copy of the design.
            sides = weighted.transpose(1, 2) @ torch.stack([targets[j], torch.ones_like(targets[j])], dim=2)  # (c, K*K, 2)
            normal = torch.empty((part.shape[0], k2 + 1, k2 + 1), dtype=torch.float64, device=device)
            normal[:, :-1, :-1] = weighted.transpose(1, 2) @ designs[j]
            normal[:, :-1, -1] = sides[..., 1]
            normal[:, -1, :-1] = sides[..., 1]
            normal[:, -1, -1] = w.sum(dim=1)
            normals.append(normal)
            sides_all.append(torch.cat([sides[..., 0], (w * targets[j]).sum(dim=1, keepdim=True)], dim=1))
        normal, rhs = torch.cat(normals), torch.cat(sides_all)
        mean_diag = torch.diagonal(normal, dim1=1, dim2=2)[:, :-1].mean(dim=1)
        normal[:, diagonal, diagonal] += (pm.RIDGE * mean_diag)[:, None]
        if penalty is not None:
            mean_diag = torch.diagonal(normal, dim1=1, dim2=2)[:, :-1].mean(dim=1)
            normal[:, :-1, :-1] += penalty * (pm.CENTRING_WEIGHT * mean_diag)[:, None, None]
        # A failed list's system is made the identity, so one batched solve serves every list;
        # the normal matrices are symmetric positive definite (a ridge on the diagonal): Cholesky, no host check.
        normal = torch.where(ok[:, None, None], normal, eye)
        factor, info = torch.linalg.cholesky_ex(normal)
        coef = torch.cholesky_solve(torch.where(ok[:, None], rhs, zero)[..., None], factor)[..., 0]
        ok &= info == 0
        enough = []
        for j, part in enumerate(coef.split(sizes)):
            power = (part[:, :-1] ** 2).sum(dim=1, keepdim=True)
            model = (designs[j] @ part[:, :-1, None])[..., 0] + part[:, -1:]
            residual = (targets[j] - model) / torch.sqrt(var_ts[j] + power * var_is[j])
            scale = 1.4826 * _median(residual.abs(), keeps[j])
            keeps[j] = valids[j] & (residual.abs() < pm.CLIP_NSIGMA * scale.clamp(min=1.0)[:, None])
            enough.append(keeps[j].sum(dim=1) >= least)
        ok &= torch.cat(enough)
    ratio = coef[:, :-1].sum(dim=1)
    ok &= (ratio >= pm.FLUX_RATIO_RANGE[0]) & (ratio <= pm.FLUX_RATIO_RANGE[1])
    return coef, ok


def _solve_lists(image: torch.Tensor, target: torch.Tensor, index: torch.Tensor, counts: list[int], half_width: int,
                 image_rms: torch.Tensor | float, target_rms: torch.Tensor | float,
                 centred: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    `solve_kernel` on every pixel list of a (B, H, W) stack (``index``: flat indices into it,
    padded, ``counts`` long each): (kernels (C, K, K), backgrounds (C,), ok (C,)).
    """
    size = 2 * half_width + 1
    width = image.shape[-1]
    device = image.device
    least = pm.MIN_PIXELS_PER_COEFFICIENT * size * size
    src = torch.nan_to_num(image.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).reshape(-1)
    origin = half_width * width + half_width  # the patch of view entry m is centred on pixel m + origin
    patches = src.as_strided((src.numel() - 2 * origin, size, size), (1, width, 1))
    tgt = torch.nan_to_num(target.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).reshape(-1)
    var_t, var_i = _as_map(target_rms, target) ** 2, _as_map(image_rms, image) ** 2
    penalty = _penalty(half_width, device) if centred else None
    coef = torch.zeros((len(counts), size * size + 1), dtype=torch.float64, device=device)
    ok = torch.zeros(len(counts), dtype=torch.bool, device=device)
    # Lists of similar lengths make a chunk (padding costs as much as pixels: each chunk's longest list
    # at most `_LENGTH_SPREAD` times its shortest); chunks whose design matrices fit the budget together
    # are solved in one call.
    budget = _design_budget(device)
    order = sorted(range(len(counts)), key=lambda i: counts[i])
    # The order and lengths go to the device once (a small copy from the host waits for the queue).
    order_t = torch.tensor(order, device=device)
    lengths_t = torch.tensor([counts[i] for i in order], device=device)
    spans: list[tuple[int, int, int]] = []  # each chunk's (first, end) in ``order`` and its longest list
    first = 0
    for n, i in enumerate(order):
        longest = max(1, counts[i])
        following = counts[order[n + 1]] if n + 1 < len(order) else 0
        if (n + 1 == len(order) or following > _LENGTH_SPREAD * max(1, counts[order[first]])
                or (n + 2 - first) * max(longest, following) * (size * size + 1) > budget):
            spans.append((first, n + 1, longest))
            first = n + 1
    held, group = 0, []
    for at, (start, end, longest) in enumerate(spans):
        group.append((start, end, longest))
        held += (end - start) * longest * (size * size + 1)
        upcoming = spans[at + 1] if at + 1 < len(spans) else None
        if upcoming is None or held + (upcoming[1] - upcoming[0]) * upcoming[2] * (size * size + 1) > budget:
            rows = order_t[group[0][0]: group[-1][1]]
            chunks = [(index[order_t[a:e], :width], lengths_t[a:e]) for a, e, width in group]
            coef[rows], ok[rows] = _solve_batch(patches, tgt, var_t, var_i, chunks, origin, least, penalty)
            held, group = 0, []
    return coef[:, :-1].reshape(-1, size, size), coef[:, -1], ok


def solve_kernels_tensor(image: torch.Tensor, target: torch.Tensor, fits: list[torch.Tensor], half_width: int, *,
                         image_rms: torch.Tensor | float = 1.0, target_rms: torch.Tensor | float = 1.0,
                         centred: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    `skyblink.workers.psf_match.solve_kernel` on several fit masks of one (H, W) window at once:
    their least squares batched, float64, on ``image``'s device.

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
    index, counts = _pixel_lists(torch.stack(fits), None, pm.MIN_PIXELS_PER_COEFFICIENT * size * size)
    index = index % image.numel()  # every mask is of the one window
    return _solve_lists(image[None], target[None], index, counts, half_width, image_rms, target_rms, centred)


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
    (a single cell: one kernel for the window), blended bilinearly by the layout's tent weights;
    for one window or, with a leading batch dimension, for a batch of windows of one layout.

    Attributes
    ----------
    kernels : ([B,] n_y, n_x, 2h+1, 2h+1) float64 tensor
    background : ([B,] n_y, n_x) float64 tensor
    layout : CellLayout
    """

    kernels: torch.Tensor
    background: torch.Tensor
    layout: pm.CellLayout

    def blend(self, values: torch.Tensor) -> torch.Tensor:
        """Per pixel ([B,] H, W), the tent-weighted mean of one value per cell ([B,] n_y, n_x)."""
        wy, wx = _tents(_layout_key(self.layout), self.kernels.device)
        return wy.T @ values.to(torch.float64) @ wx

    @property
    def flux_ratio(self) -> torch.Tensor:
        """Per pixel: the blended kernel's sum."""
        return self.blend(self.kernels.sum(dim=(-2, -1)))

    @property
    def noise_factor(self) -> torch.Tensor:
        """Per pixel: sqrt of the blend of the kernels' sum k^2 (as `KernelGrid.noise_factor`)."""
        return torch.sqrt(self.blend((self.kernels**2).sum(dim=(-2, -1))))

    @property
    def background_map(self) -> torch.Tensor:
        """Per pixel: the blended constant."""
        return self.blend(self.background)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """
        The ([B,] H, W) image convolved with the kernel of each pixel, edges replicated, float32: as
        `KernelGrid.apply` (each cell's kernel convolved over the pixels its tent weight reaches,
        times that weight, summed; float32, the relative rounding about 1e-7 of the image's peak).
        """
        size = self.kernels.shape[-1]
        h = size // 2
        height, width = self.layout.shape
        n_y, n_x = self.layout.grid_shape
        lead = image.shape[:-2]
        batch = math.prod(lead)
        device = image.device
        padded = F.pad(image.to(torch.float32).reshape(batch, 1, height, width), (h,) * 4, mode="replicate")[:, 0]
        kernels = torch.broadcast_to(self.kernels, (*lead, n_y, n_x, size, size)).reshape(-1, 1, size, size)
        (src_y, out_y, tent_y), (src_x, out_x, tent_x) = _reaches(_layout_key(self.layout), h, device)
        pieces = padded[:, src_y[:, None, :, None], src_x[None, :, None, :]]  # (batch, n_y, n_x, span_y + 2h, span_x + 2h)
        span_y, span_x = tent_y.shape[1], tent_x.shape[1]
        # Depthwise in float32: torch's own depthwise kernel on CUDA (cuDNN takes depthwise only in half
        # precision), so no TF32 rounding (`test_kernel_grid_on_cuda_matches_numpy`).
        convolved = F.conv2d(pieces.reshape(1, -1, span_y + 2 * h, span_x + 2 * h), kernels.to(torch.float32),
                             groups=kernels.shape[0])
        convolved = convolved.reshape(batch, n_y, n_x, span_y, span_x) * tent_y[:, None, :, None] * tent_x[None, :, None, :]
        # Cells two apart along an axis reach disjoint pixels: each of the four parities is one plain scatter.
        out = torch.zeros((batch, height + 1, width + 1), dtype=torch.float32, device=device)
        for py in range(min(2, n_y)):
            for px in range(min(2, n_x)):
                part = torch.zeros_like(out)
                part[:, out_y[py::2, None, :, None], out_x[None, px::2, None, :]] = convolved[:, py::2, px::2]
                out += part
        return out[:, :height, :width].reshape(*lead, height, width)


def _solve_grids(image: torch.Tensor, target: torch.Tensor, fit: torch.Tensor, half_width: int,
                 image_rms: torch.Tensor | float, target_rms: torch.Tensor | float, centred: bool,
                 cell: int) -> tuple[KernelGridTensor, torch.Tensor]:
    """
    `solve_kernel_grid` for a (B, H, W) batch of windows: the grids (batched), and per window
    whether its own kernel solved (where not, its grid is meaningless). A cell whose own solve
    fails takes its window's kernel.
    """
    b_count = image.shape[0]
    layout = pm.CellLayout.of(tuple(image.shape[-2:]), cell)  # type: ignore[arg-type]
    n_y, n_x = layout.grid_shape
    size = 2 * half_width + 1
    index, counts = _pixel_lists(fit, layout, pm.MIN_PIXELS_PER_COEFFICIENT * size * size)
    kernels, background, ok = _solve_lists(image, target, index, counts, half_width, image_rms, target_rms, centred)
    per = len(counts) // b_count
    kernels, background, ok = kernels.reshape(b_count, per, size, size), background.reshape(b_count, per), ok.reshape(b_count, per)
    if per > 1:
        own = ok[:, 1:]
        kernels = torch.where(own[..., None, None], kernels[:, 1:], kernels[:, :1])
        background = torch.where(own, background[:, 1:], background[:, :1])
    return KernelGridTensor(kernels.reshape(b_count, n_y, n_x, size, size), background.reshape(b_count, n_y, n_x), layout), ok[:, 0]


def solve_kernel_grid_tensor(image: torch.Tensor, target: torch.Tensor, fit: torch.Tensor, half_width: int, *,
                             image_rms: torch.Tensor | float = 1.0, target_rms: torch.Tensor | float = 1.0,
                             centred: bool = False, cell: int = pm.KERNEL_CELL_PX) -> KernelGridTensor | None:
    """
    `skyblink.workers.psf_match.solve_kernel_grid` in torch, for one (H, W) window: the window's
    kernel and one per cell of the same `CellLayout`, solved together; a cell whose own solve
    fails takes the window's kernel. None when not even the window's kernel solves (one host read).
    """
    def stack(value: torch.Tensor | float) -> torch.Tensor | float:
        return value[None] if isinstance(value, torch.Tensor) and value.dim() == 2 else value

    grid, solved = _solve_grids(image[None], target[None], fit[None], half_width, stack(image_rms), stack(target_rms),
                                centred, cell)
    if not bool(solved[0]):
        return None
    return KernelGridTensor(grid.kernels[0], grid.background[0], grid.layout)


def kernel_fit_pixels(sci: torch.Tensor, sci_rms: torch.Tensor, ref: torch.Tensor, ref_rms: torch.Tensor,
                      usable: torch.Tensor, science_fwhm_px: float, reference_fwhm_px: float) -> torch.Tensor:
    """
    The (B, H, W) fit pixels `kernel_match_tensor` solves its kernels on (`source_pixels_tensor` of
    the image it convolves and its target), with no host synchronisation: the part of the match
    that a CUDA graph can capture. Takes `kernel_match_tensor`'s arguments; returns a bool tensor.
    """
    half = pm.kernel_half_width(science_fwhm_px, reference_fwhm_px)
    image, image_rms, target, target_rms = _image_and_target(sci, sci_rms, ref, ref_rms, science_fwhm_px, reference_fwhm_px)
    return source_pixels_tensor(image, image_rms, target, target_rms, usable, half)


def _image_and_target(sci: torch.Tensor, sci_rms: torch.Tensor, ref: torch.Tensor, ref_rms: torch.Tensor,
                      science_fwhm_px: float,
                      reference_fwhm_px: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, its rms, target, its rms): the sharper image is the one convolved onto the broader (the reference on ties)."""
    return (ref, ref_rms, sci, sci_rms) if science_fwhm_px >= reference_fwhm_px else (sci, sci_rms, ref, ref_rms)


def kernel_match_tensor(sci: torch.Tensor, sci_rms: torch.Tensor, ref: torch.Tensor, ref_rms: torch.Tensor,
                        covered: torch.Tensor, usable: torch.Tensor, science_fwhm_px: float,
                        reference_fwhm_px: float, *,
                        fit: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    A batch of (B, H, W) windows matched by solved kernel grids, `skyblink.workers.difference.matched_difference`'s
    rules: the sharper image is convolved onto the broader one (the science then put back on its
    own flux scale by the blended flux ratio).

    Parameters
    ----------
    sci, sci_rms, ref, ref_rms : (B, H, W) float32 tensors
        Background-subtracted science and reference (0 where not covered) and their noise.
    covered, usable : (B, H, W) bool tensors
        Where the reference covers; where both images may be fitted on.
    science_fwhm_px, reference_fwhm_px : float
    fit : (B, H, W) bool tensor, optional
        `kernel_fit_pixels` of these arguments, where the caller made them already.

    Returns
    -------
    (sci, sci_rms, ref, ref_rms) float32 (B, H, W) tensors, and solved (B,) bool tensor
        The matched images and their noise; where ``solved`` is False (no kernel solved for the
        window) they are meaningless and the caller falls back to the Gaussian match.
    """
    half = pm.kernel_half_width(science_fwhm_px, reference_fwhm_px)
    ref_convolved = science_fwhm_px >= reference_fwhm_px
    image, image_rms, target, target_rms = _image_and_target(sci, sci_rms, ref, ref_rms, science_fwhm_px, reference_fwhm_px)
    if fit is None:
        fit = kernel_fit_pixels(sci, sci_rms, ref, ref_rms, usable, science_fwhm_px, reference_fwhm_px)
    grid, solved = _solve_grids(image, target, fit, half, image_rms, target_rms, not ref_convolved, pm.KERNEL_CELL_PX)
    convolved = grid.apply(image) + grid.background_map.to(torch.float32)
    noise_factor = grid.noise_factor.to(torch.float32)
    if ref_convolved:
        return sci, sci_rms, torch.where(covered, convolved, torch.zeros_like(convolved)), ref_rms * noise_factor, solved
    ratio = grid.flux_ratio.to(torch.float32)
    return convolved / ratio, sci_rms * noise_factor / ratio, ref / ratio, ref_rms / ratio, solved
