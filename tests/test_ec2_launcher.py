"""Ec2Launcher driven by the real Autoscaler, Scheduler and Store against a real moto server.

moto never runs user-data, so no launched instance ever reports: that is exactly the "fleet that
never boots" case. Faults that moto cannot produce (throttling) are injected with a botocore
event hook that raises the ClientError AWS would send.
"""

from __future__ import annotations

import asyncio
import base64
import time
import tomllib
import urllib.request

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from common.credentials import worker_credential
from server.config import ServerSettings
from server.launchers.ec2 import Ec2Launcher
from server.loans import Loans
from server.registry import Registry
from server.scaling.autoscaler import Autoscaler
from server.scaling.guard import LaunchGuard
from server.scheduler import Scheduler
from server.store import Store

TEMPLATE = "dynwork-worker-test"
CLUSTER = "c1"
SERVER_URL = "http://127.0.0.1:8001"
PEER_URL = "http://127.0.0.1:8002"


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    # Listing every built-in AMI takes seconds; do it once. A reset brings the same ones back.
    image = client.describe_images(MaxResults=5)["Images"][0]["ImageId"]
    yield url, image
    server.stop()


@pytest.fixture
def ec2(moto_url, monkeypatch):
    """A clean moto account with a launch template; the environment points boto3 at it."""
    moto_url, image = moto_url
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
    for key, value in {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    client = boto3.client("ec2", region_name="us-east-1")
    client.describe_images(ImageIds=[image])  # still there after the reset
    client.create_launch_template(
        LaunchTemplateName=TEMPLATE, LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"}
    )
    client.image_id = image
    return client


def instances(client, tags: dict | None = None) -> list[dict]:
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in (tags or {}).items()]
    found = []
    for res in client.describe_instances(Filters=filters)["Reservations"]:
        found.extend(res["Instances"])
    return found


def live(found: list[dict]) -> list[dict]:
    return [i for i in found if i["State"]["Name"] in ("pending", "running")]


def tags_of(inst: dict) -> dict:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


