"""
The asynchronous transfer/compute pipeline inside a worker: a pinned host ring buffer, host-to-device
copies on a copy stream, the tile program on a compute stream, and events between them, so that
batch i+1's copy overlaps batch i's work. Raw 16-bit science pixels cross the bus and are converted
on the device; only candidate records and their stamps come back.

Notes
-----
Memory is bounded: the ring (``slots`` pinned host buffers) and one device input buffer per slot
are allocated once at construction; the program's temporaries come from torch's caching
allocator and are reported as peak device memory. One pipeline per CUDA device; not thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .tile_unit import STAMP_HALF

__all__ = ["Candidates", "TilePipeline", "extract_stamps"]



@dataclass(frozen=True, slots=True)
class Candidates:
    """
    Candidates of one batch, on the host: one array per column, first axis the candidate
    (tile index, x, y, score, stamps, real/bogus, ...: whatever the program returns). Columns
    are zero-length, not absent, when there are none.
    """

    batch: int
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def extract_stamps(triplet: torch.Tensor, tile: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """
    Cut (N, 3, 63, 63) stamps centred on integer pixels from a (B, 3, H, W) batch (zero beyond edges).
    """
    padded = torch.nn.functional.pad(triplet, (STAMP_HALF,) * 4)
    d = torch.arange(-STAMP_HALF, STAMP_HALF + 1, device=triplet.device)
    rows = (y[:, None] + STAMP_HALF + d[None, :])[:, :, None]  # (N, 63, 1)
    cols = (x[:, None] + STAMP_HALF + d[None, :])[:, None, :]  # (N, 1, 63)
    stamps = padded[tile[:, None, None], :, rows, cols]  # (N, 63, 63, 3)
    return stamps.permute(0, 3, 1, 2)


class TilePipeline:
    """
    Feed batches of raw 16-bit tiles through ``program`` with copy/compute overlap. Experimental.

    Parameters
    ----------
    program : callable
        ``program(science_int16 (B, H, W) device tensor, batch_index) -> dict[str, tensor]``:
        the per-tile device program; every returned tensor is per candidate and freshly
        allocated (not a CUDA graph's static output), since the next batch runs before it is read.
    batch, height, width : int
        Shape of every batch.
    slots : int
        Pinned host buffers in the ring (at least 2).
    device : str
    """

    def __init__(self, program: Callable[[torch.Tensor, int], dict[str, torch.Tensor]], *, batch: int, height: int,
                 width: int, slots: int = 3, device: str = "cuda") -> None:
        if slots < 2:
            msg = f"slots must be at least 2 for copy/compute overlap, got {slots}"
            raise ValueError(msg)
        self.program = program
        self.device = torch.device(device)
        self.host = [torch.empty((batch, height, width), dtype=torch.int16, pin_memory=True) for _ in range(slots)]
        self.dev = [torch.empty((batch, height, width), dtype=torch.int16, device=self.device) for _ in range(slots)]
        self.copy_stream = torch.cuda.Stream(self.device)
        self.compute_stream = torch.cuda.Stream(self.device)
        self.fetch_stream = torch.cuda.Stream(self.device)
        self.copied = [torch.cuda.Event() for _ in range(slots)]
        self.computed = [torch.cuda.Event() for _ in range(slots)]
        self.slots = slots
        #: Seconds the host has spent waiting for the device's results (the rest of a call's
        #: device side is the host launching work and handling results).
        self.wait_seconds = 0.0

    def _fetch(self, index: int, outputs: dict[str, torch.Tensor], event: torch.cuda.Event) -> Candidates:
        # Device-to-host copies on their own stream: work on the legacy default stream would
        # serialise with the copy and compute streams and undo the overlap.
        with torch.cuda.stream(self.fetch_stream):
            self.fetch_stream.wait_event(event)
            host = {name: t.to("cpu", non_blocking=True) for name, t in outputs.items()}
            done = torch.cuda.Event()
            done.record(self.fetch_stream)
        start = time.perf_counter()
        done.synchronize()
        self.wait_seconds += time.perf_counter() - start
        columns = {name: t.numpy() for name, t in host.items()}
        valid = columns.pop("valid", None)
        if valid is not None:
            columns = {name: array[valid] for name, array in columns.items()}
        return Candidates(index, columns)

    def run(self, batches: Iterable[np.ndarray], *, overlap: bool = True) -> Iterator[Candidates]:
        """
        Process host batches of 16-bit pixels, yielding each batch's candidates in order.

        With ``overlap=False`` every batch is copied, computed and fetched before the next one
        starts (the synchronous reference; the results are identical).
        """
        pending: list[tuple[int, dict[str, torch.Tensor], torch.cuda.Event]] = []
        for index, array in enumerate(batches):
            slot = index % self.slots
            self.computed[slot].synchronize()  # the slot's previous batch is done with its buffers
            self.host[slot].numpy()[...] = array.view(np.int16)
            with torch.cuda.stream(self.copy_stream):
                self.dev[slot].copy_(self.host[slot], non_blocking=True)
                self.copied[slot].record(self.copy_stream)
            with torch.cuda.stream(self.compute_stream):
                self.compute_stream.wait_event(self.copied[slot])
                outputs = self.program(self.dev[slot], index)
                self.computed[slot].record(self.compute_stream)
            pending.append((index, outputs, self.computed[slot]))
            if not overlap or len(pending) >= self.slots - 1:
                yield self._fetch(*pending.pop(0))
        for item in pending:
            yield self._fetch(*item)

    @staticmethod
    def peak_memory_gib(device: str = "cuda") -> float:
        """Peak device memory allocated so far, GiB."""
        return torch.cuda.max_memory_allocated(device) / 2**30


def uint16_from_int16(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret 16-bit pixels sent as int16 as unsigned ADU, in float32, on the device."""
    return (x.to(torch.int32) & 0xFFFF).to(torch.float32)
