"""The torch kernel grid (`skyblink.workers.psf_match_tensor`) gives the numpy path's (`skyblink.workers.psf_match`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, shift

from skyblink.workers.psf_match import (
    CellLayout,
    KernelGrid,
    SolvedKernel,
    kernel_half_width,
    solve_kernel,
    solve_kernel_grid,
    source_pixels,
)

torch = pytest.importorskip("torch")

from skyblink.workers.psf_match_tensor import (  # noqa: E402
    solve_kernel_grid_tensor,
    solve_kernel_tensor,
    source_pixels_tensor,
)

FWHM_PER_SIGMA = 2.3548
NOISE = 5.0


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A 320x320 science registered 0.6 px one way on its left half and the other way on its right (as test_psf_match)."""
    rng = np.random.default_rng(2)
    truth = np.zeros((320, 320))
    ys, xs = rng.integers(12, 308, (2, 120))
    truth[ys, xs] = 10 ** rng.uniform(3.0, 5.0, 120)
    reference = gaussian_filter(truth, 2.0 / FWHM_PER_SIGMA)
    broad = gaussian_filter(truth, 3.0 / FWHM_PER_SIGMA)
    science = np.where(np.arange(320)[None, :] < 160, shift(broad, (0.0, 0.6), order=3), shift(broad, (0.0, -0.6), order=3))
    sci = science + rng.normal(0, NOISE, science.shape)
    ref = reference + rng.normal(0, NOISE, reference.shape)
    half = kernel_half_width(3.0, 2.0)
    return ref, sci, source_pixels(ref, np.full_like(ref, NOISE), sci, np.full_like(sci, NOISE), np.ones(sci.shape, bool), half), half


def test_cell_layout_is_the_grids_geometry() -> None:
    layout = CellLayout.of((320, 300))
    assert layout.grid_shape == (4, 4)
    wy, wx = layout.weights()
    assert wy.shape == (4, 320) and wx.shape == (4, 300)
    assert np.allclose(wy.sum(axis=0), 1.0) and np.allclose(wx.sum(axis=0), 1.0)
    assert layout.fit_regions()[0] == (slice(0, 120), slice(0, 112))  # the cell and half a cell around it
    assert CellLayout.single((50, 60)).grid_shape == (1, 1)


def test_source_pixels_and_one_kernel_match_numpy(scene) -> None:
    ref, sci, fit, half = scene
    t = {name: torch.from_numpy(a) for name, a in (("ref", ref), ("sci", sci))}
    noise = torch.full(ref.shape, NOISE, dtype=torch.float64)
    fit_t = source_pixels_tensor(t["ref"], noise, t["sci"], noise, torch.ones(ref.shape, dtype=torch.bool), half)
    assert torch.equal(fit_t, torch.from_numpy(fit))
    one = solve_kernel(ref, sci, fit, half, image_rms=NOISE, target_rms=NOISE)
    dev = solve_kernel_tensor(t["ref"], t["sci"], fit_t, half, image_rms=NOISE, target_rms=NOISE)
    assert one is not None and dev is not None
    assert np.abs(dev[0].numpy() - one.kernel).max() < 1e-9 and abs(dev[1] - one.background) < 1e-6


def test_kernel_grid_matches_numpy(scene) -> None:
    """Every cell's kernel, the blended flux ratio, noise factor, background and convolution: numpy's to float64 rounding."""
    ref, sci, fit, half = scene
    grid = solve_kernel_grid(ref, sci, fit, half, image_rms=NOISE, target_rms=NOISE)
    dev = solve_kernel_grid_tensor(torch.from_numpy(ref), torch.from_numpy(sci), torch.from_numpy(fit), half,
                                   image_rms=NOISE, target_rms=NOISE)
    assert isinstance(grid, KernelGrid) and dev is not None and tuple(dev.kernels.shape[:2]) == (4, 4)
    kernels = np.array([[k.kernel for k in row] for row in grid.kernels])
    assert np.abs(dev.kernels.numpy() - kernels).max() < 1e-9
    assert np.abs(dev.flux_ratio.numpy() - grid.flux_ratio).max() < 1e-9
    assert np.abs(dev.noise_factor.numpy() - grid.noise_factor).max() < 1e-9
    assert np.abs(dev.background_map.numpy() - grid.background).max() < 1e-6
    convolved = grid.apply(ref)
    assert np.abs(dev.apply(torch.from_numpy(ref)).numpy() - convolved).max() <= 1e-6 * np.abs(convolved).max()


def test_a_cell_without_sources_takes_the_windows_kernel(scene) -> None:
    ref, sci, fit, half = scene
    sparse = fit.copy()
    sparse[:120, :120] = False  # the first cell's fit region holds no source pixel
    grid = solve_kernel_grid(ref, sci, sparse, half, image_rms=NOISE, target_rms=NOISE)
    dev = solve_kernel_grid_tensor(torch.from_numpy(ref), torch.from_numpy(sci), torch.from_numpy(sparse), half,
                                   image_rms=NOISE, target_rms=NOISE)
    whole = solve_kernel(ref, sci, sparse, half, image_rms=NOISE, target_rms=NOISE)
    assert isinstance(grid, KernelGrid) and whole is not None and dev is not None
    assert np.array_equal(grid.kernels[0][0].kernel, whole.kernel)
    assert np.abs(dev.kernels[0, 0].numpy() - whole.kernel).max() < 1e-9
    # and no source at all: no kernel on either path
    none = np.zeros_like(fit)
    assert solve_kernel_grid(ref, sci, none, half) is None
    assert solve_kernel_grid_tensor(torch.from_numpy(ref), torch.from_numpy(sci), torch.from_numpy(none), half) is None