class Harness:
    """One server's scaling parts, as server.node wires them, minus HTTP."""

    def __init__(self, tmp_path, *, name="s8001", guard_kw=None, client_factory=None, **overrides) -> None:
        values = dict(
            launcher="ec2",
            launch_template=TEMPLATE,
            cluster=CLUSTER,
            name=name,
            state_dir=tmp_path / name,
            max_workers=3,
            worker_boot_timeout_s=300.0,
            scale_interval_s=0.05,
            reconcile_interval_s=0.2,
            worker_idle_s=30.0,
        )
        values.update(overrides)
        self.settings = ServerSettings(**values)
        self.guard = LaunchGuard(max_per_minute=20, rng=lambda: 0.5, **(guard_kw or {}))
        self.tmp_path = tmp_path
        self.client_factory = client_factory

    async def __aenter__(self) -> Harness:
        s = self.settings
        self.store = Store(s.state_dir / "dynwork.sqlite3")
        await self.store.start()
        self.scheduler = Scheduler(self.store, lease_s=s.lease_s, max_attempts=s.max_attempts)
        await self.scheduler.load()
        self.launcher = Ec2Launcher(s, client_factory=self.client_factory)
        await self.launcher.start()
        self.loops = [asyncio.create_task(every(step, interval)) for step, interval in self.launcher.loops().values()]
        self.autoscaler = Autoscaler(
            settings=s,
            scheduler=self.scheduler,
            registry=Registry(),
            launcher=self.launcher,
            guard=self.guard,
            loans=Loans(s.max_workers),
            servers=(SERVER_URL, PEER_URL),
            secret="cluster-secret",
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.autoscaler.stop()
        await self.launcher.close()
        for task in self.loops:
            task.cancel()
        await asyncio.gather(*self.loops, return_exceptions=True)
        await self.store.close()

    async def backlog(self, jobs=10, iterations=100_000_000) -> None:
        for _ in range(jobs):
            await self.scheduler.enqueue(b"x" * 64, iterations)

    async def tick_until(self, cond, timeout_s=60.0, every=None):
        """Run scaling decisions until cond() holds (a deadline, not a sleep, is the bound)."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self.autoscaler.tick()
            await self.settle()
            if every:
                every()
            if cond():
                return
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached before the deadline")
            await asyncio.sleep(self.settings.scale_interval_s)

    async def settle(self) -> None:
        """Wait for the launches the last decision started."""
        if self.autoscaler._launch_tasks:
            await asyncio.gather(*self.autoscaler._launch_tasks, return_exceptions=True)


async def every(step, interval_s: float) -> None:
    """A launcher's periodic step, as the node runs it."""
    while True:
        await asyncio.sleep(interval_s)
        await step()


def run(coro):
    return asyncio.run(coro)


def test_backlog_launches_up_to_max_with_tags_and_user_data(tmp_path, ec2):
    async def scenario():
        async with Harness(tmp_path) as h:
            await h.backlog()
            started = time.monotonic()
            await h.autoscaler.tick()  # the first decision launches; no waiting for a timer
            await h.settle()
            elapsed = time.monotonic() - started
            assert h.launcher.launched_total == 3
            assert h.guard.status()["state"] == "ok"
            for _ in range(5):  # more decisions with the backlog unchanged launch nothing more
                await h.autoscaler.tick()
                await h.settle()
            assert h.autoscaler.view.starting == 3
            return elapsed

    elapsed = run(scenario())
    found = live(instances(ec2, {"dynwork:cluster": CLUSTER}))
    assert len(found) == 3, f"launched in {elapsed:.2f}s"
    worker_ids = set()
    for inst in found:
        tags = tags_of(inst)
        assert tags["dynwork:role"] == "worker" and tags["dynwork:server"] == "s8001"
        raw = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
        text = base64.b64decode(raw["UserData"]["Value"]).decode()
        data = tomllib.loads(text)
        assert data["servers"] == [SERVER_URL, PEER_URL]
        # Only the worker's own credential travels in user-data, never the cluster secret.
        assert data["token"] == worker_credential("cluster-secret", data["worker_id"])
        assert "cluster-secret" not in text
        assert data["worker_id"] == tags["dynwork:worker-id"]
        assert data["idle_exit_s"] == 30.0 and data["threads"] == 0
        worker_ids.add(data["worker_id"])
    assert len(worker_ids) == 3


def test_silent_fleet_is_reaped_launches_stay_bounded_and_others_untouched(tmp_path, ec2):
    # Instances that are not ours to terminate: another cluster's worker, a server of this
    # cluster, and a worker of this cluster started by the peer server.
    def make(**tags):
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        return ec2.run_instances(ImageId=ec2.image_id, MinCount=1, MaxCount=1, TagSpecifications=spec)["Instances"][0][
            "InstanceId"
        ]

    others = [
        make(
            **{
                "dynwork:cluster": "other",
                "dynwork:role": "worker",
                "dynwork:server": "s8001",
                "dynwork:worker-id": "other-w1",
            }
        ),
        make(**{"dynwork:cluster": CLUSTER, "dynwork:role": "server", "dynwork:server": "s8001"}),
        make(
            **{
                "dynwork:cluster": CLUSTER,
                "dynwork:role": "worker",
                "dynwork:server": "s8002",
                "dynwork:worker-id": "s8002-w1-abc",
            }
        ),
    ]
    most_at_once = 0

    def sample():
        nonlocal most_at_once
        ours = [
            i
            for i in live(instances(ec2, {"dynwork:cluster": CLUSTER}))
            if tags_of(i)["dynwork:role"] == "worker" and tags_of(i)["dynwork:server"] == "s8001"
        ]
        most_at_once = max(most_at_once, len(ours))

    async def scenario():
        async with Harness(
            tmp_path, worker_boot_timeout_s=1.0, guard_kw={"max_boot_failures": 3, "probe_interval_s": 3600.0}
        ) as h:
            assert h.launcher.status()["foreign_instances"] == 1
            await h.backlog()
            await h.tick_until(lambda: h.guard.status()["state"] == "suspended", every=sample)
            # every silent instance gets terminated; the peer's worker is counted, never ours
            await h.tick_until(
                lambda: (
                    not live(
                        [
                            i
                            for i in instances(ec2, {"dynwork:server": "s8001"})
                            if tags_of(i).get("dynwork:role") == "worker" and tags_of(i)["dynwork:cluster"] == CLUSTER
                        ]
                    )
                ),
                every=sample,
            )
            launched = h.launcher.launched_total
            for _ in range(20):  # suspended: the backlog is still there, nothing more launches
                await h.autoscaler.tick()
                await h.settle()
                sample()
            assert h.launcher.launched_total == launched <= 3
            assert h.autoscaler.view.foreign == 1
            await h.launcher.terminate(["s8002-w1-abc", "other-w1"])  # refused: not ours
            return h.guard.status()

    status = run(scenario())
    assert status["boot_failures"] >= 3 and "never reported" in status["reason"]
    assert 0 < most_at_once <= 3
    states = {i["InstanceId"]: i["State"]["Name"] for i in instances(ec2)}
    assert [states[i] for i in others] == ["running"] * 3


def test_restart_adopts_the_fleet_and_launches_no_duplicates(tmp_path, ec2):
    async def first_life():
        async with Harness(tmp_path) as h:
            await h.backlog()
            await h.tick_until(lambda: h.launcher.launched_total == 3)
        # leaving the block closes clients only: the instances keep running, as after kill -9

    async def second_life():
        async with Harness(tmp_path) as h:  # same name, same state dir, backlog still queued
            assert len(h.scheduler.queued) == 10
            for _ in range(20):
                await h.autoscaler.tick()
                await h.settle()
            return h.launcher.launched_total, h.autoscaler.view.starting, len(h.autoscaler.unbooted)

    run(first_life())
    launched, starting, unbooted = run(second_life())
    assert (launched, starting, unbooted) == (0, 3, 3)  # adopted, counted, under the boot timeout
    assert len(live(instances(ec2, {"dynwork:cluster": CLUSTER}))) == 3


def test_throttling_backs_off_and_recovers(tmp_path, ec2):
    calls = []

    def throttle(**kwargs):
        calls.append(time.monotonic())
        if len(calls) <= 4:
            raise ClientError(
                {"Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."}}, "RunInstances"
            )

    async def scenario():
        async with Harness(tmp_path, guard_kw={"base_backoff_s": 0.3, "max_backoff_s": 2.0}) as h:
            h.launcher.client.meta.events.register("before-call.ec2.RunInstances", throttle)
            await h.backlog()
            states = []
            await h.tick_until(
                lambda: h.launcher.launched_total == 3, every=lambda: states.append(h.guard.status()["state"])
            )
            return states, h.guard.status()

    states, status = run(scenario())
    # 3 refused at once, then single probes (one refused, one accepted), then the other two:
    # 7 calls in all however many decisions ran while backing off
    assert len(calls) == 7
    assert "backoff" in states and status["state"] == "ok"
    assert status["last_error"] and "RequestLimitExceeded" in status["last_error"]
    assert len(live(instances(ec2, {"dynwork:cluster": CLUSTER}))) == 3


