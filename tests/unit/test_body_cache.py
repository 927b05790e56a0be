"""server.body_cache: small bodies handed from enqueue to their first lease without a read, within
a byte budget; and server.store using it (a second lease, a finished job, a backlog read rows)."""

from __future__ import annotations

import os

from server.body_cache import FreshBodies
from server.jobs import Outcome
from server.store import INLINE_BODY_BYTES
from tests.unit.support import aio, opened_store

DIGEST = bytes(range(64))


def test_bodies_are_kept_within_the_budget_and_handed_out_once():
    fresh = FreshBodies(budget=10)
    fresh.keep(1, b"abcd")
    fresh.keep(2, b"")
    fresh.keep(3, b"efghij")  # exactly fills the budget
    fresh.keep(4, b"k")  # over it: not kept
    assert (len(fresh), fresh.held_bytes) == (3, 10)
    assert [fresh.take(s) for s in (1, 2, 3, 4)] == [b"abcd", b"", b"efghij", None]
    assert fresh.take(1) is None  # once
    assert (len(fresh), fresh.held_bytes) == (0, 0)
    fresh.keep(5, b"x")
    fresh.forget([5, 6])
    assert (len(fresh), fresh.held_bytes) == (0, 0)


@aio
async def test_the_first_lease_gets_the_kept_body_and_a_later_one_reads_the_row(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        small, big = os.urandom(100), os.urandom(INLINE_BODY_BYTES + 1)
        s, _ = await store.insert("ssssss", 1, small, 1.0)
        b, where = await store.insert("bbbbbb", 1, big, 1.0)
        assert (len(store.fresh), store.fresh.held_bytes) == (1, len(small))  # segments are not kept
        wanted = [(s, len(small), None), (b, len(big), where)]
        assert store.read_bodies(wanted) == {s: small, b: big}
        assert len(store.fresh) == 0
        assert store.read_bodies(wanted) == {s: small, b: big}  # the lease expired: from the row


@aio
async def test_a_finished_job_is_forgotten_and_never_handed_out(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        s, _ = await store.insert("ssssss", 1, b"body", 1.0)
        assert await store.finish([Outcome(s, DIGEST, None)], "w1", 2.0) == [s]
        assert len(store.fresh) == 0
        assert store.read_bodies([(s, 4, None)]) == {}


@aio
async def test_past_the_budget_bodies_are_read_from_their_rows(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        store.fresh.budget = 150
        bodies = [os.urandom(100), os.urandom(100)]
        seqs = [(await store.insert("nnnnnn", 1, body, 1.0))[0] for body in bodies]
        assert len(store.fresh) == 1  # the second did not fit
        assert store.read_bodies([(s, 100, None) for s in seqs]) == dict(zip(seqs, bodies, strict=True))
