"""server.peer: the peer client against a scripted server on a loopback port; every odd reply is
an HttpError (Unavailable) remembered in last_error, never a crash of the caller."""

from __future__ import annotations

import contextlib

import pytest

from common import http
from server.peer import PeerClient
from tests.unit.fake_http_server import Reply, error, serving
from tests.unit.support import aio

ITEM = {"work_id": "b.1.abcdef", "result": "ab" * 64, "iterations": 3, "completed_at": 12.5}
STATUS = {
    "work_id": "b.1.abcdef",
    "status": "completed",
    "iterations": 3,
    "enqueued_at": 10.0,
    "completed_at": 12.5,
    "result": "ab" * 64,
    "error": None,
    "attempts": 1,
}


@contextlib.asynccontextmanager
async def client_of(*replies: Reply):
    async with serving(*replies) as fake:
        peer = PeerClient(fake.url, "dw1.peer-credential", timeout_s=2.0)
        await peer.start()
        try:
            yield peer, fake
        finally:
            await peer.close()


@aio
async def test_good_replies_are_taken_and_the_credential_is_sent():
    replies = (
        Reply(body={"name": "b", "granted": 2, "revoked": ["w9", 5]}),
        Reply(body={"handout": "h1", "items": [{**ITEM, "extra": 1}]}),
        Reply(body={"confirmed": 1}),
        Reply(body=STATUS),
    )
    async with client_of(*replies) as (peer, fake):
        assert not peer.reachable()
        assert await peer.sync({"want_borrow": 1}) == (2, ["w9"])  # a non-string id is dropped
        assert peer.name == "b" and peer.reachable() and peer.last_error is None
        assert await peer.reserve(5) == ("h1", [ITEM])  # only the known fields
        await peer.confirm("h1")
        assert await peer.get_work("b.1.abcdef", 0.5) == STATUS
        assert [hit.path_qs for hit in fake.hits] == [
            "/internal/peer/sync",
            "/internal/peer/pull?top=5",
            "/internal/peer/confirm",
            "/internal/peer/work/b.1.abcdef?wait=0.500",
        ]
        assert {hit.headers["Authorization"] for hit in fake.hits} == {"Bearer dw1.peer-credential"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"null",
        b'{"granted": 1, "name": "b", "revoked": [], "x": NaN}',
        {},
        {"name": "b"},
        {"name": "b", "granted": -1},
        {"name": "b", "granted": True},
        {"name": "b", "granted": 1.5},
        {"name": "b", "granted": 10**7},
        {"granted": 1},
        {"name": 5, "granted": 1},
        {"name": "b", "granted": 1, "revoked": "w1"},
        {"name": "b", "granted": 1, "revoked": ["w"] * 10_001},
    ],
)
@aio
async def test_an_odd_sync_reply_is_unavailable(body):
    async with client_of(Reply(body=body)) as (peer, _):
        with pytest.raises(http.Unavailable):
            await peer.sync({"want_borrow": 1})
        assert peer.last_error and not peer.reachable() and peer.name is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        [],
        {"items": []},
        {"handout": "", "items": []},
        {"handout": "h" * 65, "items": []},
        {"handout": 7, "items": []},
        {"handout": "h1", "items": {}},
        {"handout": "h1", "items": [ITEM, ITEM, ITEM]},  # more than asked for
        {"handout": "h1", "items": [{**ITEM, "result": None}]},
        {"handout": "h1", "items": [{**ITEM, "work_id": "b.1.abcdef\n"}]},
        {"handout": "h1", "items": [{**ITEM, "iterations": True}]},
    ],
)
@aio
async def test_an_odd_pull_reply_is_unavailable(body):
    async with client_of(Reply(body=body)) as (peer, _):
        with pytest.raises(http.Unavailable):
            await peer.reserve(2)
        assert "bad reply" in peer.last_error or "not JSON" in peer.last_error


@aio
async def test_items_of_another_server_are_refused_once_the_peers_name_is_known():
    replies = (Reply(body={"name": "b", "granted": 0}), Reply(body={"handout": "h", "items": [ITEM]}))
    async with client_of(*replies) as (peer, _):
        await peer.sync({})
        await peer.reserve(1)
        peer.name = "c"
        with pytest.raises(http.Unavailable):
            await peer.reserve(1)


@pytest.mark.parametrize(
    "body",
    [{**STATUS, "work_id": "b.2.abcdef"}, {**STATUS, "status": "done"}, {**STATUS, "enqueued_at": None}, [STATUS]],
)
@aio
async def test_an_odd_work_reply_is_unavailable_and_404_is_not_found(body):
    async with client_of(Reply(body=body), error(404, "unknown work id")) as (peer, _):
        with pytest.raises(http.Unavailable):
            await peer.get_work("b.1.abcdef", 0)
        with pytest.raises(http.NotFound):
            await peer.get_work("b.1.abcdef", 0)
        assert peer.reachable() and peer.last_error is None  # a 404 is an answer


@aio
async def test_a_refused_credential_is_an_error_too():
    async with client_of(error(401, "authentication required")) as (peer, _):
        with pytest.raises(http.HttpError):
            await peer.sync({})
        assert "401" in peer.last_error