# -- through a real server process ------------------------------------------------------------
def test_server_process_launches_survives_kill_9_adopts_and_reaps(tmp_path, ec2):
    from tests.cluster import Server, free_port, make_token_file, wait_for

    port = free_port()
    name = f"s{port}"
    token_file = make_token_file(tmp_path)
    common = dict(
        launcher="ec2",
        launch_template=TEMPLATE,
        cluster=CLUSTER,
        max_workers=3,
        reconcile_interval_s=0.3,
        scale_interval_s=0.2,
    )

    def ours():
        return live(
            [
                i
                for i in instances(ec2, {"dynwork:server": name})
                if tags_of(i)["dynwork:cluster"] == CLUSTER and tags_of(i)["dynwork:role"] == "worker"
            ]
        )

    server = Server(port, tmp_path / name, token_file, worker_boot_timeout=300, **common).start()
    try:
        for _ in range(10):
            server.enqueue(b"\x00\xff" * 32, 100_000_000)
        wait_for(lambda: len(ours()) == 3, 30, "3 instances launched")
        first = {i["InstanceId"] for i in ours()}
        status = server.status()
        assert status["launcher"]["kind"] == "ec2" and status["launcher"]["guard"]["state"] == "ok"
        server.kill()  # kill -9: the instances keep running

        # Restarted with a short boot timeout: it adopts the three, launches nothing, and reaps
        # them once they have had worker_dead_s to report (moto never runs user-data).
        server = Server(port, tmp_path / name, token_file, worker_boot_timeout=2, worker_dead_s=2, **common)
        server.start()
        adopted = wait_for(lambda: (s := server.status())["launcher"]["instances"] == 3 and s, 30, "adoption")
        assert adopted["launcher"]["launched_total"] == 0
        suspended = wait_for(
            lambda: (s := server.status())["launcher"]["guard"]["state"] == "suspended" and s,
            60,
            "launches suspended after the adopted instances never reported",
        )
        wait_for(lambda: not ours(), 30, "silent instances terminated")
        assert suspended["launcher"]["launched_total"] == 0
        assert "never reported" in suspended["launcher"]["guard"]["reason"]
        final = server.status()
        assert final["launcher"]["launched_total"] == 0 and final["queued"] == 10
        assert {i["InstanceId"] for i in instances(ec2, {"dynwork:server": name})} == first  # no new instance
        assert "launches suspended" in server.log_path.read_text()
    finally:
        server.kill()


