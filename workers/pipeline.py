"""
The asynchronous transfer/compute pipeline inside a worker: a pinned host ring buffer, host-to-device
copies on a copy stream, the tile program on a compute stream, and events between them, so that
batch i+1's copy overlaps batch i's work. Raw 16-bit science pixels cross the bus and are converted
on the device; only candidate records and their stamps come back.

Notes
-----
Memory is bounded: the ring (``slots`` pinned host buffers) and one device input buffer per slot
are allocated once at construction; the program's temporaries come from torch's caching
allocator and are reported as peak device memory. One pipeline per CUDA device: one thread at a
time submits batches, any thread collects their results.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from skyblink.stamps import STAMP_HALF

__all__ = ["Candidates", "InFlight", "TilePipeline", "extract_stamps"]


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


@dataclass(frozen=True, slots=True)
class InFlight:
    """One batch queued on the device by `TilePipeline.submit`, to be read by `TilePipeline.collect`."""

    batch: int
    outputs: dict[str, torch.Tensor]
    started: torch.cuda.Event
    computed: torch.cuda.Event


class TilePipeline:
    """
    Feed batches of raw 16-bit tiles through a device program with copy/compute overlap. Experimental.

    Parameters
    ----------
    program : callable, optional
        ``program(science_int16 (B, H, W) device tensor, batch_index) -> dict[str, tensor]``:
        the per-tile device program; every returned tensor is per candidate and freshly
        allocated (not a CUDA graph's static output), since the next batch runs before it is read.
        When None, each `submit` names its own.
    batch, height, width : int
        Shape of every batch.
    slots : int
        Pinned host buffers in the ring (at least 2): at most this many batches are in flight.
    device : str

    Notes
    -----
    `submit` only queues work and returns; `collect` waits for one batch's results. One thread
    at a time may submit (the ring's slots are handed out in order); any thread may collect,
    also while another submits, so the device runs one batch while the host launches the next
    and reads the results of the one before.
    """

    def __init__(self, program: Callable[[torch.Tensor, int], dict[str, torch.Tensor]] | None = None, *, batch: int,
                 height: int, width: int, slots: int = 3, device: str = "cuda") -> None:
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
        self._submitted = 0
        self._lock = threading.Lock()
        #: Seconds the host has spent waiting for the device's results.
        self.wait_seconds = 0.0
        #: Seconds the compute stream spent on the batches collected so far (from each batch's
        #: start on the stream to its end, measured with CUDA events): the GPU's busy time, which
        #: also counts any gap while the submitting thread was still queuing the batch's work.
        self.compute_seconds = 0.0
        #: Seconds `submit` waited for a ring slot's previous batch (the device behind the host);
        #: the rest of a submit's time is the host queuing work.
        self.slot_wait_seconds = 0.0

    def submit(self, array: np.ndarray | torch.Tensor,
               program: Callable[[torch.Tensor, int], dict[str, torch.Tensor]] | None = None, *, index: int = 0) -> InFlight:
        """
        Copy one batch of 16-bit pixels into the next ring slot and queue ``program`` on it.

        Returns at once (once the slot's previous batch is done with it). Work the program needs
        that was queued on `copy_stream` before this call is complete when the program runs.

        Parameters
        ----------
        array : (batch, height, width) ndarray of uint16 or int16, or pinned int16 tensor
            The pixels. An array is copied into the ring's pinned slot first; a pinned tensor
            (filled by the caller, for example in another thread) crosses the bus from where it
            is, with no copy on the host. Torch keeps its memory from reuse until the copy is done.
        program : callable, optional
            This batch's program; default: the pipeline's.
        index : int
            Passed to the program and kept as the batch's number in its `Candidates`.

        Raises
        ------
        ValueError
            Neither the pipeline nor the call names a program, or a tensor is not a pinned int16
            batch of the pipeline's shape.
        """
        program = program or self.program
        if program is None:
            msg = "no device program: give one to TilePipeline or to submit"
            raise ValueError(msg)
        if isinstance(array, torch.Tensor) and not (
                array.is_pinned() and array.dtype == torch.int16 and array.shape == self.host[0].shape):
            msg = (f"submit takes a pinned int16 tensor of shape {tuple(self.host[0].shape)}, got {array.dtype} "
                   f"{tuple(array.shape)}{'' if array.is_pinned() else ' (not pinned)'}")
            raise ValueError(msg)
        slot = self._submitted % self.slots
        self._submitted += 1
        waiting = time.perf_counter()
        self.computed[slot].synchronize()  # the slot's previous batch is done with its buffers
        self.slot_wait_seconds += time.perf_counter() - waiting  # one submitting thread: no lock
        if isinstance(array, torch.Tensor):
            source = array
        else:
            source = self.host[slot]
            source.numpy()[...] = array.view(np.int16)
        with torch.cuda.stream(self.copy_stream):
            self.dev[slot].copy_(source, non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        with torch.cuda.stream(self.compute_stream):
            self.compute_stream.wait_event(self.copied[slot])
            started = torch.cuda.Event(enable_timing=True)
            started.record(self.compute_stream)
            outputs = program(self.dev[slot], index)
            computed = torch.cuda.Event(enable_timing=True)
            computed.record(self.compute_stream)
        self.computed[slot] = computed
        return InFlight(index, outputs, started, computed)

    def collect(self, batch: InFlight) -> Candidates:
        """Wait for a submitted batch and return its candidates on the host. Thread-safe."""
        # Device-to-host copies on their own stream: work on the legacy default stream would
        # serialise with the copy and compute streams and undo the overlap.
        with torch.cuda.stream(self.fetch_stream):
            self.fetch_stream.wait_event(batch.computed)
            host = {name: t.to("cpu", non_blocking=True) for name, t in batch.outputs.items()}
            done = torch.cuda.Event()
            done.record(self.fetch_stream)
        start = time.perf_counter()
        done.synchronize()
        waited = time.perf_counter() - start
        with self._lock:
            self.wait_seconds += waited
            self.compute_seconds += batch.started.elapsed_time(batch.computed) / 1000.0
        columns = {name: t.numpy() for name, t in host.items()}
        valid = columns.pop("valid", None)
        if valid is not None:
            columns = {name: array[valid] for name, array in columns.items()}
        return Candidates(batch.batch, columns)

    def run(self, batches: Iterable[np.ndarray], *, overlap: bool = True) -> Iterator[Candidates]:
        """
        Process host batches of 16-bit pixels with the pipeline's program, yielding each batch's
        candidates in order.

        With ``overlap=False`` every batch is copied, computed and fetched before the next one
        starts (the synchronous reference; the results are identical).
        """
        pending: deque[InFlight] = deque()
        for index, array in enumerate(batches):
            pending.append(self.submit(array, index=index))
            if not overlap or len(pending) >= self.slots - 1:
                yield self.collect(pending.popleft())
        while pending:
            yield self.collect(pending.popleft())

    @staticmethod
    def peak_memory_gib(device: str = "cuda") -> float:
        """Peak device memory allocated so far, GiB."""
        return torch.cuda.max_memory_allocated(device) / 2**30


def uint16_from_int16(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret 16-bit pixels sent as int16 as unsigned ADU, in float32, on the device."""
    return (x.to(torch.int32) & 0xFFFF).to(torch.float32)
