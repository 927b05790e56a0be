"""client.api.DynworkClient, the library under `dynwork`, against scripted servers on loopback
ports: which server each call goes to, when it moves on, and what it raises."""

from __future__ import annotations

import time

import pytest

from client.api import DynworkClient, work_path
from common.http import NotFound, Unavailable
from tests.unit.fake_http_server import Reply, dead_url, error, serving, silent_url
from tests.unit.support import aio

QUEUED = {"work_id": "s1.1.abcdef", "status": "queued"}
DONE = {"work_id": "s1.1.abcdef", "status": "completed", "result": "ab"}


def test_work_paths_quote_the_id_and_carry_the_wait():
    assert work_path("s1.1.abc") == "/work/s1.1.abc"
    assert work_path("../../etc/passwd", 2.5) == "/work/..%2F..%2Fetc%2Fpasswd?wait=2.5"


@aio
async def test_enqueues_take_turns_over_the_servers():
    async with (
        serving(Reply(200, {"work_id": "a.1.x"})) as a,
        serving(Reply(200, {"work_id": "b.1.x"})) as b,
        DynworkClient([a.url, b.url]) as dynwork,
    ):
        ids = [await dynwork.enqueue(bytes([i]), 3) for i in range(4)]
    assert sorted(ids) == ["a.1.x", "a.1.x", "b.1.x", "b.1.x"] and ids[0] != ids[1]
    assert {h.path_qs for h in a.hits + b.hits} == {"/enqueue?iterations=3"}
    assert sorted(h.body for h in a.hits + b.hits) == [b"\x00", b"\x01", b"\x02", b"\x03"]


@aio
async def test_an_enqueue_moves_on_only_when_nothing_was_stored():
    async with serving(error(503, "queue is full")) as full, serving(Reply(200, {"work_id": "b.1.x"})) as good:
        for first in (dead_url(), full.url):
            async with DynworkClient([first, good.url]) as dynwork:
                for _ in range(2):  # whichever server the round-robin starts with
                    assert await dynwork.enqueue(b"x", 1) == "b.1.x"
        with silent_url() as silent:
            async with DynworkClient([silent, good.url], timeout_s=1.0) as dynwork:
                outcomes: list[str | Exception] = []
                for _ in range(2):  # successive enqueues start at successive servers: one at the silent one
                    try:
                        outcomes.append(await dynwork.enqueue(b"x", 1))
                    except Unavailable as exc:
                        outcomes.append(exc)
    lost = [o for o in outcomes if isinstance(o, Exception)]
    assert len(lost) == 1 and "b.1.x" in outcomes
    assert "timed out" in str(lost[0]) and "may or may not have been applied" in str(lost[0])
    assert len(good.hits) == 5  # the lost one was not sent to it as well


@aio
async def test_get_reads_from_whichever_server_answers_and_404_is_final():
    async with (
        serving(Reply(200, b"<html>a proxy</html>")) as garbage,
        serving(Reply(200, QUEUED)) as good,
        DynworkClient([dead_url(), garbage.url, good.url]) as dynwork,
    ):
        assert await dynwork.get("s1.1.abcdef") == QUEUED
    async with (
        serving(error(404, "unknown work id")) as missing,
        serving(Reply(200, QUEUED)) as good,
        DynworkClient([missing.url, good.url]) as dynwork,
    ):
        with pytest.raises(NotFound) as exc:
            await dynwork.get("s1.9.zzzzzz")
    assert exc.value.reason == "HTTP 404: unknown work id" and good.hits == []


@aio
async def test_wait_long_polls_until_finished_and_rides_out_a_restart():
    replies = (Reply(200, QUEUED), error(503, "shutting down"), Reply(200, DONE))
    async with serving(*replies) as server, DynworkClient([server.url]) as dynwork:
        assert await dynwork.wait("s1.1.abcdef") == DONE
    assert [h.path_qs for h in server.hits] == ["/work/s1.1.abcdef?wait=10"] * 3


@aio
async def test_run_takes_a_result_from_the_enqueue_answer_and_waits_for_the_others():
    async with serving(Reply(200, DONE)) as server, DynworkClient([server.url]) as dynwork:
        assert await dynwork.run(b"x", 1) == DONE  # hashed on arrival: the answer had it
    assert [h.path_qs for h in server.hits] == ["/enqueue?iterations=1"]  # no GET /work
    async with serving(Reply(200, QUEUED), Reply(200, DONE)) as server, DynworkClient([server.url]) as dynwork:
        assert await dynwork.run(b"x", 1000) == DONE
    assert [h.path_qs for h in server.hits] == ["/enqueue?iterations=1000", "/work/s1.1.abcdef?wait=10"]


@aio
async def test_wait_returns_the_latest_status_at_its_deadline_and_gives_up_on_dead_servers():
    async with serving(Reply(200, QUEUED)) as server, DynworkClient([server.url]) as dynwork:
        assert await dynwork.wait("s1.1.abcdef", deadline=time.monotonic() + 0.2) == QUEUED
    async with DynworkClient([dead_url()]) as dynwork:
        with pytest.raises(Unavailable, match="connection refused"):
            await dynwork.wait("s1.1.abcdef", grace_s=0.2)


@aio
async def test_pull_is_not_repeated_after_a_lost_answer_and_checks_its_shape():
    async with serving(error(500, "boom")) as broken, serving(Reply(200, [DONE])) as good:
        async with DynworkClient([broken.url, good.url]) as dynwork:
            with pytest.raises(Unavailable, match="may or may not have been applied"):
                await dynwork.pull(5)
            assert good.hits == []
        async with DynworkClient([good.url]) as dynwork:
            assert await dynwork.pull(5) == [DONE]
    assert good.hits[0].path_qs == "/pullCompleted?top=5" and good.hits[0].method == "POST"
    async with serving(Reply(200, {"not": "a list"})) as odd, DynworkClient([odd.url]) as dynwork:
        with pytest.raises(Unavailable, match="not a list"):
            await dynwork.pull(5)


@aio
async def test_status_asks_every_server_and_says_why_one_is_down():
    dead = dead_url()
    async with (
        serving(Reply(200, {"server": "s1"})) as up,
        serving(error(500, "db gone")) as sick,
        DynworkClient([up.url, dead, sick.url]) as dynwork,
    ):
        entries = await dynwork.status()
    assert entries == [
        {"url": up.url, "up": True, "status": {"server": "s1"}},
        {"url": dead, "up": False, "error": "connection refused"},
        {"url": sick.url, "up": False, "error": "HTTP 500: db gone"},
    ]