def test_launched_instances_boot_through_bootstrap_work_and_scale_down(tmp_path, ec2):
    """The test plays the hypervisor: for each instance moto starts it serves the user-data over
    IMDSv2 and runs `python -m worker.bootstrap`, as the AMI's unit does; when the worker exits,
    the instance terminates (instance-initiated shutdown)."""
    import subprocess
    import sys

    from tests.cluster import ROOT, Server, free_port, make_token_file, reference, wait_for
    from tests.rehearsal.imds import Imds

    port = free_port()
    name = f"s{port}"
    token_file = make_token_file(tmp_path)
    server = Server(
        port,
        tmp_path / name,
        token_file,
        launcher="ec2",
        launch_template=TEMPLATE,
        cluster=CLUSTER,
        max_workers=2,
        target_drain_s=0.1,
        worker_idle_s=2,
        worker_threads=1,
        worker_boot_timeout=120,
        reconcile_interval_s=0.3,
        scale_interval_s=0.2,
    )
    booted: dict[str, tuple[subprocess.Popen, Imds]] = {}
    exit_codes: dict[str, int] = {}

    def hypervisor() -> None:
        for inst in live(instances(ec2, {"dynwork:server": name})):
            iid = inst["InstanceId"]
            if iid in booted:
                continue
            raw = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
            data = base64.b64decode(raw)
            imds = Imds(iid, lambda data=data: data, role=None)  # this instance's, not the loop's last
            with open(tmp_path / f"{iid}.log", "ab") as log:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "worker.bootstrap",
                        "--imds-endpoint",
                        imds.url,
                        "--token-file",
                        str(tmp_path / iid / "worker.token"),
                    ],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            booted[iid] = (proc, imds)
        for iid, (proc, imds) in booted.items():
            if iid not in exit_codes and proc.poll() is not None:
                exit_codes[iid] = proc.returncode
                imds.shutdown()
                ec2.terminate_instances(InstanceIds=[iid])  # the unit powers the instance off

    def step(cond):
        def check():
            hypervisor()
            return cond()

        return check

    server.start()
    try:
        jobs = {server.enqueue(bytes([i]) * 100, 50_000): bytes([i]) * 100 for i in range(6)}
        done = wait_for(
            step(lambda: all(server.work(w).json()["status"] == "completed" for w in jobs)),
            120,
            "jobs completed by booted workers",
        )
        assert done
        for work_id, body in jobs.items():
            assert server.work(work_id).json()["result"] == reference(body, 50_000)
        status = server.status()
        assert status["workers"]["boot_s"] is not None  # measured: launch to first report
        # idle workers exit on their own, their instances terminate, the fleet is empty again
        wait_for(
            step(lambda: len(exit_codes) == len(booted) and not live(instances(ec2, {"dynwork:server": name}))),
            120,
            "workers idle-exited and instances terminated",
        )
        assert set(exit_codes.values()) == {0}
        final = wait_for(
            lambda: (s := server.status())["workers"]["live"] == 0 and s["workers"]["starting"] == 0 and s,
            60,
            "fleet empty in /status",
        )
        assert 1 <= final["launcher"]["launched_total"] == len(booted) <= 2
        assert final["launcher"]["guard"]["state"] == "ok"
    finally:
        server.kill()
        for proc, imds in booted.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            imds.close()


def test_no_launch_before_the_fleet_is_known(tmp_path, ec2):
    """DescribeInstances failing at start (throttled, no permission yet): nothing is launched,
    since a restarted server could not tell its own fleet apart; launches follow the first
    successful reconciliation."""
    import boto3 as boto3_

    failures = {"left": 3}

    def refuse(**kwargs):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "DescribeInstances")

    def factory():
        client = boto3_.session.Session().client("ec2")
        client.meta.events.register("before-call.ec2.DescribeInstances", refuse)
        return client

    async def scenario():
        async with Harness(
            tmp_path, client_factory=factory, guard_kw={"base_backoff_s": 0.2, "max_backoff_s": 0.5}
        ) as h:
            assert h.launcher.reconciled_at is None and "Throttling" in h.launcher.reconcile_error
            await h.backlog()
            states = []
            await h.tick_until(
                lambda: h.launcher.launched_total == 3,
                every=lambda: states.append((h.launcher.reconciled_at is not None, h.launcher.launched_total)),
            )
            return states

    states = run(scenario())
    assert all(known for known, launched in states if launched)  # launches only once known
    assert states[0] == (False, 0)
    assert len(live(instances(ec2, {"dynwork:cluster": CLUSTER}))) == 3