def test_the_cells_pixel_lists_are_numpys_pixels() -> None:
    """
    The pixel lists of a batch of windows, made for every window and cell from one ``nonzero``, are
    the pixels `solve_kernel` fits on for each cell's fit mask: row-major, an even subsample beyond
    MAX_PIXELS, none below the minimum (dense cells subsampled, a sparse cell empty), each window's
    own list first, the windows in order.
    """
    from skyblink.workers import psf_match as pm
    from skyblink.workers.psf_match_tensor import _pixel_lists

    rng = np.random.default_rng(5)
    fit = rng.random((400, 360)) < 0.95  # cells' regions up to 160x160 px: more than MAX_PIXELS fit pixels
    fit[:120, 200:] = rng.random((120, 160)) < 0.002  # a corner too sparse for a kernel
    sparse = rng.random((400, 360)) < 0.05  # a second window of the batch: its own lists, not the first's
    layout = CellLayout.of(fit.shape)
    least = pm.MIN_PIXELS_PER_COEFFICIENT * 7 * 7
    index, counts = _pixel_lists(torch.from_numpy(np.stack([fit, sparse])), layout, least)
    masks = []
    for window in (fit, sparse):
        masks.append(window)
        for rows, cols in layout.fit_regions():
            region = np.zeros_like(window)
            region[rows, cols] = True
            masks.append(window & region)
    per = 1 + layout.grid_shape[0] * layout.grid_shape[1]
    assert len(counts) == len(masks) == 2 * per
    subsampled = empty = 0
    for i, mask in enumerate(masks):
        want_y, want_x = np.nonzero(mask)
        if want_y.size < least:
            want_y, want_x = want_y[:0], want_x[:0]
            empty += 1
        elif want_y.size > pm.MAX_PIXELS:
            step = int(np.ceil(want_y.size / pm.MAX_PIXELS))
            want_y, want_x = want_y[::step], want_x[::step]
            subsampled += 1
        assert counts[i] == want_y.size, i
        window, rest = np.divmod(index[i, : counts[i]].numpy(), fit.size)
        assert (window == i // per).all(), i
        assert np.array_equal(rest // fit.shape[1], want_y) and np.array_equal(rest % fit.shape[1], want_x), i
    assert subsampled >= 2 and empty >= 1


def test_a_window_of_one_cell_is_one_kernel_as_numpy(scene) -> None:
    """A window no larger than 1.5 cells is one kernel on both paths, applied alike (no tent to blend)."""
    ref, sci, _, half = scene
    ref, sci = ref[:100, :90], sci[:100, :90]
    fit = source_pixels(ref, np.full_like(ref, NOISE), sci, np.full_like(sci, NOISE), np.ones(ref.shape, bool), half)
    grid = solve_kernel_grid(ref, sci, fit, half, image_rms=NOISE, target_rms=NOISE)
    dev = solve_kernel_grid_tensor(torch.from_numpy(ref), torch.from_numpy(sci), torch.from_numpy(fit), half,
                                   image_rms=NOISE, target_rms=NOISE)
    assert isinstance(grid, SolvedKernel) and dev is not None and tuple(dev.kernels.shape[:2]) == (1, 1)
    assert np.abs(dev.kernels[0, 0].numpy() - grid.kernel).max() < 1e-9
    convolved = grid.apply(ref)
    assert np.abs(dev.apply(torch.from_numpy(ref)).numpy() - convolved).max() <= 1e-6 * np.abs(convolved).max()


@pytest.mark.gpu
def test_kernel_grid_on_cuda_matches_numpy(scene) -> None:
    """On a GPU the same kernels and convolution as numpy: float64 solves, a float32 depthwise convolution without TF32."""
    ref, sci, fit, half = scene
    grid = solve_kernel_grid(ref, sci, fit, half, image_rms=NOISE, target_rms=NOISE)
    dev = solve_kernel_grid_tensor(torch.from_numpy(ref).cuda(), torch.from_numpy(sci).cuda(), torch.from_numpy(fit).cuda(),
                                   half, image_rms=NOISE, target_rms=NOISE)
    assert isinstance(grid, KernelGrid) and dev is not None
    kernels = np.array([[k.kernel for k in row] for row in grid.kernels])
    assert np.abs(dev.kernels.cpu().numpy() - kernels).max() < 1e-9
    convolved = grid.apply(ref)
    assert np.abs(dev.apply(torch.from_numpy(ref).cuda()).cpu().numpy() - convolved).max() <= 1e-6 * np.abs(convolved).max()
