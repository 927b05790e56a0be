"""server.handouts: pullCompleted in two phases over a real store; a small fake stands in for the
peer's reserve/confirm (to order and fail them), and the clock is moved by the test."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from common import http
from server import handouts as handouts_module
from server.handouts import Handouts
from server.jobs import Outcome
from tests.unit.support import FakeClock, aio, insert_seq, opened_store, until

DIGEST = bytes(range(64))


def peer_item(n: int, completed_at: float) -> dict[str, Any]:
    return {"work_id": f"b.{n}.abcdef", "result": "ab" * 64, "iterations": 1, "completed_at": completed_at}


class FakePeer:
    """The peer client's hand-out calls; records them in `events` in order with everything else."""

    def __init__(self, events: list[Any], items: list[dict[str, Any]] | None = None) -> None:
        self.events = events
        self.items = items or []
        self.reserve_error: http.HttpError | None = None
        self.confirm_errors: list[http.HttpError] = []
        self.confirmed: list[str] = []
        self.reserved = 0

    async def reserve(self, top: int) -> tuple[str, list[dict[str, Any]]]:
        self.events.append(("reserve", top))
        await asyncio.sleep(0)
        if self.reserve_error:
            raise self.reserve_error
        self.reserved += 1
        return f"peer-h{self.reserved}", self.items[:top]

    async def confirm(self, handout: str) -> None:
        self.events.append(("confirm", handout))
        await asyncio.sleep(0)
        if self.confirm_errors:
            raise self.confirm_errors.pop(0)
        self.confirmed.append(handout)


async def finish(store, count: int) -> list[int]:
    seqs = []
    for i in range(count):
        seq = await insert_seq(store, f"n{i:02d}aaa", 1, b"x", 1.0)
        await store.finish([Outcome(seq, DIGEST)], "w", 10.0 + i)
        seqs.append(seq)
    return seqs


def responder(events: list[Any], error: BaseException | None = None):
    got: list[list[dict[str, Any]]] = []

    async def respond(items: list[dict[str, Any]]) -> None:
        events.append(("respond", [item["work_id"] for item in items]))
        if error is not None:
            raise error
        got.append(items)

    return respond, got


