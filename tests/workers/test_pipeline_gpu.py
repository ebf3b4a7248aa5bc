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
    assert [c.batch for c in piped] == list(range(5))
    assert sum(len(c) for c in piped) > 0
    for a, b in zip(sync, piped, strict=True):
        for name in a.columns:
            np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)


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
