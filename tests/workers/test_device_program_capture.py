"""
What the device program captures as CUDA graphs must be capturable: no tensor made from host data
(a copy from the host, which a capture refuses) and no question to the host (``.item()``, a
data-dependent shape). Checked on the CPU by recording the operations the captured functions run,
so that a machine without a GPU catches what otherwise fails only at an actor's first capture.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from skyblink.workers import device_program  # noqa: E402
from skyblink.workers.program_config import TileProgram  # noqa: E402

#: Operations a CUDA graph capture refuses or that stall the host.
REFUSED = {"aten.lift_fresh.default": "a tensor made from host data (torch.tensor / as_tensor of a list)",
           "aten._local_scalar_dense.default": "a value read back to the host (.item(), bool(), float())",
           "aten.nonzero.default": "a data-dependent shape (nonzero / boolean indexing)",
           "aten.masked_select.default": "a data-dependent shape (masked_select)",
           "aten._unique2.default": "a data-dependent shape (unique)",
           "aten.unique_consecutive.default": "a data-dependent shape (unique_consecutive)"}


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("psf_match", "graphs"), [("gaussian", {"front", "peaks"}),
                                                   ("kernel", {"front", "kernel", "peaks"})])
def test_the_captured_parts_of_the_device_program_ask_nothing_of_the_host(monkeypatch: pytest.MonkeyPatch, torch_runners,
                                                                          psf_match: str, graphs: set[str]) -> None:
    size = 128
    rng = np.random.default_rng(1)
    science = rng.poisson(1000.0, (size, size)).astype(np.uint16)
    reference = torch.from_numpy(rng.normal(1000.0, 30.0, (size, size)))
    yy, xx = np.mgrid[:size, :size]
    grid = torch.tensor(np.stack([xx, yy]), dtype=torch.float32)[None].contiguous()
    raw = torch.from_numpy(science.view(np.int16))[None]
    seen: dict[str, list[str]] = {}

    def run_recorded(name: str, fn, args, layout):
        def call(inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            with _Recorder() as recorder:
                out = fn(*inputs)
            seen[name] = recorder.ops
            return out
        return call

    monkeypatch.setattr(device_program, "_graph", run_recorded)
    program = device_program.make_device_program(*torch_runners, reference, grid, TileProgram(psf_match=psf_match),
                                                 science_fwhm_px=2.4, reference_fwhm_px=2.0, saturate=60000.0,
                                                 read_noise=5.0, gain=1.0, graphs=True)
    program(raw, 0)
    # With solved kernels, the solve between the two graphs before the detector is the one eager step.
    assert {name.split()[0] for name in seen} == graphs, sorted(seen)
    for name, ops in seen.items():
        assert len(ops) > 100, (name, len(ops))  # the functions ran under the recorder
        bad = sorted({op for op in ops if op in REFUSED})
        assert not bad, f"{name}: {[f'{op}: {REFUSED[op]}' for op in bad]}"
