"""
The GPU actor's reference CCDs on the device: kept within a byte budget, least recently used out
first; on the host, read once for the calls of a CCD prepared at once.
"""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from skyblink.workers.reference_cache import ReferenceCache, SharedReads  # noqa: E402 - after the importorskip


def _ccd(mib: int) -> torch.Tensor:
    return torch.zeros(mib * 2**18)  # float32: 4 bytes a pixel


def test_a_night_of_revisits_reads_each_reference_once_when_the_budget_holds_them() -> None:
    cache = ReferenceCache(budget_bytes=64 * 2**20)
    fields = [("store", f"references/F{f}", f"ccd{c:03d}") for f in range(3) for c in range(4)]  # 12 x 4 MiB
    reads = 0
    for _visit in range(3):
        for key in fields:
            if cache.get(key, "write-1") is None:
                reads += 1
                cache.add(key, _ccd(4), "write-1")
    assert reads == len(fields)
    assert (cache.hits, cache.misses) == (2 * len(fields), len(fields))
    assert cache.stats() == {"held": 12, "gib": 0.047, "budget_gib": 0.062, "hits": 24, "misses": 12}


def test_the_least_recently_used_reference_leaves_first_and_the_budget_is_kept() -> None:
    cache = ReferenceCache(budget_bytes=10 * 2**20)
    for name in "abc":
        cache.add(name, _ccd(3))
    assert cache.get("a") is not None  # a is now the most recent: b leaves first
    cache.add("d", _ccd(3))
    assert not cache.holds("b") and all(cache.holds(k) for k in "acd")
    assert cache.nbytes == 9 * 2**20 <= cache.budget_bytes
    cache.add("e", _ccd(6))
    assert [cache.holds(k) for k in "acde"] == [False, False, True, True]
    assert cache.nbytes == 9 * 2**20


def test_a_reference_larger_than_the_budget_is_kept_alone_while_in_use() -> None:
    cache = ReferenceCache(budget_bytes=0)
    cache.add("a", _ccd(1))
    assert cache.holds("a") and len(cache) == 1
    cache.add("b", _ccd(1))
    assert not cache.holds("a") and cache.holds("b") and cache.nbytes == 2**20


def test_a_reference_ingested_again_is_read_again_and_replaces_its_old_version() -> None:
    cache = ReferenceCache(budget_bytes=100 * 2**20)
    key = ("s", "references/F0", "ccd000")
    cache.add(key, _ccd(2), "write-1")
    assert cache.get(key, "write-2") is None and not cache.holds(key, "write-2")  # another version: read again
    assert cache.holds(key, "write-1")
    cache.add(key, _ccd(3), "write-1")
    assert cache.nbytes == 3 * 2**20 and len(cache) == 1  # replacing one counts its bytes once
    cache.add(("s", "references/F1", "ccd000"), _ccd(1), "write-1")
    cache.add(key, _ccd(2), "write-2")  # the new version replaces the old one's pixels on the device
    assert not cache.holds(key, "write-1") and cache.get(key, "write-2") is not None
    assert len(cache) == 2 and cache.nbytes == 3 * 2**20


def test_a_negative_budget_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="got -1"):
        ReferenceCache(budget_bytes=-1)


def test_threads_adding_and_getting_keep_the_bytes_consistent() -> None:
    cache = ReferenceCache(budget_bytes=20 * 2**20)

    def work(offset: int) -> None:
        for i in range(200):
            key = (offset + i) % 16
            if cache.get(key) is None:
                cache.add(key, _ccd(1 + key % 3))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [cache.get(k) for k in range(16)]
    assert cache.nbytes == sum(t.numel() * 4 for t in held if t is not None) <= cache.budget_bytes
    assert cache.hits + cache.misses == 4 * 200 + 16


def test_calls_of_one_ccd_prepared_at_once_share_one_read_of_its_reference() -> None:
    shared: SharedReads[torch.Tensor] = SharedReads()
    started, release = threading.Event(), threading.Event()
    reads = []

    def read() -> torch.Tensor:
        reads.append(1)
        started.set()
        release.wait(5)  # the read is slow: the other calls ask meanwhile
        return _ccd(1)

    got: list[torch.Tensor] = []
    first = threading.Thread(target=lambda: got.append(shared.get("references/F0/ccd000", read)))
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=lambda: got.append(shared.get("references/F0/ccd000", read))) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join()
    assert len(reads) == 1 and len(got) == 4 and all(t is got[0] for t in got)
    assert (shared.reads, shared.shared) == (1, 3)
    shared.forget("references/F0/ccd000")  # on the device now: a later call would be served there
    shared.get("references/F0/ccd000", read)
    assert len(reads) == 2


def test_a_failed_reference_read_fails_every_call_waiting_for_it_and_is_read_again_later() -> None:
    shared: SharedReads[torch.Tensor] = SharedReads()
    gate = threading.Event()

    def broken() -> torch.Tensor:
        gate.wait(5)
        msg = "chunk checksum mismatch in references/F0/ccd000"
        raise ValueError(msg)

    errors: list[str] = []

    def ask() -> None:
        try:
            shared.get("k", broken)
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert errors == ["chunk checksum mismatch in references/F0/ccd000"] * 3
    assert shared.get("k", lambda: _ccd(1)).numel() == 2**18  # the store was repaired: read anew