def test_a_stopped_worker_of_ours_is_terminated_and_reported_gone(tmp_path, ec2):
    from server.launchers.base import MemberState

    async def scenario():
        async with Harness(tmp_path) as h:
            await h.backlog(jobs=1)
            await h.tick_until(lambda: h.launcher.launched_total == 1)
            (inst,) = live(instances(ec2, {"dynwork:cluster": CLUSTER}))
            worker_id = tags_of(inst)["dynwork:worker-id"]
            ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
            await h.launcher.reconcile()
            fleet = await h.launcher.fleet()
            assert fleet[worker_id].state is MemberState.GONE
            return inst["InstanceId"]

    iid = run(scenario())
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")


def test_a_slow_launch_blocks_neither_the_loop_nor_the_count(tmp_path, ec2):
    """RunInstances held inside boto3: scaling decisions keep running on the event loop, the
    launches in flight count as starting, and none is duplicated."""
    import threading

    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(**kwargs):
        entered.release()
        release.wait(30)

    async def scenario():
        async with Harness(tmp_path) as h:
            h.launcher.client.meta.events.register("before-call.ec2.RunInstances", hold)
            await h.backlog()
            await h.autoscaler.tick()
            for _ in range(3):  # all three calls are inside boto3, in pool threads
                await asyncio.to_thread(entered.acquire, True, 30)
            for _ in range(10):  # the loop is free: more decisions run, and launch nothing more
                await h.autoscaler.tick()
                assert h.autoscaler.view.starting == 3
            release.set()
            await h.settle()
            await h.tick_until(lambda: h.launcher.launched_total == 3)
            return h.guard.status()["launched_total"]

    try:
        assert run(scenario()) == 3
    finally:
        release.set()
    assert len(live(instances(ec2, {"dynwork:cluster": CLUSTER}))) == 3


def test_server_sigterm_stops_launching_and_leaves_instances_to_idle_out(tmp_path, ec2):
    from tests.cluster import Server, free_port, make_token_file, wait_for

    port = free_port()
    server = Server(
        port,
        tmp_path / f"s{port}",
        make_token_file(tmp_path),
        launcher="ec2",
        launch_template=TEMPLATE,
        cluster=CLUSTER,
        max_workers=2,
        scale_interval_s=0.2,
    )
    server.start()
    try:
        for _ in range(10):
            server.enqueue(b"y", 100_000_000)
        wait_for(lambda: len(live(instances(ec2, {"dynwork:cluster": CLUSTER}))) == 2, 30, "2 instances")
        assert server.stop() == 0
    finally:
        server.kill()
    everything = instances(ec2, {"dynwork:cluster": CLUSTER})
    assert len(everything) == 2 and len(live(everything)) == 2  # nothing new, nothing terminated


def test_partial_launch_keeps_what_started_and_backs_off(tmp_path, ec2):
    """The account's instance limit refuses the third of three launches: the two started are
    counted (no duplicate launch for them), the failure backs off and shows in the status."""
    calls = []

    def limit(**kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ClientError(
                {
                    "Error": {
                        "Code": "InstanceLimitExceeded",
                        "Message": "You have requested more instances than your limit",
                    }
                },
                "RunInstances",
            )

    async def scenario():
        async with Harness(tmp_path, guard_kw={"base_backoff_s": 0.3, "max_backoff_s": 1.0}) as h:
            h.launcher.client.meta.events.register("before-call.ec2.RunInstances", limit)
            await h.backlog()
            await h.autoscaler.tick()
            await h.settle()
            status = h.guard.status()
            assert status["state"] == "backoff" and "InstanceLimitExceeded" in status["last_error"]
            assert h.launcher.launched_total == 2 and len(h.autoscaler.unbooted) == 2
            await h.tick_until(lambda: h.launcher.launched_total == 3)
            return h.guard.status()["state"]

    assert run(scenario()) == "ok"
    assert len(calls) == 4
    assert len(live(instances(ec2, {"dynwork:cluster": CLUSTER}))) == 3
