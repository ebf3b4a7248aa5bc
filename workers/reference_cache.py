"""
Reference CCDs resident on a GPU actor's device, kept by bytes, least recently used first out.

A field is observed again later in the night (survey cadences revisit within the hour), and every
CCD of every visit needs its reference CCD on the device. Read from the store, pinned and sent, a
4096^2 reference costs the host about half of what a CCD's preparation costs (its read ~60-70 ms
of ~135 ms on one core, `benchmarks/host_prepare.py --revisit`); kept on the device, a revisit
reads only its science pixels. The cache holds as many references as its byte budget allows,
sized by the actor to the memory its device program leaves free. Before a reference reaches the
device, the calls of its CCD being prepared at once (a CCD's units split over several calls)
share one read of it (`SharedReads`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

import torch

__all__ = ["ReferenceCache", "SharedReads"]

T = TypeVar("T")


class ReferenceCache:
    """
    Tensors by key within a byte budget, least recently used evicted first. Thread-safe.

    Each tensor is held with the version of what it was read from (`NightStore.stored_version`):
    a lookup for another version misses, and adding one replaces the tensor held for its key, so a
    reference ingested again is read again and its old pixels leave the device.

    Parameters
    ----------
    budget_bytes : int
        Bytes the held tensors may take together. The tensor last added is kept even when it
        alone is larger (the call that added it is using it); the others are evicted to make room.

    Raises
    ------
    ValueError
        ``budget_bytes`` is negative.

    Notes
    -----
    Eviction only drops the cache's reference: a tensor still in use by queued device work stays
    valid (the actor records it on the compute stream, so the allocator does not reuse its memory
    until that work is done).
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            msg = f"reference cache budget must be >= 0 bytes, got {budget_bytes}"
            raise ValueError(msg)
        self.budget_bytes = int(budget_bytes)
        self._held: OrderedDict[Hashable, tuple[object, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: Lookups that found their reference held, and those that did not (`get`).
        self.hits = 0
        self.misses = 0

    def holds(self, key: Hashable, version: object = None) -> bool:
        """Whether ``key`` is held at ``version`` (a peek: neither counted nor made recent)."""
        with self._lock:
            found = self._held.get(key)
            return found is not None and found[0] == version

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._bytes

    def get(self, key: Hashable, version: object = None) -> torch.Tensor | None:
        """
        The tensor held for ``key`` at ``version`` (made the most recent), or None; counted as a
        hit or a miss.

        Returns
        -------
        tensor or None
        """
        with self._lock:
            found = self._held.get(key)
            if found is None or found[0] != version:
                self.misses += 1
                return None
            self.hits += 1
            self._held.move_to_end(key)
            return found[1]

    def add(self, key: Hashable, tensor: torch.Tensor, version: object = None) -> None:
        """
        Hold ``tensor`` for ``key`` at ``version`` (replacing what it held, of any version),
        evicting the least recently used others until the held bytes fit the budget.
        """
        with self._lock:
            old = self._held.pop(key, None)
            if old is not None:
                self._bytes -= old[1].nbytes
            self._held[key] = (version, tensor)
            self._bytes += tensor.nbytes
            while self._bytes > self.budget_bytes and len(self._held) > 1:
                _, (_, evicted) = self._held.popitem(last=False)
                self._bytes -= evicted.nbytes

    def stats(self) -> dict[str, float | int]:
        """What the actor reports: references held, GiB held and budgeted, hits and misses so far."""
        with self._lock:
            return {"held": len(self._held), "gib": round(self._bytes / 2**30, 3),
                    "budget_gib": round(self.budget_bytes / 2**30, 3), "hits": self.hits, "misses": self.misses}


class SharedReads(Generic[T]):
    """
    Values read once per key however many threads ask at once: a thread asking for a key that
    another is reading waits for that read and gets the same value. Thread-safe.

    A value stays shared until `forget` (the GPU actor forgets a reference once it is on the
    device, where the cache then serves it).
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, Future[T]] = {}
        self._lock = threading.Lock()
        #: Reads made, and asks answered by another thread's read.
        self.reads = 0
        self.shared = 0

    def get(self, key: Hashable, read: Callable[[], T]) -> T:
        """
        The value of ``key``: read by ``read()`` unless a read of it is under way or done and not
        forgotten.

        Raises
        ------
        Exception
            What ``read`` raised, in every thread that asked for that read (the key is then
            forgotten, so that a later ask reads again).
        """
        with self._lock:
            future = self._pending.get(key)
            owner = future is None
            if future is None:
                future = self._pending[key] = Future()
                self.reads += 1
            else:
                self.shared += 1
        if not owner:
            return future.result()
        try:
            value = read()
        except BaseException as exc:
            self.forget(key)
            future.set_exception(exc)
            raise
        future.set_result(value)
        return value

    def forget(self, key: Hashable) -> None:
        """Stop sharing ``key``'s value (threads that have it keep it)."""
        with self._lock:
            self._pending.pop(key, None)
