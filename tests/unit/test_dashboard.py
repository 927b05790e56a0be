"""server.dashboard and server.panel: what the page gets, from a real node and its real peer on
loopback ports; the checks on a peer's panel; the routes, their headers and who may call them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from common.credentials import Role, derive
from server import panel
from server.app import build_app
from server.dashboard import ASSET_TYPES, PEER_REFRESH_S, asset
from server.service import Entry, LeasedJob
from tests.unit.fake_http_server import dead_url
from tests.unit.service_support import Upload, lease, lease_one, node_pair, result
from tests.unit.support import SECRET, aio, opened_node


def held_with(job: LeasedJob, error: str) -> Entry:
    return Entry(str(job.work_id), job.lease_id, error)


async def busy_node(node: Any) -> None:
    """Two jobs completed by w1, one failed (its lease expired), one queued; two samples taken."""
    await node.dashboard.sample()
    for body in (b"one", b"two", b"three"):
        await node.service.enqueue(1, Upload(body))
    grant = await lease(node.service, "w1", max_jobs=2)
    node.clock.advance(0.25)
    await node.service.complete("w1", [result(job) for job in grant.jobs], [], {"rate": 2e6, "busy": True})
    await lease_one(node.service, "ghost")
    node.clock.advance(node.settings.lease_s + 1)
    await node.scheduler.expire()
    await node.service.enqueue(1, Upload(b"four"))
    await node.dashboard.sample()


@aio
async def test_the_panel_shows_counts_charts_workers_and_failures(tmp_path):
    async with opened_node(tmp_path, lease_s=5.0, max_attempts=1) as node:
        await busy_node(node)
        own = node.dashboard.own(None)
        assert own["server"] == "a"
        summary = own["summary"]
        assert (summary["queued"], summary["running"], summary["completed"], summary["failed"]) == (1, 0, 2, 1)
        assert summary["p50"] == pytest.approx(0.25, rel=0.1) and summary["healthy"] is True
        assert own["fleet"]["launcher"] == "none" and own["fleet"]["guard"] is None
        timeline = own["timeline"]
        assert timeline["full"] is True and timeline["seq"] == 2 and timeline["queued"] == [0, 1]
        assert timeline["p95"][0] is None and timeline["p95"][1] == pytest.approx(0.25, rel=0.1)
        workers = {w["id"]: w for w in own["workers"]}
        assert workers["w1"]["jobs_done"] == 2 and workers["w1"]["state"] == "busy" and workers["w1"]["rate"] == 2e6
        assert workers["ghost"]["jobs_done"] == 0 and workers["ghost"]["state"] == "idle"
        (failure,) = own["failures"]
        assert failure["work_id"].startswith("a.3.") and failure["worker"] == "ghost" and failure["attempts"] == 1
        assert "lease expired" in failure["error"]
        assert panel.check(own) == own  # what a server builds passes the peer check unchanged
        cursor = f"{timeline['epoch']}:{timeline['seq']}"
        assert node.dashboard.own(cursor)["timeline"]["t"] == []  # nothing new since


@aio
async def test_a_failure_a_worker_reports_is_listed_with_its_reason_and_a_late_result_counts_once(tmp_path):
    async with opened_node(tmp_path, max_attempts=1) as node:
        await node.service.enqueue(1, Upload(b"bad"))
        job = await lease_one(node.service, "w1")
        await node.service.complete("w1", [], [held_with(job, "out of memory")], None)
        (failure,) = node.recorder.failures
        assert (failure.work_id, failure.error, failure.worker) == (
            str(job.work_id),
            "worker error: out of memory",
            "w1",
        )
        assert node.recorder.completed_total == 0 and node.recorder.failed_total == 1
        await node.service.complete("w1", [result(job)], [], None)  # too late: the job failed
        assert node.recorder.completed_total == 0 and node.registry.workers["w1"].completed == 0


@aio
async def test_a_worker_silent_past_worker_dead_s_shows_as_silent(tmp_path):
    async with opened_node(tmp_path, worker_dead_s=5.0) as node:
        node.registry.touch("w1")
        node.clock.advance(6.0)
        (worker,) = node.dashboard.own(None)["workers"]
        assert worker["state"] == "silent" and worker["last_seen_s"] == 6.0 and worker["age_s"] == 6.0


def good_panel() -> dict[str, Any]:
    return {
        "server": "b",
        "summary": dict.fromkeys(panel.SUMMARY, 0) | {"p50": None, "healthy": True, "closing": False},
        "fleet": dict.fromkeys(panel.FLEET, None)
        | {"launcher": "ec2"}
        | dict.fromkeys(("live", "starting", "max", "allowed", "borrowed", "lent"), 1),
        "timeline": {"epoch": "ab", "seq": 2, "full": False, "t": [1.0, 2.0]}
        | {name: [0, None] if name.startswith("p") else [0, 1] for name in panel.SERIES},
        "workers": [{"id": "w1", "state": "idle", "rate": None, "jobs_done": 3, "age_s": 1.5, "last_seen_s": 0.2}],
        "failures": [{"work_id": "b.1.abcdef", "error": "boom", "at": 5.0, "worker": None, "attempts": 2}],
    }


def test_a_peer_panel_is_rebuilt_from_its_known_fields():
    value = good_panel()
    value["url"] = "http://10.0.0.7:8001"
    value["summary"]["launch_template"] = "secret-template"
    value["workers"][0]["ip"] = "10.0.0.9"
    checked = panel.check(value)
    assert checked == panel.check(good_panel())
    assert "url" not in checked and "launch_template" not in checked["summary"] and "ip" not in checked["workers"][0]


def test_an_optional_field_left_out_of_a_peer_panel_is_none():
    value = good_panel()
    del value["summary"]["p99"], value["fleet"]["guard"], value["failures"][0]["worker"]
    checked = panel.check(value)
    assert checked["summary"]["p99"] is None and checked["fleet"]["guard"] is None
    assert checked["failures"][0]["worker"] is None


def _spoil(path: tuple[Any, ...], bad: Any) -> dict[str, Any]:
    value = copy.deepcopy(good_panel())
    holder: Any = value
    for key in path[:-1]:
        holder = holder[key]
    if bad is KeyError:
        del holder[path[-1]]
    else:
        holder[path[-1]] = bad
    return value


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("server",), "B!"),
        (("server",), None),
        (("summary",), []),
        (("summary", "queued"), -1),
        (("summary", "queued"), True),
        (("summary", "throughput"), float("nan")),
        (("summary", "healthy"), 1),
        (("fleet", "lent"), KeyError),
        (("fleet", "guard"), "x" * 17),
        (("timeline", "epoch"), "XYZ"),
        (("timeline", "seq"), 1),  # fewer samples numbered than sent
        (("timeline", "full"), "yes"),
        (("timeline", "t"), [1.0]),  # columns of different lengths
        (("timeline", "queued"), [0, "1"]),
        (("timeline", "throughput"), [0, None]),
        (("workers",), {"id": "w1"}),
        (("workers", 0, "state"), "dancing"),
        (("workers", 0, "id"), "w\n1"),
        (("failures",), [good_panel()["failures"][0]] * 21),
        (("failures", 0, "error"), "x" * 301),
        (("failures", 0, "at"), None),
    ],
)
def test_a_malformed_peer_panel_is_refused(path, bad):
    with pytest.raises(ValueError):
        panel.check(_spoil(path, bad))
    with pytest.raises(ValueError):
        panel.check([good_panel()])


@aio
async def test_data_shows_this_server_then_its_peer_and_only_new_samples(tmp_path):
    async with node_pair(tmp_path, lease_s=5.0, max_attempts=1) as (a, b):
        await a.peering.sync_once()  # the peer answers: it may be asked
        await busy_node(b)
        await a.dashboard.sample()
        data = await a.dashboard.data(None, None)
        assert data["server"] == "a" and data["history_s"] == 900 and data["interval_s"] == 1.0
        own, peer = data["servers"]
        assert (own["server"], own["reachable"], peer["server"], peer["reachable"]) == ("a", True, "b", True)
        assert peer["summary"]["completed"] == 2 and peer["failures"][0]["worker"] == "ghost"
        assert peer["timeline"]["queued"] == [0, 1] and peer["timeline"]["full"] is True
        cursors = [f"{s['timeline']['epoch']}:{s['timeline']['seq']}" for s in (own, peer)]

        await b.dashboard.sample()
        a.clock.advance(PEER_REFRESH_S)
        own, peer = (await a.dashboard.data(*cursors))["servers"]
        assert own["timeline"]["t"] == [] and own["timeline"]["full"] is False
        assert peer["timeline"]["queued"] == [1] and peer["timeline"]["full"] is False and peer["timeline"]["seq"] == 3

        # Within PEER_REFRESH_S, pages are answered from the mirror: the peer is not asked again.
        await b.dashboard.sample()
        (_, again) = (await a.dashboard.data(*cursors))["servers"]
        assert again["timeline"]["seq"] == 3


@aio
async def test_a_peer_that_does_not_answer_is_unreachable_not_an_error(tmp_path):
    async with opened_node(tmp_path, peer=dead_url()) as node:
        await node.dashboard.sample()
        own, peer = (await node.dashboard.data(None, None))["servers"]
        assert own["reachable"] is True and peer == {"server": "peer", "reachable": False}
        node.peer.last_ok = node.peer.last_ok + 1e12  # as if sync had just succeeded: now it is asked, and fails
        node.clock.advance(PEER_REFRESH_S)
        (_, peer) = (await node.dashboard.data(None, None))["servers"]
        assert peer == {"server": "peer", "reachable": False} and node.peer.last_error is not None


async def fetch(http: ClientSession, path: str, **headers: str) -> tuple[int, Any, bytes]:
    async with http.get(path, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


@aio
async def test_the_routes_serve_the_page_its_assets_and_data_and_guard_the_peer_endpoint(tmp_path):
    async with opened_node(tmp_path) as node:
        await node.dashboard.sample()
        server = TestServer(build_app(node), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            async with ClientSession(str(server.make_url(""))) as http:
                for path in ("/", "/dashboard"):
                    status, headers, body = await fetch(http, path)
                    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
                    assert "default-src 'none'" in headers["Content-Security-Policy"]
                    assert b"/dashboard/assets/dashboard.js" in body and b"https:" not in body
                for name, kind in ASSET_TYPES.items():
                    status, headers, body = await fetch(http, f"/dashboard/assets/{name}")
                    assert status == 200 and headers["Content-Type"].startswith(kind)
                    assert body == asset(name).body  # type: ignore[union-attr]
                for path in ("/dashboard/assets/../app.py", "/dashboard/assets/nothing.js"):
                    status, _, body = await fetch(http, path)
                    assert status == 404 and b"error" in body
                status, headers, body = await fetch(http, "/dashboard/data")
                data = json.loads(body)
                assert status == 200 and headers["Cache-Control"] == "no-store"
                assert [s["server"] for s in data["servers"]] == ["a"] and data["servers"][0]["timeline"]["seq"] == 1
                for query in ("since=nope", "peer_since=ab:-1", "since=ab:1&since=ab:2"):
                    assert (await fetch(http, f"/dashboard/data?{query}"))[0] == 400, query
                assert (await fetch(http, "/internal/peer/dashboard"))[0] == 401
                peer = f"Bearer {derive(SECRET, Role.PEER)}"
                status, _, body = await fetch(http, "/internal/peer/dashboard?since=00:0", Authorization=peer)
                assert status == 200 and panel.check(json.loads(body))["server"] == "a"
        finally:
            await server.close()


def test_every_asset_ships_and_names_nothing_outside_the_server():
    for name in ASSET_TYPES:
        found = asset(name)
        assert found is not None and found.body
        text = found.body.decode()
        assert "https://" not in text and "//cdn" not in text, name
    assert asset("app.py") is None and asset("../dashboard.py") is None
