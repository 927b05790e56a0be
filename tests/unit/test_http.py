"""common.http: how each outcome is classified, what is retried or failed over, and Retry-After,
against real aiohttp servers on loopback ports (tests/unit/fake_http_server.py)."""

from __future__ import annotations

import random
import time

import pytest

from common.http import (
    AiohttpTransport,
    Answer,
    Failover,
    HttpClient,
    NotFound,
    Refused,
    Unauthorized,
    Unavailable,
    backoff_s,
    error_message,
    retry_after,
)
from tests.unit.fake_http_server import Reply, dead_url, error, serving, silent_url
from tests.unit.support import aio


def client(url: str, transport: AiohttpTransport, timeout_s: float = 5.0) -> HttpClient:
    return HttpClient(url, transport, timeout_s=timeout_s)


# -- pure parts ------------------------------------------------------------------------------------


def test_error_message_reads_the_json_error_else_the_text():
    assert error_message(b'{"error": "queue is full"}') == "queue is full"
    assert error_message(b"<html>Bad Gateway</html>\n") == "<html>Bad Gateway</html>"
    assert error_message(b"") == "(empty body)"
    assert error_message(b'["error"]') == '["error"]'
    assert error_message(b"\xff" * 300).startswith("\ufffd") and len(error_message(b"x" * 300)) == 200


def test_retry_after_is_seconds_capped_and_ignored_when_odd():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "0.25"}) == 0.25
    assert retry_after({"retry-after": "-3"}) == 0.0
    assert retry_after({"retry-after": "99999"}) == 30.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after({}) is None


def test_backoff_grows_with_jitter_and_never_undercuts_retry_after():
    rng = random.Random(7)
    for attempt in range(20):
        delay = backoff_s(attempt, rng=rng)
        assert 0.05 <= delay <= min(5.0, 0.1 * 2**attempt)
    busy = Unavailable("busy", status=503, not_done=True, retry_after_s=2.0)
    assert all(backoff_s(0, busy, rng=rng) == 2.0 for _ in range(20))
    assert backoff_s(10, busy, rng=rng) >= 2.0


def test_answer_json_is_strict():
    assert Answer(200, {}, b'{"a": [1]}').json_object() == {"a": [1]}
    for bad in (b"NaN", b"not json", b"\xff"):
        with pytest.raises(Unavailable, match="not JSON") as exc:
            Answer(200, {}, bad, "http://x/y").json()
        assert exc.value.status == 200 and not exc.value.not_done
    with pytest.raises(Unavailable, match="not a JSON object"):
        Answer(200, {}, b"[1]").json_object()


# -- one server ------------------------------------------------------------------------------------


@aio
async def test_a_2xx_answer_comes_back_with_lower_case_headers_and_the_body():
    async with serving(Reply(201, {"ok": True}, {"X-Thing": "1"})) as fake:
        transport = AiohttpTransport()
        try:
            answer = await client(fake.url, transport).call("POST", "/p?q=1", json_body={"n": 1})
        finally:
            await transport.close()
    assert answer.status == 201 and answer.headers["x-thing"] == "1" and answer.json() == {"ok": True}
    assert answer.url == fake.url + "/p?q=1"
    assert fake.hits[0].body == b'{"n":1}' and fake.hits[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("status", "raised"),
    [(404, NotFound), (401, Unauthorized), (403, Unauthorized), (400, Refused), (413, Refused), (409, Refused)],
)
@aio
async def test_4xx_is_the_answer_and_never_repeated(status, raised):
    async with serving(error(status, "bad thing")) as fake:
        transport = AiohttpTransport()
        try:
            with pytest.raises(raised) as exc:
                await client(fake.url, transport).call("GET", "/work/x?wait=1", retries=3)
        finally:
            await transport.close()
    assert type(exc.value) is raised and len(fake.hits) == 1
    assert exc.value.status == status and exc.value.reason == f"HTTP {status}: bad thing"
    assert str(exc.value) == f"{fake.url} GET /work/x: HTTP {status}: bad thing"


@pytest.mark.parametrize(("status", "not_done"), [(503, True), (429, True), (500, False), (502, False), (408, False)])
@aio
async def test_5xx_429_and_408_are_unavailable_and_only_429_503_prove_nothing_was_done(status, not_done):
    async with serving(error(status, "later")) as fake:
        transport = AiohttpTransport()
        try:
            with pytest.raises(Unavailable) as exc:
                await client(fake.url, transport).call("POST", "/enqueue", idempotent=False)
        finally:
            await transport.close()
    assert exc.value.status == status and exc.value.not_done is not_done and not exc.value.unreachable


@aio
async def test_a_call_that_is_not_idempotent_is_repeated_only_when_nothing_was_done():
    async with serving(error(500), Reply(200, {})) as fake:
        transport = AiohttpTransport()
        try:
            with pytest.raises(Unavailable):
                await client(fake.url, transport).call("POST", "/enqueue", idempotent=False, retries=3)
            assert len(fake.hits) == 1  # a 500 may have stored it: not sent again
            answer = await client(fake.url, transport).call("POST", "/enqueue", idempotent=True, retries=3)
        finally:
            await transport.close()
    assert answer.status == 200 and len(fake.hits) == 2


@aio
async def test_503_is_repeated_after_retry_after_even_when_not_idempotent():
    async with serving(error(503, "queue is full", retry_after="0.3"), Reply(200, {"work_id": "a"})) as fake:
        transport = AiohttpTransport()
        try:
            start = time.monotonic()
            answer = await client(fake.url, transport).call("PUT", "/enqueue", body=b"x", idempotent=False, retries=1)
            elapsed = time.monotonic() - start
        finally:
            await transport.close()
    assert answer.json() == {"work_id": "a"} and len(fake.hits) == 2
    assert elapsed >= 0.3  # never sooner than the server asked
    assert [h.body for h in fake.hits] == [b"x", b"x"]


