"""Hashing on arrival: a job of few iterations (--hash-on-arrival), whatever its body's size, is
hashed by the server that accepts it, its body as it streams in, and stored finished, with its
result, in the enqueue's own durable commit; its body is never stored. Everything else goes to
the fleet."""

from __future__ import annotations

import os

import pytest

from server.errors import Unavailable
from server.jobs import State
from tests.native_support import load_vectors
from tests.native_support import reference as chain
from tests.unit.service_support import Upload, lease, pull
from tests.unit.support import aio, opened_node


@aio
async def test_a_cheap_job_is_finished_when_its_id_is_returned_with_its_result_and_never_queued(tmp_path):
    async with opened_node(tmp_path, hash_on_arrival=512) as node:
        service = node.service
        accepted = await service.enqueue(3, Upload(b"payload"))
        assert accepted.result == chain(b"payload", 3)  # the answer carries it: no GET /work needed
        work_id = accepted.work_id
        status = await service.work(str(work_id), 0, history=True)
        assert (status["status"], status["result"]) == ("completed", chain(b"payload", 3).hex())
        assert status["history"]["leases"] == [] and status["history"]["finished_at"] == status["enqueued_at"]
        assert node.scheduler.queued == {} and node.scheduler.backlog_cost == 0  # no worker is wanted
        assert (await lease(service)).jobs == []
        (item,) = await pull(service, 10)
        assert item["work_id"] == str(work_id) and item["result"] == chain(b"payload", 3).hex()
        assert node.store.counts() == {State.COMPLETED: 1}
        assert node.scheduler.jobs_per_s() > 0


@aio
async def test_the_known_answers_come_out_right_when_hashed_on_arrival(tmp_path):
    vectors = load_vectors()
    async with opened_node(tmp_path, hash_on_arrival=2 * 10**6) as node:  # every vector
        answers = [await node.service.enqueue(iterations, Upload(body)) for body, iterations, _ in vectors]
        for accepted, (_, _, expected) in zip(answers, vectors, strict=True):
            assert accepted.result == expected
            status = await node.service.work(str(accepted.work_id), 0)
            assert (status["status"], status["result"]) == ("completed", expected.hex())


@aio
async def test_the_threshold_counts_iterations_only_and_a_dearer_job_is_queued(tmp_path):
    big = os.urandom(300_000)  # thousands of 128-byte blocks: hashing them costs less than storing them
    async with opened_node(tmp_path, hash_on_arrival=10) as node:
        at_limit = (await node.service.enqueue(10, Upload(big))).work_id
        dear = os.urandom(10_000)  # big enough for a segment file (server/store.py, INLINE_BODY_BYTES)
        queued = await node.service.enqueue(11, Upload(dear))
        assert queued.result is None  # no result yet to answer with
        over = queued.work_id
        status = await node.service.work(str(at_limit), 0)
        assert (status["status"], status["result"]) == ("completed", chain(big, 10).hex())
        assert (await node.service.work(str(over), 0))["status"] == "queued"
        (job,) = (await lease(node.service)).jobs
        assert (job.work_id, job.iterations, job.body) == (over, 11, dear)
        bodies = node.store.bodies
        assert sum(bodies.path(s).stat().st_size for s in bodies.segments()) == len(dear)  # big's: never stored


@aio
async def test_zero_sends_every_job_to_the_fleet(tmp_path):
    async with opened_node(tmp_path, hash_on_arrival=0) as node:
        work_id = (await node.service.enqueue(1, Upload(b""))).work_id
        assert (await node.service.work(str(work_id), 0))["status"] == "queued"


@aio
async def test_a_result_hashed_on_arrival_survives_a_restart_and_is_pullable_once(tmp_path):
    async with opened_node(tmp_path, hash_on_arrival=512) as node:
        work_id = (await node.service.enqueue(2, Upload(b"kept"))).work_id
    # a new node on the same state dir (as after a restart) has the result, pullable once
    async with opened_node(tmp_path, hash_on_arrival=512) as node:
        status = await node.service.work(str(work_id), 0)
        assert (status["status"], status["result"]) == ("completed", chain(b"kept", 2).hex())
        assert [item["work_id"] for item in await pull(node.service, 10)] == [str(work_id)]
        assert node.store.counts() == {State.COMPLETED: 1}


@aio
async def test_a_full_queue_still_takes_a_job_hashed_on_arrival_announced_or_not(tmp_path):
    async with opened_node(tmp_path, hash_on_arrival=512, max_queued=1) as node:
        service = node.service
        await service.enqueue(10_000, Upload(b"dear"))  # the queue is full now
        cheap = (await service.enqueue(1, Upload(b"cheap"))).work_id
        chunked = (await service.enqueue(1, Upload(b"chunked", content_length=None))).work_id
        assert (await service.work(str(cheap), 0))["result"] == chain(b"cheap", 1).hex()
        assert (await service.work(str(chunked), 0))["result"] == chain(b"chunked", 1).hex()
        with pytest.raises(Unavailable):
            await service.enqueue(10_000, Upload(b"dear"))
        assert service.uploading == 0 and len(node.scheduler.queued) == 1


@aio
async def test_the_event_log_says_a_job_was_hashed_on_arrival(tmp_path, caplog):
    caplog.set_level("INFO", logger="dynwork.events")
    async with opened_node(tmp_path, hash_on_arrival=512) as node:
        work_id = (await node.service.enqueue(1, Upload(b"logged"))).work_id
    assert f"completed {work_id} by this server, on arrival" in caplog.messages
