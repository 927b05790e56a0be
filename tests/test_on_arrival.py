"""Hashing on arrival with real servers at their default threshold and no worker at all: a job of
few iterations, whatever its size and however its body comes (announced or chunked), is finished
by the server that accepts it, readable and pullable through either server, and survives a kill -9
right after its acknowledgement; a job of more iterations waits for the fleet."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request

from client.api import DynworkClient
from server.config import ServerSettings
from tests.cluster import http, reference

DEFAULT = ServerSettings().hash_on_arrival


def test_cheap_jobs_are_done_without_a_worker_and_dear_ones_wait_for_one(make_cluster):
    assert DEFAULT > 0
    c = make_cluster(launcher="none", hash_on_arrival=DEFAULT)
    bodies = [os.urandom(n) for n in (0, 64, 111, 112, 4096, 256 << 10, 1 << 20)]
    cheap = [c.a.enqueue(body, 2) for body in bodies]
    dear = c.a.enqueue(b"x", DEFAULT + 1)  # one iteration over the threshold
    for work_id, body in zip(cheap, bodies, strict=True):
        status = c.b.work(work_id).json()  # through the peer: the job lives on a
        assert (status["status"], status["result"]) == ("completed", reference(body, 2))
    assert c.a.work(dear).json()["status"] == "queued"
    assert c.a.status()["queued"] == 1
    pulled = c.b.pull(100)  # b hands out a's results too
    assert sorted(item["work_id"] for item in pulled) == sorted(cheap)


def test_the_enqueue_answer_carries_the_result_of_a_job_hashed_on_arrival(make_cluster):
    c = make_cluster(launcher="none", hash_on_arrival=DEFAULT)
    body = os.urandom(100_000)
    cheap = http("PUT", f"{c.a.url}/enqueue?iterations=3", data=body).json()
    assert (cheap["status"], cheap["result"]) == ("completed", reference(body, 3))
    assert c.a.work(cheap["work_id"]).json()["result"] == cheap["result"]
    dear = http("PUT", f"{c.a.url}/enqueue?iterations={DEFAULT + 1}", data=body).json()
    assert dear["status"] == "queued" and "result" not in dear
    assert [item["result"] for item in c.a.pull(10)] == [cheap["result"]]  # still handed out, once

    async def run_both() -> list[dict]:
        async with DynworkClient([c.a.url, c.b.url]) as dynwork:
            soon = time.monotonic() + 0.5
            return [await dynwork.run(body, 2), await dynwork.run(body, DEFAULT + 1, deadline=soon)]

    done, waiting = asyncio.run(run_both())
    assert (done["status"], done["result"]) == ("completed", reference(body, 2))
    assert waiting["status"] == "queued"  # no worker here: still waiting at the deadline


def test_a_job_hashed_on_arrival_survives_a_kill_9_right_after_its_id_is_returned(make_cluster):
    c = make_cluster(launcher="none", hash_on_arrival=DEFAULT)
    body = os.urandom(1000)
    work_id = c.a.enqueue(body, 5)
    c.a.kill()
    c.a.start()
    status = c.a.work(work_id).json()
    assert (status["status"], status["result"]) == ("completed", reference(body, 5))
    assert [item["work_id"] for item in c.a.pull(10)] == [work_id]


def _put_chunked(url: str, chunks: list[bytes], iterations: int) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/enqueue?iterations={iterations}",
        data=iter(chunks),
        method="PUT",
        headers={"Transfer-Encoding": "chunked"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_chunked_body_is_hashed_as_it_streams_in_and_one_too_large_is_refused_and_not_kept(make_cluster):
    c = make_cluster(launcher="none", hash_on_arrival=DEFAULT, max_body_bytes=300_000)
    chunks = [os.urandom(n) for n in (1, 127, 128, 65_536, 100_000, 33_000, 1)]  # 198,793 bytes
    status, answer = _put_chunked(c.a.url, chunks, 7)
    assert status == 200
    assert (answer["status"], answer["result"]) == ("completed", reference(b"".join(chunks), 7))
    done = c.a.work(answer["work_id"]).json()
    assert (done["status"], done["result"]) == ("completed", reference(b"".join(chunks), 7))
    status, answer = _put_chunked(c.a.url, [os.urandom(100_000)] * 4, 1)  # 400,000 bytes
    assert status == 413 and "limit" in answer["error"]
    assert [item["work_id"] for item in c.a.pull(10)] == [done["work_id"]]  # nothing of the refused one