@contextlib.asynccontextmanager
async def confirming(handouts: Handouts):
    task = asyncio.ensure_future(handouts.confirm_loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("error", [ConnectionResetError("client gone"), asyncio.CancelledError()])
@aio
async def test_a_response_that_could_not_be_written_leaves_the_results_pullable(tmp_path, error):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = await finish(store, 3)
        events: list[Any] = []
        peer = FakePeer(events, [peer_item(1, 5.0)])
        handouts = Handouts(store, "a", peer, confirm_s=30.0, clock=FakeClock())
        respond, _ = responder(events, error)
        with pytest.raises(type(error)):
            await handouts.pull(5, respond)
        assert events == [("reserve", 2), ("respond", ["a.3.n02aaa", "a.2.n01aaa", "a.1.n00aaa", "b.1.abcdef"])]
        respond, got = responder(events)
        async with confirming(handouts):
            await handouts.pull(5, respond)
            await until(lambda: peer.confirmed, what="the second hand-out confirmed")
        assert [item["work_id"] for item in got[0][:3]] == [f"a.{s}.n{s - 1:02d}aaa" for s in reversed(seqs)]
        assert peer.confirmed == ["peer-h2"]  # the failed response's hand-out is never confirmed: it lapses


@aio
async def test_the_peers_hand_out_is_confirmed_only_after_the_response_is_written(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        await finish(store, 1)
        events: list[Any] = []
        peer = FakePeer(events, [peer_item(1, 50.0), peer_item(2, 1.0)])
        handouts = Handouts(store, "a", peer, confirm_s=30.0, clock=FakeClock())
        respond, _ = responder(events)
        async with confirming(handouts):
            await handouts.pull(3, respond)
            await until(lambda: peer.confirmed, what="the confirmation")
        assert events == [
            ("reserve", 2),  # asked only for what is left of top
            ("respond", ["b.1.abcdef", "a.1.n00aaa", "b.2.abcdef"]),  # newest first, both servers
            ("confirm", "peer-h1"),
        ]
        assert handouts.confirmed_total == 1
        assert await store.reserve(10, "again") == []  # ours were confirmed (delivered) too


@aio
async def test_a_peer_that_is_down_is_skipped_and_nothing_is_confirmed(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        await finish(store, 2)
        events: list[Any] = []
        peer = FakePeer(events, [peer_item(1, 50.0)])
        peer.reserve_error = http.Unavailable("peer timed out")
        handouts = Handouts(store, "a", peer, confirm_s=30.0, clock=FakeClock())
        respond, got = responder(events)
        async with confirming(handouts):
            await handouts.pull(5, respond)
            peer.reserve_error = None
            await handouts.pull(5, respond)
            await until(lambda: peer.confirmed, what="the second hand-out confirmed")
        assert [item["work_id"] for item in got[0]] == ["a.2.n01aaa", "a.1.n00aaa"]
        assert [item["work_id"] for item in got[1]] == ["b.1.abcdef"]  # it waited for the next pull
        assert [e for e in events if e[0] == "confirm"] == [("confirm", "peer-h1")]


@aio
async def test_confirming_with_the_peer_is_retried_until_its_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(handouts_module, "CONFIRM_ATTEMPTS_S", (0.0, 0.0, 0.0))  # four tries, no waiting
    async with opened_store(tmp_path / "jobs.db") as store:
        events: list[Any] = []
        peer = FakePeer(events, [peer_item(1, 50.0)])
        clock = FakeClock()
        handouts = Handouts(store, "a", peer, confirm_s=30.0, clock=clock)
        async with confirming(handouts):
            peer.confirm_errors = [http.Unavailable("peer busy")]
            await handouts.pull(1, responder(events)[0])  # h1: the second try goes through
            await until(lambda: "peer-h1" in peer.confirmed, what="h1 confirmed")
            peer.confirm_errors = [http.Unavailable("peer busy")] * 4
            await handouts.pull(1, responder(events)[0])  # h2: every try fails
            await until(lambda: ("confirm", "peer-h2") in events and not peer.confirm_errors, what="h2's tries")
            await handouts.pull(1, responder(events)[0])  # h3: its deadline passes before the first try
            clock.advance(31)
            await handouts.pull(1, responder(events)[0])  # h4: confirmed (the loop went past h2, h3)
            await until(lambda: "peer-h4" in peer.confirmed, what="h4 confirmed")
        tries = [e[1] for e in events if e[0] == "confirm"]
        assert tries == ["peer-h1"] * 2 + ["peer-h2"] * 4 + ["peer-h4"]
        assert handouts.confirmed_total == 2


@aio
async def test_a_peer_reservation_lapses_after_confirm_s_and_comes_back(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = await finish(store, 2)
        clock = FakeClock()
        handouts = Handouts(store, "b", None, confirm_s=30.0, clock=clock)
        reserved = await handouts.reserve_for_peer(10)
        assert [item["work_id"] for item in reserved["items"]] == ["b.2.n01aaa", "b.1.n00aaa"]
        assert (await handouts.reserve_for_peer(10))["items"] == []  # held for the first hand-out
        clock.step_wall(3600)  # a wall clock step changes nothing
        clock.advance(29.9)
        assert await handouts.expire() == 0
        assert await store.reserve(10, "own-pull") == []
        clock.advance(0.2)
        assert await handouts.expire() == 1
        assert handouts.lapsed_total == 2 and handouts.for_peer == {}
        assert await handouts.confirm_for_peer(reserved["handout"]) == 0  # lapsed: confirms nothing
        assert [r.seq for r in await store.reserve(10, "own-pull-2")] == list(reversed(seqs))


@aio
async def test_confirm_for_peer_marks_delivered_once_and_unknown_ids_confirm_nothing(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        await finish(store, 2)
        handouts = Handouts(store, "b", None, confirm_s=30.0, clock=FakeClock())
        empty = await handouts.reserve_for_peer(0)
        reserved = await handouts.reserve_for_peer(10)
        assert await handouts.confirm_for_peer("no-such-handout") == 0
        assert await handouts.confirm_for_peer(empty["handout"]) == 0
        assert await handouts.confirm_for_peer(reserved["handout"]) == 2
        assert await handouts.confirm_for_peer(reserved["handout"]) == 0
        assert await handouts.expire() == 0
        assert await store.reserve(10, "again") == []  # delivered for good


@aio
async def test_an_empty_pull_commits_nothing_and_confirms_nothing_with_the_peer(tmp_path):
    """Clients poll pullCompleted: with nothing to hand out, neither this server nor the peer
    writes (or syncs) anything, and no confirmation crosses to the peer."""
    async with opened_store(tmp_path / "jobs.db") as store:
        await finish(store, 1)
        events: list[Any] = []
        peer = FakePeer(events)  # the peer has nothing either
        handouts = Handouts(store, "a", peer, confirm_s=30.0, clock=FakeClock())
        respond, got = responder(events)
        async with confirming(handouts):
            await handouts.pull(5, respond)  # hands out the one result
            await asyncio.sleep(0)
            commits = store.db.commits
            for _ in range(3):
                await handouts.pull(5, respond)
            for _ in range(5):
                await asyncio.sleep(0)  # room for a confirmation to go out, were one queued
        assert [len(items) for items in got] == [1, 0, 0, 0]
        assert store.db.commits == commits
        assert [e for e in events if e[0] == "confirm"] == []
        assert (await handouts.reserve_for_peer(5))["items"] == []  # the peer's side of an empty pull
        assert store.db.commits == commits
        assert handouts.for_peer == {}  # nothing reserved, nothing to lapse
