"""
Many items through a function in threads, results in order, a bounded number ahead: how the
pipeline reads a file's CCDs, writes them into the store and builds alert packets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, threads: int, ahead: int | None = None,
                name: str = "worker") -> Iterator[R]:
    """
    Yield ``fn(item)`` for each item, in the items' order, computing up to ``threads`` at once.

    Parameters
    ----------
    fn : callable
        Called in the pool's threads (worth it where it releases the GIL: I/O, zlib, numpy).
    items : iterable
        Taken lazily, in the caller's thread, as room frees up.
    threads : int
        Threads; 1 or fewer runs ``fn`` in the caller's thread, one item at a time.
    ahead : int, optional
        Items submitted and not yet yielded, at most (default ``2 * threads``): what bounds the
        memory held for results the consumer has not taken.
    name : str
        Prefix of the threads' names.

    Yields
    ------
    The results, in order.

    Raises
    ------
    Exception
        Whatever ``fn`` or ``items`` raise; the submitted items not yet started are then dropped
        and the running ones finish first.
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    ahead = ahead or 2 * threads
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
