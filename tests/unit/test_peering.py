"""server.peering: loans kept in step between two servers across partitions and restarts (a
hypothesis property over real Peering, Loans and stores), and the revoked-worker list."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from common import http
from server import peering as peering_module
from server.loans import Loans
from server.peering import LENT_KEY, REVOKED_KEY, Peering, Revocations
from server.store import Store
from tests.unit.support import FakeClock, aio, opened_store


class Link:
    """The borrower's way to its lender: the lender's real Peering.sync, or a partition (the
    request lost on the way, or the lender's answer lost on the way back)."""

    def __init__(self) -> None:
        self.lender: Side | None = None
        self.fault: str | None = None

    async def sync(self, payload: dict) -> tuple[int, list[str]]:
        assert self.lender is not None
        if self.fault == "request lost":
            raise http.Unavailable("partitioned")
        answer = await self.lender.peering.sync(payload["want_borrow"], payload["in_use"], payload["revoked"])
        if self.fault == "reply lost":
            raise http.Unavailable("timed out")
        return answer["granted"], answer["revoked"]


class Side:
    """One server as loans see it: the fleet it wants and has, its store (kept across restarts)."""

    def __init__(self, name: str, max_workers: int, store, clock: FakeClock) -> None:
        self.name, self.max_workers, self.store, self.clock = name, max_workers, store, clock
        self.link = Link()
        self.wanted = 0
        self.have = 0

    async def boot(self) -> None:
        """Start (or restart) the server process: memory is lost, the store is not."""
        self.loans = Loans(self.max_workers)
        self.revocations = Revocations(self.store, self.clock)
        self.peering = Peering(
            self.name, loans=self.loans, revocations=self.revocations, store=self.store, peer=self.link, fleet=self
        )
        await self.revocations.load()
        await self.peering.load()

    def fleet_size(self) -> int:
        return self.have

    def launch(self) -> None:
        """The autoscaler launches up to what it wants, never beyond what it is allowed."""
        self.have = max(self.have, min(self.wanted, self.loans.allowed))


ACTIONS = st.one_of(
    st.tuples(st.just("want"), st.sampled_from([0, 1, 2, 3, 5, 8])),
    st.tuples(st.just("leave"), st.integers(1, 3)),  # idle workers exit
    st.tuples(st.just("sync"), st.sampled_from([None, None, "request lost", "reply lost"])),
    st.tuples(st.just("launch"), st.none()),
    # a restart: its workers stop with it, or it adopts them (only where it has borrowed nothing,
    # that is a lender's restart: see test_a_restarted_borrower_keeps_the_quota_its_workers_use)
    st.tuples(st.just("restart"), st.sampled_from(["workers stop", "workers adopted"])),
)
STEPS = st.lists(st.tuples(st.integers(0, 1), ACTIONS), max_size=40)


async def play(sides: list[Side], steps, *, adopt_borrowed: bool = False) -> None:
    for index, (what, arg) in steps:
        side = sides[index]
        if what == "want":
            side.wanted = arg
        elif what == "leave":
            side.have = max(0, side.have - arg)
        elif what == "sync":
            side.link.fault = arg
            await side.peering.sync_once()
        elif what == "launch":
            side.launch()
        else:
            if arg == "workers stop" or (side.loans.borrowed and not adopt_borrowed):
                side.have = 0
            await side.boot()
        total = sides[0].have + sides[1].have
        assert total <= sides[0].max_workers + sides[1].max_workers, [vars(s.loans) for s in sides]
        assert all(s.loans.lent >= 0 and s.loans.borrowed >= 0 for s in sides)


async def pair(stores, max_a: int, max_b: int) -> list[Side]:
    """Servers a and b, each the other's lender, started on empty state."""
    for store in stores:
        await store.db.run(lambda c: c.execute("DELETE FROM meta WHERE key != 'server_name'"))
    clock = FakeClock()
    sides = [Side("a", max_a, stores[0], clock), Side("b", max_b, stores[1], clock)]
    sides[0].link.lender, sides[1].link.lender = sides[1], sides[0]
    for side in sides:
        await side.boot()
    return sides


def test_the_two_fleets_never_exceed_both_maxima(tmp_path):
    """Random wishes, departures, syncs (some partitioned either way), launches and restarts, on
    both servers in any order: after every step the fleets together fit both maxima."""
    loop = asyncio.new_event_loop()  # one loop for every example: the stores are opened once
    stores = [Store(tmp_path / f"{name}.db", synchronous="NORMAL") for name in ("a", "b")]
    try:
        for store in stores:
            loop.run_until_complete(store.start())

        @settings(max_examples=300, deadline=None)
        @given(st.integers(0, 4), st.integers(0, 4), STEPS)
        def check(max_a, max_b, steps):
            async def example() -> None:
                await play(await pair(stores, max_a, max_b), steps)

            loop.run_until_complete(example())

        check()
    finally:
        for store in stores:
            loop.run_until_complete(store.close())
        loop.close()


LENDER_RESTART_IN_A_PARTITION = [
    (1, ("want", 3)),
    (1, ("sync", None)),  # b borrows 3 of a's 3
    (1, ("launch", None)),
    (0, ("restart", "workers adopted")),  # a restarts: it must still know it lent 3
    (0, ("want", 3)),
    (1, ("sync", "request lost")),  # and the partition keeps b from giving anything back
    (1, ("sync", "reply lost")),
    (0, ("launch", None)),
    (0, ("restart", "workers adopted")),
    (1, ("leave", 1)),
    (1, ("sync", None)),  # now b gives back what it no longer uses
    (0, ("launch", None)),
]


@aio
async def test_a_lender_restart_and_a_partition_keep_the_loan(tmp_path):
    async with opened_store(tmp_path / "a.db") as store_a, opened_store(tmp_path / "b.db") as store_b:
        a, b = await pair([store_a, store_b], 3, 0)
        await play([a, b], LENDER_RESTART_IN_A_PARTITION[:9])
        assert (a.loans.lent, a.have, b.have) == (3, 0, 3)
        assert await store_a.get_meta(LENT_KEY) == "3"
        await play([a, b], LENDER_RESTART_IN_A_PARTITION[9:])
        assert (a.loans.lent, a.have, b.have) == (2, 1, 2)


BORROWER_RESTART = [
    (1, ("want", 2)),
    (1, ("sync", None)),  # b borrows a's 2
    (1, ("launch", None)),  # and runs 2 workers on them
    (1, ("restart", "workers adopted")),  # b restarts and adopts its 2 workers
    (0, ("want", 2)),  # a wants its quota back
    (1, ("sync", None)),  # b reports none of them as in use (it forgot it borrowed)
    (0, ("launch", None)),  # a launches 2 while b still runs 2: 4 workers for 2 + 0
]


@aio
async def test_a_restarted_borrower_keeps_the_quota_its_workers_use(tmp_path):
    async with opened_store(tmp_path / "a.db") as store_a, opened_store(tmp_path / "b.db") as store_b:
        sides = await pair([store_a, store_b], 2, 0)
        await play(sides, BORROWER_RESTART, adopt_borrowed=True)


@aio
async def test_the_lender_saves_what_it_lent_before_answering_and_reloads_it_capped(tmp_path):
    async with opened_store(tmp_path / "a.db") as store:
        side = Side("a", 4, store, FakeClock())
        await side.boot()
        side.wanted, side.have = 1, 1
        answer = await side.peering.sync(want=5, in_use=0, revoked=["w9"])
        assert answer == {"name": "a", "granted": 3, "revoked": ["w9"]}
        assert await store.get_meta(LENT_KEY) == "3"
        commits = store.db.commits
        await side.peering.sync(want=5, in_use=0, revoked=[])
        assert store.db.commits == commits  # unchanged: not written again
        side.max_workers = 2  # restarted with a smaller maximum: never lends more than it has
        await side.boot()
        assert side.loans.lent == 2
        await store.set_meta(LENT_KEY, "garbage")
        await side.boot()
        assert side.loans.lent == 0


@aio
async def test_a_failed_sync_keeps_only_what_runs_on_the_loan(tmp_path):
    async with opened_store(tmp_path / "a.db") as store_a, opened_store(tmp_path / "b.db") as store_b:
        a, b = await pair([store_a, store_b], 0, 5)
        a.wanted = 4
        await a.peering.sync_once()
        a.launch()
        assert (a.loans.borrowed, a.have) == (4, 4)
        a.have = 1
        a.link.fault = "request lost"
        await a.peering.sync_once()
        assert (a.loans.borrowed, a.loans.allowed, b.loans.lent) == (1, 1, 4)


@aio
async def test_revocations_travel_with_the_sync_both_ways(tmp_path):
    async with opened_store(tmp_path / "a.db") as store_a, opened_store(tmp_path / "b.db") as store_b:
        a, b = await pair([store_a, store_b], 1, 1)
        a.revocations.revoke(["reaped-by-a"])
        b.revocations.revoke(["reaped-by-b"])
        await a.peering.sync_once()
        assert "reaped-by-a" in b.revocations and "reaped-by-b" in a.revocations
        assert json.loads(await store_a.get_meta(REVOKED_KEY)).keys() == {"reaped-by-a", "reaped-by-b"}


@aio
async def test_revocations_recent_save_load_and_prune(tmp_path):
    async with opened_store(tmp_path / "a.db") as store:
        clock = FakeClock()
        revoked = Revocations(store, clock)
        await revoked.load()
        revoked.revoke(["w1", "w2", 7, "x" * 129, "w1"])  # not a worker id: ignored
        assert "w1" in revoked and "w2" in revoked and "x" * 129 not in revoked
        assert revoked.recent() == ["w1", "w2"]
        commits = store.db.commits
        await revoked.save()
        await revoked.save()  # nothing changed: nothing written
        assert store.db.commits == commits + 1
        clock.step_wall(-2 * peering_module.REVOKED_KEEP_S)  # a wall step neither ages nor renews them
        clock.advance(peering_module.SHARE_RECENT_S + 1)
        revoked.revoke(["w3"])
        assert revoked.recent() == ["w3"]  # old ones are no longer told to the peer ...
        assert "w1" in revoked  # ... but still refused
        reloaded = Revocations(store, clock)
        await reloaded.load()
        assert "w1" in reloaded and "w3" not in reloaded  # w3 is not saved yet
        clock.advance(peering_module.REVOKED_KEEP_S)
        await revoked.save()  # w1 and w2 are a day old now: dropped
        reloaded = Revocations(store, clock)
        await reloaded.load()
        assert ("w1" in reloaded, "w2" in reloaded, "w3" in reloaded) == (False, False, True)


@aio
async def test_an_unreadable_saved_list_is_ignored(tmp_path):
    async with opened_store(tmp_path / "a.db") as store:
        for raw in ("not json", "[1, 2]", '{"w1": "yesterday"}'):
            await store.set_meta(REVOKED_KEY, raw)
            revoked = Revocations(store, FakeClock())
            await revoked.load()
            assert "w1" not in revoked and revoked.recent() == []
