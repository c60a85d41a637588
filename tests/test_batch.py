"""The folder runner's pixel budget: with one worker, large photos go one at a time, small ones in pairs."""

from __future__ import annotations

import threading
import time

from cutq_runtime.batch import PixelBudget


def _overlap(budget: PixelBudget, first: int, second: int) -> bool:
    """Whether a second hold of `second` pixels starts while a first of `first` pixels is still held."""
    inside, started = threading.Event(), threading.Event()

    def hold_first() -> None:
        with budget.hold(first):
            inside.set()
            time.sleep(0.3)  # the second thread has this long to get in beside it

    def hold_second() -> None:
        inside.wait()
        with budget.hold(second):
            started.set()

    threads = [threading.Thread(target=hold_first), threading.Thread(target=hold_second)]
    for thread in threads:
        thread.start()
    overlapped = started.wait(0.2)
    for thread in threads:
        thread.join()
    assert started.is_set() and budget.used == 0  # the second always gets its turn, and everything is given back
    return overlapped


def test_small_photos_share_the_budget_and_a_large_one_waits() -> None:
    budget = PixelBudget(4_000_000)
    assert _overlap(budget, 400_000, 400_000)
    assert not _overlap(budget, 400_000, 12_000_000)  # a 12 MP photo waits for the small one to finish
    assert not _overlap(budget, 12_000_000, 400_000)  # and nothing joins it


def test_one_photo_over_the_budget_still_runs() -> None:
    budget = PixelBudget(1_000)
    with budget.hold(50_000_000):
        assert budget.used == 50_000_000
    assert budget.used == 0
