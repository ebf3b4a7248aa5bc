"""`ordered_map`: results in the items' order, a bounded number of items taken ahead, errors passed on."""

from __future__ import annotations

import threading
import time

import pytest

from skyblink.threads import ordered_map


@pytest.mark.parametrize("threads", [1, 3])
def test_results_come_in_order_and_items_are_taken_a_bounded_number_ahead(threads: int) -> None:
    taken: list[int] = []

    def items():
        for i in range(20):
            taken.append(i)
            yield i

    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0.0)  # later items finish first
        return i * i

    seen = []
    for result in ordered_map(slow_first, items(), threads=threads, ahead=4):
        seen.append(result)
        assert len(taken) - len(seen) <= (4 if threads > 1 else 0)
    assert seen == [i * i for i in range(20)]


def test_an_error_is_passed_on_and_the_rest_is_not_started() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def fail_at_two(i: int) -> int:
        with lock:
            started.append(i)
        if i == 2:
            raise ValueError("item 2")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="item 2"):
        list(ordered_map(fail_at_two, range(1000), threads=2, ahead=4))
    assert len(started) < 20
