"""Hashing on arrival with real servers at their default threshold and no worker at all: a cheap
job is finished by the server that accepts it, readable and pullable through either server, and
survives a kill -9 right after its acknowledgement; a dearer job waits for the fleet."""

from __future__ import annotations

import os

from server.config import ServerSettings
from tests.cluster import reference

DEFAULT = ServerSettings().hash_on_arrival


def test_cheap_jobs_are_done_without_a_worker_and_dear_ones_wait_for_one(make_cluster):
    assert DEFAULT > 0
    c = make_cluster(launcher="none", hash_on_arrival=DEFAULT)
    bodies = [os.urandom(n) for n in (0, 64, 111, 112, 4096)]
    cheap = [c.a.enqueue(body, 2) for body in bodies]
    dear = c.a.enqueue(b"x", DEFAULT + 1)  # one compression over the threshold
    for work_id, body in zip(cheap, bodies, strict=True):
        status = c.b.work(work_id).json()  # through the peer: the job lives on a
        assert (status["status"], status["result"]) == ("completed", reference(body, 2))
    assert c.a.work(dear).json()["status"] == "queued"
    assert c.a.status()["queued"] == 1
    pulled = c.b.pull(100)  # b hands out a's results too
    assert sorted(item["work_id"] for item in pulled) == sorted(cheap)


def test_a_job_hashed_on_arrival_survives_a_kill_9_right_after_its_id_is_returned(make_cluster):
    c = make_cluster(launcher="none", hash_on_arrival=DEFAULT)
    body = os.urandom(1000)
    work_id = c.a.enqueue(body, 5)
    c.a.kill()
    c.a.start()
    status = c.a.work(work_id).json()
    assert (status["status"], status["result"]) == ("completed", reference(body, 5))
    assert [item["work_id"] for item in c.a.pull(10)] == [work_id]