@aio
async def test_retries_run_out():
    async with serving(error(503, retry_after="0")) as fake:
        transport = AiohttpTransport()
        try:
            with pytest.raises(Unavailable) as exc:
                await client(fake.url, transport).call("GET", "/status", retries=2)
        finally:
            await transport.close()
    assert len(fake.hits) == 3 and exc.value.status == 503


@aio
async def test_no_connection_proves_nothing_was_sent():
    url = dead_url()
    transport = AiohttpTransport()
    try:
        with pytest.raises(Unavailable) as exc:
            await client(url, transport).call("PUT", "/enqueue?iterations=1", idempotent=False)
    finally:
        await transport.close()
    assert exc.value.not_done and exc.value.unreachable and exc.value.status is None
    assert exc.value.reason == "connection refused"
    assert str(exc.value) == f"{url} PUT /enqueue: connection refused"


LOST_S = 1.0


@aio
async def test_a_lost_answer_is_not_repeated_unless_idempotent():
    # The client gives up after LOST_S; the server (on this same event loop) must have taken the
    # request by then, which 0.2 s did not always allow late in a loaded full run (0 hits).
    async with serving(Reply(200, {}, delay_s=30)) as fake:
        transport = AiohttpTransport()
        try:
            with pytest.raises(Unavailable) as exc:
                await client(fake.url, transport, timeout_s=LOST_S).call("POST", "/x", idempotent=False, retries=2)
            assert len(fake.hits) == 1
            assert exc.value.reason == "timed out" and not exc.value.not_done and exc.value.status is None
            with pytest.raises(Unavailable):
                await client(fake.url, transport, timeout_s=LOST_S).call("GET", "/x", retries=1)
            assert len(fake.hits) == 3  # the read was repeated once
        finally:
            await transport.close()


@aio
async def test_expect_json_turns_a_garbage_2xx_into_an_unreadable_answer():
    async with serving(Reply(200, b"<html>proxy</html>")) as fake:
        transport = AiohttpTransport()
        try:
            plain = await client(fake.url, transport).call("GET", "/work/x")
            with pytest.raises(Unavailable) as exc:
                await client(fake.url, transport).call("GET", "/work/x", expect_json=True, retries=1)
        finally:
            await transport.close()
    assert plain.body == b"<html>proxy</html>"
    assert exc.value.status == 200 and not exc.value.not_done and len(fake.hits) == 3


# -- fail-over -------------------------------------------------------------------------------------


async def failover_call(urls, method, *, idempotent=None, silent="", rounds=0, expect_json=False):
    """Failover.call over `urls`; the `silent` one (never answers) gets a short timeout, the rest a
    long one, so that a busy machine cannot make a good server look lost."""
    transport = AiohttpTransport()
    try:
        servers = Failover([client(u, transport, 0.3 if u == silent else 10.0) for u in urls])
        return await servers.call(method, "/p", rounds=rounds, idempotent=idempotent, expect_json=expect_json)
    finally:
        await transport.close()


@aio
async def test_failover_moves_on_from_a_server_that_did_nothing():
    async with serving(error(503, "busy")) as busy, serving(Reply(200, {"id": 1})) as good:
        for urls in ([dead_url(), good.url], [busy.url, good.url]):
            index, answer = await failover_call(urls, "POST", idempotent=False)
            assert index == 1 and answer.json() == {"id": 1}
    assert len(busy.hits) == 1 and len(good.hits) == 2


@aio
async def test_failover_stops_after_a_lost_or_failed_non_idempotent_call():
    with silent_url() as silent:
        async with serving(error(500, "boom")) as broken, serving(Reply(200, {})) as good:
            for first, reason in ((broken.url, "HTTP 500: boom"), (silent, "timed out")):
                with pytest.raises(Unavailable) as exc:
                    await failover_call([first, good.url], "POST", idempotent=False, silent=silent)
                assert exc.value.reason == reason and not exc.value.not_done
                assert "may or may not have been applied" in str(exc.value)
            assert good.hits == []
            # The same failures do not stop a read.
            for first in (broken.url, silent):
                index, _ = await failover_call([first, good.url], "GET", silent=silent, expect_json=True)
                assert index == 1
            async with serving(Reply(200, b"garbage")) as garbage:
                index, _ = await failover_call([garbage.url, good.url], "GET", expect_json=True)
                assert index == 1


@aio
async def test_failover_does_not_move_on_from_an_answer():
    async with serving(error(404, "unknown work id")) as missing, serving(Reply(200, {})) as good:
        with pytest.raises(NotFound, match="unknown work id"):
            await failover_call([missing.url, good.url], "GET")
    assert good.hits == []


@aio
async def test_failover_says_why_each_server_failed_and_tries_more_rounds():
    a, b = dead_url(), dead_url()
    with pytest.raises(Unavailable) as exc:
        await failover_call([a, b], "POST", idempotent=False)
    assert exc.value.not_done and exc.value.unreachable
    assert str(exc.value) == f"no server could answer: {a} POST /p: connection refused; {b} POST /p: connection refused"
    async with serving(error(503, retry_after="0"), Reply(200, {})) as flaky:
        index, answer = await failover_call([flaky.url], "POST", idempotent=False, rounds=1)
    assert (index, answer.status, len(flaky.hits)) == (0, 200, 2)
