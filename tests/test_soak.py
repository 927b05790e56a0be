"""Faults under load: nothing acknowledged is lost or computed wrong, and pullCompleted keeps the
guarantee of server/handouts.py.

The soak runs two servers with the local launcher (real workers, launched, reaped and adopted by
the servers), each seeing its peer through a FaultProxy, under continuous enqueue and pull load
on both, while a seeded schedule kill -9s workers and servers (restarted on the same port and
state dir), SIGSTOPs a server past the peer timeout, and refuses, holds or delays the links
between the servers. Then it heals everything, drains, and checks every acknowledged job
(tests/faults/checker.py). DYNWORK_SOAK_S sets how long faults are done (default SOAK_S);
DYNWORK_SOAK_SEED replays a fault sequence (each run prints its seed and every fault).

The focused test makes the peer's answer to /internal/peer/pull arrive after the caller's timeout:
the caller's client gets an answer without those results, and they are handed out later, once
the peer's reservation lapsed (handout_confirm_s); none is lost.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import aiohttp

from common.credentials import Role, derive
from tests.cluster import Completer
from tests.faults.chaos import FaultSchedule, ProxiedCluster
from tests.faults.checker import Checker
from tests.faults.load import Load

SOAK_S = float(os.environ.get("DYNWORK_SOAK_S", "100"))
DRAIN_TIMEOUT_S = 90.0
PEER_TIMEOUT_S = 1.0
HANDOUT_CONFIRM_S = 3.0
SOAK_SETTINGS = {
    "launcher": "local",
    "max_workers": 2,
    "worker_threads": 1,
    "scale_up_wait_s": 0.5,
    "worker_idle_s": 30,
    "worker_dead_s": 4,
    "lease_s": 6,
    "peer_timeout_s": PEER_TIMEOUT_S,
    "handout_confirm_s": HANDOUT_CONFIRM_S,
    "max_attempts": 100,  # kill -9s cost attempts; failing a job for them is not what is tested
    "worker_boot_timeout_s": 20,
    "worker_drain_timeout_s": 5,
    "max_launches_per_minute": 60,
}


def soak_seed() -> int:
    given = os.environ.get("DYNWORK_SOAK_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 31)


async def status(session: aiohttp.ClientSession, url: str, token: str | None = None) -> dict | None:
    """GET /status (or the operator's /internal/status with `token`); None when there is no answer."""
    path, headers = "/status", {}
    if token is not None:
        path, headers = "/internal/status", {"Authorization": f"Bearer {derive(token, Role.OPERATOR)}"}
    try:
        async with session.get(url + path, headers=headers) as resp:
            return dict(await resp.json()) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def poll(what: str, check, timeout_s: float, interval_s: float = 0.2):
    """Await check() until it returns something truthy; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)
    return value


async def drain(cluster: ProxiedCluster, load: Load, checker: Checker) -> None:
    """With faults over and enqueues stopped: every job finished, then pulls until reservations
    that lapsed were handed out again (no new item for handout_confirm_s and a margin)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def idle() -> bool:
            reports = [await status(session, url) for url in cluster.urls]
            return all(r is not None and r["queued"] == 0 and r["running"] == 0 for r in reports)

        await poll("both queues to drain", idle, DRAIN_TIMEOUT_S, 0.5)
        quiet_s = HANDOUT_CONFIRM_S + 2 * PEER_TIMEOUT_S + 1.0
        last, quiet_since, deadline = checker.pull_calls, time.monotonic(), time.monotonic() + DRAIN_TIMEOUT_S
        seen = sum(j.seen for j in checker.jobs.values())
        while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now_seen = sum(j.seen for j in checker.jobs.values())
            if now_seen != seen or checker.pull_calls == last:
                seen, quiet_since = now_seen, time.monotonic()
            last = checker.pull_calls
    load.pulling.clear()
    owners = {s.name: s.url for s in cluster.servers}
    for work_id in checker.unseen():
        owner = owners.get(work_id.split(".", 1)[0], cluster.urls[0])
        _, answer = await load.work(owner, work_id)
        if answer is None:  # the owner did not answer: ask the other server (it asks the owner)
            _, answer = await load.work(cluster.urls[1 - cluster.urls.index(owner)], work_id)
        checker.looked_up(work_id, answer)


def test_soak_under_faults_nothing_is_lost_or_wrong(tmp_path):
    seed = soak_seed()
    print(f"\nsoak: seed {seed} (DYNWORK_SOAK_SEED={seed} replays the faults), {SOAK_S:.0f}s of faults")
    asyncio.run(soak(tmp_path, seed))


async def soak(base, seed: int) -> None:
    started = time.monotonic()
    cluster = ProxiedCluster(base, **SOAK_SETTINGS)
    checker = Checker()
    load = Load([], checker, random.Random(seed))
    schedule = FaultSchedule(cluster, seed, peer_timeout_s=PEER_TIMEOUT_S)
    try:
        await cluster.start()
        load.urls = cluster.urls
        await load.start()
        await schedule.run(SOAK_S)
        await cluster.heal()
        await load.stop_enqueuing()
        await drain(cluster, load, checker)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        await load.close()
        await cluster.close()
    verdict = checker.verdict()
    print(f"soak: seed {seed}, {time.monotonic() - started:.0f}s: {verdict.summary()}")
    print(f"soak: faults {schedule.counts}")
    print(f"soak: load {load.stats}")
    print(f"soak: proxies {[(p.name, p.stats) for p in cluster.proxies]}")
    notable = cluster.log_lines("ERROR", "Traceback", "unexpected error")
    print("soak: notable log lines:\n" + "\n".join(f"{n:5d}  {line}" for line, n in notable.most_common(15)))
    assert not cluster.crashes, f"seed {seed}: servers that exited by themselves: {cluster.crashes}"
    internal_errors = [line for line in notable if "unexpected error" in line]
    assert not internal_errors, f"seed {seed}: 500s in the logs: {internal_errors}"
    assert not [s for s in load.stats.statuses if s >= 500 and s != 503], f"seed {seed}: {load.stats.statuses}"
    assert verdict.ok, (
        f"seed {seed}: {verdict.summary()}\nlost: {verdict.lost[:20]}\nwrong: {verdict.wrong[:20]}\n"
        f"statuses of the unpulled: {[(w, checker.jobs[w].status) for w in checker.unseen()][:20]}"
    )


def test_a_peer_pull_answer_after_the_callers_timeout_is_handed_out_later(tmp_path):
    asyncio.run(late_peer_answer(tmp_path))


async def late_peer_answer(base) -> None:
    confirm_s, late_by_s = 4.0, 5 * PEER_TIMEOUT_S
    cluster = ProxiedCluster(base, launcher="none", peer_timeout_s=PEER_TIMEOUT_S, handout_confirm_s=confirm_s)
    checker = Checker()
    load = Load([], checker, random.Random(1))
    try:
        await cluster.start()
        a, b = cluster.urls
        await load.start(enqueuers=0, pullers=0, watchers=0)
        b_ids = [await load.enqueue(b, f"job {i}".encode(), 1 + i) for i in range(5)]
        assert all(b_ids), b_ids
        completer = Completer([cluster.servers[1]], cluster.token)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def b_finished() -> bool:
                await asyncio.to_thread(completer.step, cluster.servers[1], 0.2)
                report = await status(session, b)
                return report is not None and report["completed"] == len(b_ids)

            await poll("B to finish its jobs", b_finished, 30)
            # B's answer to A's /internal/peer/pull reaches A long after A's peer timeout: A's
            # client gets an answer without B's results, which B has reserved (its part done).
            cluster.proxies[1].delay("/internal/peer/pull", late_by_s)
            began = time.monotonic()
            assert await load.pull(a, 100) == []
            assert time.monotonic() - began < late_by_s, "A waited for B's late answer"

            async def reserved() -> bool:
                report = await status(session, b, cluster.token)
                return report is not None and report["handouts"]["reserved_for_peer"] >= 1

            await poll("B to reserve its results for A", reserved, 10)
            cluster.proxies[1].heal()
            # Until the reservation lapses nobody gets those results (the reservation was made
            # after `began`, so it lasts at least until began + confirm_s); after, a pull through
            # A hands them out.
            early_at = time.monotonic()
            early = await load.pull(b, 100)
            if early_at < began + confirm_s - 1.0:
                assert early == [], early

            async def all_handed_out() -> bool:
                await load.pull(a, 100)
                return not checker.unseen()

            await poll("B's results to be handed out after the lapse", all_handed_out, confirm_s + 20, 0.3)
            report = await status(session, b, cluster.token)
            assert report is not None and report["handouts"]["lapsed_total"] >= len(b_ids), report["handouts"]
    finally:
        await load.close()
        await cluster.close()
    verdict = checker.verdict()
    print(f"late peer answer: {verdict.summary()}")
    assert verdict.ok and verdict.completed == len(b_ids) and verdict.handed_out_twice == 0, verdict.summary()
