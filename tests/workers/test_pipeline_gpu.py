"""On a GPU, the pipelined and synchronous modes of the worker pipeline give identical candidates."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu


def test_pipelined_and_synchronous_candidates_are_identical() -> None:
    from skyblink.engines.backends import TorchRunner
    from skyblink.engines.catalog import load_network
    from skyblink.workers.device_program import make_device_program
    from skyblink.workers.pipeline import TilePipeline

    rng = np.random.default_rng(0)
    size, batch = 256, 2
    yy, xx = np.mgrid[:size, :size]
    reference = torch.tensor(1000.0 + rng.normal(0, 10, (size + 64, size + 64)), dtype=torch.float32, device="cuda")
    grid = torch.tensor(np.stack([xx + 32.4, yy + 31.7]), dtype=torch.float32, device="cuda")[None].expand(batch, 2, size, size).contiguous()
    batches = []
    for _ in range(5):
        tiles = 1000.0 + rng.normal(0, 30, (batch, size, size))
        for _ in range(30):  # new point sources absent from the reference
            b, y0, x0 = rng.integers(0, batch), rng.uniform(10, size - 10), rng.uniform(10, size - 10)
            tiles[b] += rng.uniform(300, 5000) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0)
        batches.append(np.clip(tiles, 0, 65535).astype(np.uint16))
    det = TorchRunner(load_network("detector"), input_name="tiles", output_names=("heatmaps", "offsets"), device="cuda", precision="fp16")
    cls = TorchRunner(load_network("classifier"), input_name="stamps", output_names=("real_bogus", "class_probs"), device="cuda", precision="fp16")
    with det, cls:
        program = make_device_program(det, cls, reference, grid, science_fwhm_px=3.0, reference_fwhm_px=2.5)
        pipeline = TilePipeline(program, batch=batch, height=size, width=size, slots=3)
        sync = list(pipeline.run(batches, overlap=False))
        piped = list(pipeline.run(batches, overlap=True))
        # Batches already in pinned memory (as the GPU actor prepares them) cross from where they are.
        pinned = [torch.from_numpy(b.view(np.int16)).pin_memory() for b in batches]
        from_pinned = [pipeline.collect(pipeline.submit(p, index=i)) for i, p in enumerate(pinned)]
        with pytest.raises(ValueError, match="not pinned"):
            pipeline.submit(torch.from_numpy(batches[0].view(np.int16)))
    assert [c.batch for c in piped] == list(range(5))
    assert sum(len(c) for c in piped) > 0
    for a, b, c in zip(sync, piped, from_pinned, strict=True):
        for name in a.columns:
            np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)
            np.testing.assert_array_equal(a.columns[name], c.columns[name], err_msg=name)


@pytest.mark.parametrize("psf_match", ["gaussian", "kernel"])
def test_graphed_program_finds_the_eager_programs_candidates(psf_match: str) -> None:
    """
    The program as CUDA graphs (the workers' default on a GPU; with solved kernels, two graphs
    around the solve) finds what it finds launched step by step.
    """
    from skyblink.engines.backends import TorchRunner
    from skyblink.engines.catalog import load_network
    from skyblink.workers.device_program import make_device_program
    from skyblink.workers.program_config import TileProgram

    rng = np.random.default_rng(1)
    size, batch = 256, 2
    yy, xx = np.mgrid[:size, :size]
    reference = torch.tensor(1000.0 + rng.normal(0, 10, (size + 64, size + 64)), dtype=torch.float32, device="cuda")
    grid = torch.tensor(np.stack([xx + 32.4, yy + 31.7]), dtype=torch.float32, device="cuda")[None].expand(batch, 2, size, size).contiguous()
    tiles = 1000.0 + rng.normal(0, 30, (batch, size, size))
    for _ in range(20):
        b, y0, x0 = rng.integers(0, batch), rng.uniform(10, size - 10), rng.uniform(10, size - 10)
        tiles[b] += rng.uniform(500, 5000) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0)
    tiles[1, 40, 90] += 5000.0  # a cosmic ray
    science = torch.from_numpy(np.clip(tiles, 0, 65535).astype(np.uint16).view(np.int16)).cuda()
    det = TorchRunner(load_network("detector"), input_name="tiles", output_names=("heatmaps", "offsets"), device="cuda")
    cls = TorchRunner(load_network("classifier"), input_name="stamps", output_names=("real_bogus", "class_probs"), device="cuda")
    options = {"science_fwhm_px": 3.0, "reference_fwhm_px": 2.5, "gain": 1.5, "read_noise": 5.0, "saturate": 60000.0,
               "program": TileProgram(psf_match=psf_match)}
    with det, cls:
        graphed = make_device_program(det, cls, reference, grid, **options, graphs=True)(science, 0)
        eager = make_device_program(det, cls, reference, grid, **options, graphs=False)(science, 0)
    assert int(graphed["valid"].sum()) > 0
    for name in ("valid", "tile", "y", "x"):
        np.testing.assert_allclose(graphed[name].cpu().numpy(), eager[name].cpu().numpy(), atol=1e-3, err_msg=name)
    np.testing.assert_allclose(graphed["snr"].cpu().numpy(), eager["snr"].cpu().numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("psf_match", "size", "fwhm"), [("gaussian", 256, (3.0, 2.5)), ("gaussian", 1088, (4.0, 3.0)),
                                                         ("kernel", 1088, (4.0, 3.0))])
def test_compiled_program_finds_the_uncompiled_programs_candidates(psf_match: str, size: int, fwhm: tuple[float, float]) -> None:
    """
    Inductor's kernels (`skyblink.workers.fused`) find what the same program finds with every step
    launched by torch (``compile_device_program = false``): a miscompiled step shows here, on the
    geometry of the workers' tiles and of `benchmarks/subtraction_vs_sfft.py`'s pair (1088^2 windows,
    FWHM 4 and 3 px), with cosmic rays for the cleaning to work on.
    """
    from skyblink.engines.backends.select import torch_runner
    from skyblink.workers.device_program import make_device_program
    from skyblink.workers.program_config import TileProgram

    rng = np.random.default_rng(2)
    batch = 2
    yy, xx = np.mgrid[:size, :size]
    reference = 1000.0 + rng.normal(0, 10, (size + 64, size + 64))
    tiles = 1000.0 + rng.normal(0, 30, (batch, size, size))
    sigma = fwhm[0] / 2.3548
    for _ in range(size * size // 2000):
        b, y0, x0, flux = rng.integers(0, batch), rng.uniform(10, size - 10), rng.uniform(10, size - 10), rng.uniform(500, 8000)
        star = flux * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
        tiles[b] += star
        if rng.uniform() < 0.7:  # most are static: in the reference too, at its own seeing
            ry, rx = yy + 32, xx + 32
            reference[ry, rx] += star * (fwhm[0] / fwhm[1]) ** 2 * np.exp(
                -((xx - x0) ** 2 + (yy - y0) ** 2) * (1 / (2 * (fwhm[1] / 2.3548) ** 2) - 1 / (2 * sigma**2)))
    for _ in range(size * size // 4000):  # cosmic rays: single hot pixels and short tracks
        b, y0, x0 = rng.integers(0, batch), rng.integers(5, size - 5), rng.integers(5, size - 5)
        tiles[b, y0, x0 : x0 + rng.integers(1, 4)] += rng.uniform(2000, 20000)
    science = torch.from_numpy(np.clip(tiles, 0, 65535).astype(np.uint16).view(np.int16)).cuda()
    ref = torch.tensor(reference, dtype=torch.float32, device="cuda")
    grid = torch.tensor(np.stack([xx + 32.0, yy + 32.0]), dtype=torch.float32, device="cuda")[None].expand(batch, 2, size, size).contiguous()
    det, cls = (torch_runner(m, device="cuda", precision="fp16", compiled=False) for m in ("detector", "classifier"))
    options = {"science_fwhm_px": fwhm[0], "reference_fwhm_px": fwhm[1], "gain": 1.0, "read_noise": 5.0}
    with det, cls:
        compiled = make_device_program(det, cls, ref, grid, TileProgram(psf_match=psf_match), **options)(science, 0)
        compiled = {k: v.cpu().numpy() for k, v in compiled.items()}
        plain = make_device_program(det, cls, ref, grid, TileProgram(psf_match=psf_match, compile_device_program=False),
                                    **options)(science, 0)
        plain = {k: v.cpu().numpy() for k, v in plain.items()}
    assert int(plain["valid"].sum()) > 0
    _assert_same_candidates(compiled, plain, TileProgram().top_k)


def _assert_same_candidates(a: dict[str, np.ndarray], b: dict[str, np.ndarray], top_k: int) -> None:
    """
    The same candidates in each tile, by position (within 0.05 px) with S/N within 1 %, in any
    slot order. A tile whose ``top_k`` slots are all taken may differ in at most two candidates
    of its last four slots: a near-tie at the cut, which float rounding may break either way.
    """
    problems = []
    for tile in np.union1d(a["tile"][a["valid"]], b["tile"][b["valid"]]):
        sides = []
        for out in (a, b):
            slots = np.flatnonzero((out["tile"] == tile) & out["valid"])
            sides.append((slots - slots.min() if len(slots) else slots, np.c_[out["y"][slots], out["x"][slots]], out["snr"][slots]))
        (rank_a, xy_a, snr_a), (rank_b, xy_b, snr_b) = sides
        d = np.hypot(*(xy_a[:, None] - xy_b[None]).transpose(2, 0, 1)) if len(xy_a) and len(xy_b) else np.zeros((len(xy_a), len(xy_b)))
        near_a = d.min(axis=1) <= 0.05 if len(xy_b) else np.zeros(len(xy_a), bool)
        near_b = d.min(axis=0) <= 0.05 if len(xy_a) else np.zeros(len(xy_b), bool)
        full = len(xy_a) == top_k and len(xy_b) == top_k
        at_cut = np.all(rank_a[~near_a] >= top_k - 4) and np.all(rank_b[~near_b] >= top_k - 4)
        if (~near_a).sum() + (~near_b).sum() and not (full and at_cut and max((~near_a).sum(), (~near_b).sum()) <= 2):
            problems.append(f"tile {tile}: {len(xy_a)} and {len(xy_b)} candidates; unmatched {xy_a[~near_a].round(2).tolist()} "
                            f"(slots {rank_a[~near_a].tolist()}) and {xy_b[~near_b].round(2).tolist()} (slots {rank_b[~near_b].tolist()})")
        pairs = np.flatnonzero(near_a)
        if len(pairs):
            partner = d[pairs].argmin(axis=1)
            worst = np.max(np.abs(snr_a[pairs] - snr_b[partner]) / np.maximum(np.abs(snr_b[partner]), 1.0))
            if worst > 0.01:
                problems.append(f"tile {tile}: S/N differs by {worst:.3%} at worst")
    assert not problems, "; ".join(problems)
