"""worker.feeds.BatchFeed: native.Feed's contract over a batch hasher, in a real thread."""

from __future__ import annotations

import os
import select
import threading

import pytest

from native.reference import chain
from worker.feeds import BatchFeed


class GatedHasher:
    """Hashes with native.reference; each call waits for the test to open the gate first."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[int] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)
        self.error = error

    def __call__(self, jobs):
        self.calls.append(len(jobs))
        self.entered.release()
        assert self.gate.acquire(timeout=10), "the test never opened the gate"
        if self.error is not None:
            raise self.error
        return [chain(bytes(body), n) for body, n in jobs]


def test_jobs_pushed_during_a_round_make_the_next_one_and_a_push_after_the_end_is_refused():
    hasher = GatedHasher()
    feed = BatchFeed(hasher, capacity=3)
    assert feed.push(b"a", 1) == 0
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    feed.notify(wake)
    digests: list[list[bytes]] = []
    runner = threading.Thread(target=lambda: digests.append(feed.run()))
    runner.start()
    try:
        assert hasher.entered.acquire(timeout=10)
        assert feed.push(b"b", 2) == 1 and feed.push(b"c", 3) == 2
        assert feed.push(b"d", 1) is None  # past the capacity
        assert feed.finished() == []
        hasher.gate.release()  # round one: "a"
        assert select.select([wake], [], [], 10)[0] and os.eventfd_read(wake) >= 1
        assert feed.finished() == [(0, chain(b"a", 1))]
        assert hasher.entered.acquire(timeout=10)
        hasher.gate.release()  # round two: what came meanwhile
        runner.join(10)
    finally:
        os.close(wake)
    expected = [chain(b"a", 1), chain(b"b", 2), chain(b"c", 3)]
    assert hasher.calls == [1, 2] and digests == [expected]
    assert feed.finished(1) == [(1, expected[1]), (2, expected[2])]
    assert feed.push(b"e", 1) is None  # the run is over: the feed is closed


def test_a_hasher_error_ends_the_run_leaves_its_round_not_done_and_closes_the_feed():
    hasher = GatedHasher(error=RuntimeError("kernel fault"))
    feed = BatchFeed(hasher, capacity=4)
    feed.push(b"a", 1)
    hasher.gate.release()
    with pytest.raises(RuntimeError, match="kernel fault"):
        feed.run()
    assert feed.finished() == [] and feed.push(b"b", 1) is None


def test_a_hasher_giving_the_wrong_number_of_digests_is_an_error():
    feed = BatchFeed(lambda jobs: [], capacity=2)
    feed.push(b"a", 1)
    with pytest.raises(ValueError, match="0 digests for 1 jobs"):
        feed.run()
