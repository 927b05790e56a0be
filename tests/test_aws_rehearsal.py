"""The first real `ansible-playbook -i inventory/aws site.yml`, rehearsed offline end to end.

Every play of site.yml and playbooks/teardown.yml runs, the SSH ones included: the AWS APIs are a
moto server, every instance moto launches (image builder, servers, the workers the servers
launch through boto3) is a Debian 12 stand-in booted with systemd on its own 127.0.0.N
(tests/rehearsal/). The steps, in order, each checked for real:

1. first deploy: the worker image baked on a builder (stopped, not rebooted, cleaned of keys),
   two servers under systemd with each other as peer, the verify play; EC2 refuses the new
   instance profile for a few seconds, as AWS does
2. a job on each server: the server launches a worker (RunInstances -> a stand-in booted from
   the baked image, user-data over IMDSv2, no public IP, sshd unreachable) and the digest matches
3. a second deploy while those workers live: changed=0, the inventory lists only s1 and s2
4. idle scale-down: the workers exit, power off, and are terminated; the servers report none
5. a code change (a commit to worker/): a new image, the servers restarted on the new release,
   a job computed by a worker from the new image
6. teardown with AWS's races injected (a server launching one more worker as it is terminated,
   DependencyViolation on the security groups): nothing left in moto, no stand-in running

Timings of every step are printed at the end (and in the failure message).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.rehearsal import host, rootfs
from tests.rehearsal.cloud import Cloud
from tests.rehearsal.controller import Controller, Run

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "rehearsal"
EXTRA = [
    "-e",
    "dynwork_client_cidr=127.0.0.0/8",
    "-e",
    "dynwork_admin_cidr=127.0.0.0/8",
    "-e",
    "dynwork_aws_ssh_user=admin",  # a Debian AMI's default user
    "-e",
    "server_worker_idle_s=15",  # idle workers go away within the test's patience
    "-e",
    "aws_servers_profile_delay_s=2",
    "-e",
    "aws_teardown_group_delay_s=1",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(host.skip_reason() is not None, reason=f"AWS rehearsal: {host.skip_reason()}"),
]


class Rehearsal:
    def __init__(self, cloud: Cloud, controller: Controller) -> None:
        self.cloud, self.ctl = cloud, controller
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = time.monotonic() - started

    def deploy(self, *args: str) -> Run:
        return self.ctl.playbook("-i", "inventory/aws", "site.yml", *EXTRA, *args)

    def servers(self) -> dict[str, object]:
        machines = {m.tags.get("dynwork:server"): m for m in self.cloud.running("server")}
        assert set(machines) == {"s1", "s2"}, machines
        return machines

    def cloud_instances(self, role: str, states=("pending", "running")) -> list[dict]:
        pages = self.cloud.client("ec2").describe_instances(
            Filters=[
                {"Name": "tag:dynwork:cluster", "Values": [CLUSTER]},
                {"Name": "tag:dynwork:role", "Values": [role]},
                {"Name": "instance-state-name", "Values": list(states)},
            ]
        )["Reservations"]
        return [i for r in pages for i in r["Instances"]]

    def events(self, instance_id: str | None = None) -> list[str]:
        return [what for _, iid, what in self.cloud.events if instance_id in (None, iid)]

    def report(self) -> str:
        return "\n".join(f"  {name:<44} {seconds:6.1f} s" for name, seconds in self.timings.items())


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    host.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(host.CACHE_DIR / "rehearsal.lock", "w") as lock:  # one rehearsal at a time on a host:
        fcntl.flock(lock, fcntl.LOCK_EX)  # they would share addresses and the cgroup subtree
        yield from _rehearsal(tmp_path_factory)


def _rehearsal(tmp_path_factory):
    started = time.monotonic()
    host.install_packages()
    base = rootfs.base_rootfs(host.CACHE_DIR)
    wheels = rootfs.wheelhouse(host.CACHE_DIR, ROOT)
    prepared = time.monotonic() - started
    for stale in host.rehearsal_cgroup().iterdir():  # a stand-in of a killed earlier run
        if stale.is_dir():
            host.remove_cgroup(stale)
    work = tmp_path_factory.mktemp("rehearsal")
    (work / "cloud").mkdir()
    (work / "controller").mkdir()
    cloud = Cloud(work / "cloud", base, wheels).start()
    try:
        controller = Controller(
            ROOT,
            work / "controller",
            {
                "AWS_ENDPOINT_URL": cloud.url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "DYNWORK_CLUSTER": CLUSTER,
            },
        )
        result = Rehearsal(cloud, controller)
        result.timings["host packages, base rootfs, wheelhouse"] = prepared
        yield result
    finally:
        cloud.close()
        host.remove_cgroup(host.rehearsal_cgroup())
        shutil.rmtree(work / "cloud", ignore_errors=True)  # ~1 GB of disks and images
    assert not any(m.standin.running for m in cloud.machines.values())


def http_json(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def reference(body: bytes, iterations: int) -> str:
    out = hashlib.sha512(body).digest()
    for _ in range(iterations - 1):
        out = hashlib.sha512(out).digest()
    return out.hex()


def run_job(address: str, body: bytes, iterations: int, deadline_s: float = 300) -> tuple[str, dict]:
    work_id = http_json(f"http://{address}:8001/enqueue?iterations={iterations}", "PUT", body)["work_id"]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        job = http_json(f"http://{address}:8001/work/{work_id}?wait=20", timeout=40)
        if job["status"] in ("completed", "failed"):
            return work_id, job
    raise AssertionError(f"job {work_id} on {address} not done after {deadline_s:.0f}s")


def wait_until(what: str, check, deadline_s: float, interval_s: float = 0.5):
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {deadline_s:.0f}s: {what}")
        time.sleep(interval_s)


def unit(machine, name: str = "dynwork-server.service") -> dict[str, str]:
    out = machine.standin.run("systemctl", "show", name, "-p", "ActiveState,SubState,MainPID,Description").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def diagnose(rh: Rehearsal) -> str:
    lines = [rh.report(), "events:", *(f"  {iid}: {what}" for _, iid, what in rh.cloud.events[-60:])]
    for machine in list(rh.cloud.machines.values())[-4:]:
        lines += [
            f"--- journal of {machine.instance_id} ({machine.role})",
            machine.standin.journal("-u", "dynwork-server", "-u", "dynwork-worker", lines=25),
        ]
    return "\n".join(lines)


def test_the_whole_aws_deployment_rehearsed_offline(rehearsal: Rehearsal, capsys):
    rh = rehearsal
    try:
        first_deploy(rh)
        jobs_launch_workers_from_the_baked_image(rh)
        second_deploy_changes_nothing_while_workers_live(rh)
        idle_workers_go_away(rh)
        code_change_rebuilds_the_image_and_restarts_the_servers(rh)
        teardown_leaves_nothing(rh)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(rh)}") from None
    finally:
        with capsys.disabled():
            print(f"\nAWS rehearsal timings:\n{rh.report()}")


def first_deploy(rh: Rehearsal) -> None:
    rh.cloud.faults.profile_propagation_s = 15  # a new instance profile, unknown to EC2 for a while
    rh.cloud.faults.ssh_boot_delay_s = 20  # "running" is not "accepts SSH" (EC2: 20-60 s)
    with rh.step("1 first deploy (site.yml, all plays)"):
        run = rh.deploy()
    assert run.rc == 0, run.explain()
    assert any("instance profile" in e for e in rh.events()), "the propagation delay was not exercised"
    # the worker image: baked from a stopped builder, never rebooted, no key, no host key
    ec2 = rh.cloud.client("ec2")
    (image,) = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [f"{CLUSTER}-worker-v*"]}])[
        "Images"
    ]
    assert re.fullmatch(rf"{CLUSTER}-worker-v[0-9a-f]{{12}}", image["Name"]), image["Name"]
    (builder,) = [m for m in rh.cloud.machines.values() if m.role == "image-builder"]
    assert rh.events(builder.instance_id)[-3:] == [
        "stop requested",
        f"imaged as {image['ImageId']}",
        "terminate requested",
    ], rh.events(builder.instance_id)
    assert not builder.standin.running
    (described,) = [
        i for r in ec2.describe_instances(InstanceIds=[builder.instance_id])["Reservations"] for i in r["Instances"]
    ]
    assert [g["GroupName"] for g in described["SecurityGroups"]] == [f"{CLUSTER}-image-builder"]
    layer = rh.cloud.images[image["ImageId"]][0]
    assert (layer / "opt/dynwork/.venv/bin/python").exists()
    assert (layer / "etc/systemd/system/multi-user.target.wants/dynwork-worker.service").is_symlink()
    leftovers = [
        p
        for p in layer.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and (p.name.startswith("authorized_keys") or p.name.startswith("ssh_host_"))
    ]
    assert leftovers == [], leftovers
    # two servers under systemd, each the other's peer, on their private addresses
    servers = rh.servers()
    for name, other in (("s1", "s2"), ("s2", "s1")):
        machine = servers[name]
        state = unit(machine)
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
        config = tomllib.loads(machine.standin.run("cat", "/etc/dynwork/server.toml").stdout)
        assert config["peer"] == f"http://{servers[other].address}:8001"
        assert config["public_url"] == f"http://{machine.address}:8001" and config["host"] == machine.address
        status = http_json(f"http://{machine.address}:8001/status")
        assert status, status
    # the verify play enqueued a probe on each server and compared it with hashlib
    for name in ("s1", "s2"):
        assert re.search(rf"{name} at http://127\.0\.0\.\d+:8001: {name}\.\d+\.\w+ matches", run.stdout), run.explain()


def jobs_launch_workers_from_the_baked_image(rh: Rehearsal) -> None:
    servers = rh.servers()
    body = bytes(range(256)) * 3 + b"\x00rehearsal\x00"
    with rh.step("2 a job on each server (worker launched)"):
        for name, machine in servers.items():
            work_id, job = run_job(machine.address, body, 5000)
            assert job["status"] == "completed" and job["result"] == reference(body, 5000), job
            assert work_id.startswith(f"{name}.")
    workers = rh.cloud_instances("worker", states=("pending", "running", "shutting-down", "terminated"))
    assert workers, "no worker was launched"
    (image,) = rh.cloud.client("ec2").describe_images(Owners=["self"])["Images"]
    for described in workers:
        assert "PublicIpAddress" not in described, described  # no public IPv4 for workers
        assert described["ImageId"] == image["ImageId"]
        machine = rh.cloud.machines[described["InstanceId"]]
        assert ("GET", "/latest/user-data") in machine.imds.requests  # the bootstrap read its settings over IMDSv2
        user_data = tomllib.loads(rh.cloud._user_data(machine.instance_id).decode())
        own = servers[machine.tags["dynwork:server"]]
        assert user_data["servers"][0] == f"http://{own.address}:8001"
    live = [rh.cloud.machines[w["InstanceId"]] for w in workers if rh.cloud.machines[w["InstanceId"]].standin.running]
    for machine in live:  # the worker security group has no inbound rule: nothing answers on 22
        assert not machine.ssh_open and host.port_free(machine.address, 22)


def second_deploy_changes_nothing_while_workers_live(rh: Rehearsal) -> None:
    workers = {w["InstanceId"]: tag_dict(w) for w in rh.cloud_instances("worker")}
    assert workers, "the workers are gone already; the check needs them alive"
    pids = {name: unit(m)["MainPID"] for name, m in rh.servers().items()}
    with rh.step("3 second deploy, workers alive (changed=0)"):
        listed = rh.ctl.inventory()
        run = rh.deploy()
    # A worker carries its server's dynwork:server tag: the deploy must not take it for the server.
    ec2 = rh.cloud.client("ec2")
    for reservation in ec2.describe_instances(InstanceIds=list(workers))["Reservations"]:
        for instance in reservation["Instances"]:
            assert tag_dict(instance) == workers[instance["InstanceId"]], instance
            assert "stop requested" not in rh.events(instance["InstanceId"]), rh.events(instance["InstanceId"])
    assert sorted(listed["_meta"]["hostvars"]) == ["localhost", "s1", "s2"], sorted(listed["_meta"]["hostvars"])
    for name, machine in rh.servers().items():
        value = listed["_meta"]["hostvars"][name]["ansible_host"]
        assert value in (machine.address, {"__ansible_unsafe": machine.address}), value
    assert run.rc == 0, run.explain()
    assert set(run.changed().values()) == {0}, run.changed_tasks()
    assert {name: unit(m)["MainPID"] for name, m in rh.servers().items()} == pids  # not restarted


def tag_dict(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def idle_workers_go_away(rh: Rehearsal) -> None:
    with rh.step("4 idle scale-down to zero"):
        wait_until(
            "every worker terminated", lambda: not rh.cloud_instances("worker", ("pending", "running")), deadline_s=180
        )
        wait_until("no worker stand-in running", lambda: not rh.cloud.running("worker"), deadline_s=60)
        for machine in rh.servers().values():
            wait_until(
                f"{machine.address} reports no live worker",
                lambda m=machine: http_json(f"http://{m.address}:8001/status")["workers"]["live"] == 0,
                deadline_s=60,
            )
    shutdowns = [e for e in rh.events() if e.startswith("instance-initiated shutdown")]
    assert shutdowns and all(e.endswith("terminate") for e in shutdowns), shutdowns


def code_change_rebuilds_the_image_and_restarts_the_servers(rh: Rehearsal) -> None:
    ec2 = rh.cloud.client("ec2")
    (old,) = ec2.describe_images(Owners=["self"])["Images"]
    pids = {name: unit(m)["MainPID"] for name, m in rh.servers().items()}
    marker = f"REHEARSAL_MARKER = {os.urandom(4).hex()!r}\n"
    with (rh.ctl.dir / "worker/__init__.py").open("a") as source:
        source.write(marker)
    release = "dynwork-" + rh.ctl.commit("a change to the worker")
    with rh.step("5 code change: new image, servers restarted"):
        run = rh.deploy()
    assert run.rc == 0, run.explain()
    (new,) = ec2.describe_images(Owners=["self"])["Images"]  # the old one was deregistered
    assert new["ImageId"] != old["ImageId"] and new["Name"] != old["Name"]
    template = ec2.describe_launch_template_versions(LaunchTemplateName=f"{CLUSTER}-worker", Versions=["$Default"])[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert template["ImageId"] == new["ImageId"]
    layer = rh.cloud.images[new["ImageId"]][0]
    assert marker in (layer / "opt/dynwork/.venv/lib/python3.11/site-packages/worker/__init__.py").read_text()
    for name, machine in rh.servers().items():
        state = unit(machine)
        assert state["MainPID"] != pids[name] and release in state["Description"], state
    body = b"after the change\x00"
    with rh.step("5b a job after the change"):
        _, job = run_job(rh.servers()["s1"].address, body, 1000)
    assert job["result"] == reference(body, 1000), job
    launched = [m for m in rh.cloud.machines.values() if m.role == "worker" and m.image_id == new["ImageId"]]
    assert launched, "no worker from the new image"


def teardown_leaves_nothing(rh: Rehearsal) -> None:
    rh.cloud.faults.late_launch_template = f"{CLUSTER}-worker"  # a server launching as it goes
    rh.cloud.faults.dependency_violations = 2  # network interfaces not released yet
    with rh.step("6 teardown"):
        run = rh.ctl.playbook("-i", "inventory/aws", "playbooks/teardown.yml", *EXTRA)
    assert run.rc == 0, run.explain()
    events = rh.events()
    assert any(e.startswith("late launch refused") for e in events), events
    assert sum("DependencyViolation" in e for e in events) == 2
    ec2, iam = rh.cloud.client("ec2"), rh.cloud.client("iam")
    by_tag = [{"Name": "tag:dynwork:cluster", "Values": [CLUSTER]}]
    live = [
        i
        for r in ec2.describe_instances(Filters=by_tag)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    assert live == []
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=by_tag)["Snapshots"] == []
    assert ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=by_tag)["KeyPairs"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(CLUSTER)] == []
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert not (rh.ctl.dir / ".secrets" / CLUSTER / "known_hosts").exists()
    wait_until("no stand-in running", lambda: not rh.cloud.running(), deadline_s=120)
