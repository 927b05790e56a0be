"""The hypervisor behind moto: EC2 calls start, stop, image and terminate real stand-ins.

moto (a real ThreadedMotoServer on loopback) keeps the API state. Its EC2 backend is extended,
for the life of a `Cloud`, at the calls that change what runs:

- RunInstances: each instance gets an address 127.0.0.N as private and (when it should have
  one) public IP, and a stand-in boots from its image: a baked image's layers, or the base
  rootfs for any other AMI id ("every base AMI is Debian 12 here"). moto ignores a launch
  template's network interfaces and shutdown behaviour; both are applied here as EC2 would.
- StopInstances / TerminateInstances: a clean poweroff of the stand-in.
- CreateImage: a copy of the instance's disk (its overlay upper) becomes the image's top layer.
  A running instance is shut down for it and booted again (EC2's default reboot).
- A stand-in that powers itself off is an instance-initiated shutdown: stopped or terminated
  through the API as its InstanceInitiatedShutdownBehavior says.

AWS behaviour that moto lacks and the deployment must survive is injected on request (`Faults`):
a new instance profile refused for a few seconds, DependencyViolation on deleting a security
group, a server launching one more worker while teardown terminates it.

Stand-ins are booted and polled from one long-lived thread (their parent-death signal follows
the thread that started them). Every event is recorded in `events` for the test to check.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend
from moto.server import ThreadedMotoServer

from tests.rehearsal import motogaps, rootfs
from tests.rehearsal.imds import Imds
from tests.rehearsal.standin import StandIn

REGION = "us-east-1"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Faults:
    """AWS behaviour moto does not have, switched on by the test."""

    profile_propagation_s: float = 0.0  # RunInstances refuses a new instance profile this long
    dependency_violations: int = 0  # DeleteSecurityGroup answers DependencyViolation this often
    late_launch_template: str = ""  # on the first server's termination, launch a worker from it
    ssh_boot_delay_s: float = 0.0  # an instance with a key pair boots this long after "running"


@dataclasses.dataclass
class Machine:
    instance_id: str
    address: str
    public: bool
    image_id: str
    standin: StandIn
    imds: Imds
    tags: dict[str, str]
    shutdown_behavior: str
    ssh_open: bool
    key: str | None
    expected_exit: str | None = None  # why the cloud stopped it: "stop", "terminate", "image"
    state: str = "running"

    @property
    def role(self) -> str:
        return self.tags.get("dynwork:role", "")


class Cloud:
    def __init__(self, workdir: Path, base: Path, wheels: Path) -> None:
        self.dir = workdir
        self.base, self.wheels = base, wheels
        self.faults = Faults()
        self.machines: dict[str, Machine] = {}
        self.images: dict[str, list[Path]] = {}
        self.events: list[tuple[float, str, str]] = []
        self._next_address = 10
        self._lock = threading.RLock()
        self._profile_first_use: dict[str, float] = {}
        self._tasks: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hypervisor, name="hypervisor", daemon=True)
        self._patches = contextlib.ExitStack()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Cloud:
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.url = f"http://{host}:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30)
        for name in ("run_instances", "stop_instances", "terminate_instances", "create_image", "delete_security_group"):
            self._patches.enter_context(
                mock.patch.object(EC2Backend, name, self._hook(name, getattr(EC2Backend, name)))
            )
        self._patches.enter_context(motogaps.filled())
        self._thread.start()
        return self

    def close(self) -> None:
        """Power every stand-in off (forced after a deadline), then stop moto and the hooks."""
        with self._lock:
            machines = list(self.machines.values())
            for machine in machines:
                machine.expected_exit = machine.expected_exit or "close"
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda m: m.standin.poweroff(timeout_s=30), machines))
        for machine in machines:
            machine.standin.destroy()
            machine.imds.close()
        self._stop.set()
        self._thread.join(timeout=30)
        self._patches.close()
        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30)
        finally:
            self._moto.stop()

    def client(self, service: str):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def event(self, instance_id: str, what: str) -> None:
        self.events.append((time.monotonic(), instance_id, what))
        log.info("%s: %s", instance_id, what)

    def running(self, role: str | None = None) -> list[Machine]:
        with self._lock:
            return [m for m in self.machines.values() if m.standin.running and (role is None or m.role == role)]

    # -- the hypervisor thread -----------------------------------------------------------------
    def _in_hypervisor(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._tasks.put((fn, future))
        return future

    def _hypervisor(self) -> None:
        while not self._stop.is_set():
            try:
                fn, future = self._tasks.get(timeout=0.1)
            except queue.Empty:
                self._watch()
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                log.exception("hypervisor task failed")
                self.event("-", f"hypervisor error: {exc!r}")
                future.set_exception(exc)

    def _watch(self) -> None:
        """A stand-in that ended without the cloud asking: the instance shut itself down."""
        with self._lock:
            ended = [
                m
                for m in self.machines.values()
                if m.state == "running"
                and m.expected_exit is None
                and m.standin.proc is not None
                and m.standin.proc.poll() is not None
            ]
            for machine in ended:
                machine.expected_exit = machine.shutdown_behavior
        for machine in ended:
            self.event(machine.instance_id, f"instance-initiated shutdown -> {machine.shutdown_behavior}")
            threading.Thread(target=self._shutdown_from_inside, args=(machine,), daemon=True).start()

    def _shutdown_from_inside(self, machine: Machine) -> None:
        ec2 = self.client("ec2")
        if machine.shutdown_behavior == "terminate":
            ec2.terminate_instances(InstanceIds=[machine.instance_id])
        else:
            ec2.stop_instances(InstanceIds=[machine.instance_id])

    # -- EC2 backend hooks ---------------------------------------------------------------------
    def _hook(self, name: str, original: Callable) -> Callable:
        handler = getattr(self, f"_on_{name}")

        def hooked(backend, *args, **kwargs):
            return handler(backend, original, *args, **kwargs)

        return hooked

    def _on_run_instances(self, backend, original, *args, **kwargs):
        arn = kwargs.get("iam_instance_profile_arn") or ""
        name = kwargs.get("iam_instance_profile_name") or arn.rpartition("/")[2]
        if name and self.faults.profile_propagation_s:
            first = self._profile_first_use.setdefault(name, time.monotonic())
            if time.monotonic() - first < self.faults.profile_propagation_s:
                self.event("-", f"RunInstances refused: instance profile {name} not visible to EC2 yet")
                kind, value = ("arn", arn) if arn else ("name", name)
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"Value ({value}) for parameter iamInstanceProfile."
                    f"{kind} is invalid. Invalid IAM Instance Profile {kind.upper() if arn else kind}",
                )
        reservation = original(backend, *args, **kwargs)
        template = (
            backend._get_template_from_args(kwargs["launch_template"]).data if kwargs.get("launch_template") else {}
        )
        for instance in reservation.instances:
            self._admit(
                backend,
                instance,
                template,
                name or None,
                explicit_shutdown=bool(kwargs.get("instance_initiated_shutdown_behavior")),
            )
        return reservation

    def _admit(self, backend, instance, template: dict, role: str | None, explicit_shutdown: bool) -> None:
        with self._lock:
            address = f"127.0.0.{self._next_address}"
            self._next_address += 1
        nic = instance.nics[0]
        public = nic.public_ip is not None
        nic_spec = (template.get("NetworkInterfaces") or [{}])[0]
        if str(nic_spec.get("AssociatePublicIpAddress", "")).lower() == "false":
            public = False  # moto ignores the template's interfaces; EC2 does not
        if template.get("InstanceInitiatedShutdownBehavior") and not explicit_shutdown:
            instance.instance_initiated_shutdown_behavior = template["InstanceInitiatedShutdownBehavior"]
        nic.private_ip_address = address
        nic.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": address}]
        nic.public_ip = address if public else None
        groups = list(instance.security_groups) + list(getattr(nic, "_group_set", []) or [])
        ssh_open = any(
            rule.from_port is not None and int(rule.from_port) <= 22 <= int(rule.to_port)
            for group in groups
            for rule in group.ingress_rules
        )
        key = None
        if instance.key_name:
            (pair,) = backend.describe_key_pairs([instance.key_name])
            key = pair.material_public.decode() if isinstance(pair.material_public, bytes) else pair.material_public
        layers = self.images.get(instance.image_id, [self.base])
        standin = StandIn(
            instance.id,
            self.dir / instance.id,
            layers,
            f"ip-{address.replace('.', '-')}",
            wheels=self.wheels,
            wheels_at=rootfs.WHEELS_MOUNT,
        )
        imds = Imds(instance.id, lambda iid=instance.id: self._user_data(iid), role)
        tags = {t["key"]: t["value"] for t in instance.get_tags()}
        machine = Machine(
            instance.id,
            address,
            public,
            instance.image_id,
            standin,
            imds,
            tags,
            instance.instance_initiated_shutdown_behavior,
            ssh_open,
            key,
        )
        with self._lock:
            self.machines[instance.id] = machine
        self.event(instance.id, f"launched at {address} (public: {public}) from {instance.image_id}")
        delay = self.faults.ssh_boot_delay_s if key else 0.0  # EC2 says "running" long before sshd answers
        threading.Timer(delay, lambda: self._in_hypervisor(lambda: self._boot(machine))).start()

    def _user_data(self, instance_id: str) -> bytes | None:
        value = self.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        data = value.get("UserData", {}).get("Value")
        return base64.b64decode(data) if data else None

    def _boot(self, machine: Machine) -> None:
        """Write what EC2 and cloud-init give an instance, then boot it (hypervisor thread)."""
        if machine.state != "running":  # stopped or terminated before it came up
            return
        top = [machine.standin.upper, *machine.standin.layers]
        files = {
            "etc/hostname": machine.standin.hostname + "\n",
            "etc/ssh/sshd_config.d/00-rehearsal.conf": f"ListenAddress {machine.address}\n",
            "etc/systemd/system.conf.d/50-rehearsal.conf": (
                "[Manager]\nDefaultEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT="
                + machine.imds.url
                + f" AWS_ENDPOINT_URL={self.url}\n"
            ),
        }
        if machine.key and machine.standin.boots == 0:
            files["home/admin/.ssh/authorized_keys"] = machine.key.strip() + "\n"
        for rel, text in files.items():
            _write(top, rel, text)
        for unit in ("ssh.service", "ssh.socket"):  # the security group decides who reaches sshd
            masked = machine.standin.upper / "etc/systemd/system" / unit
            if not machine.ssh_open and not masked.is_symlink():
                _write(top, f"etc/systemd/system/{unit}", "")
                masked.unlink()
                masked.symlink_to("/dev/null")
            elif machine.ssh_open and masked.is_symlink():
                masked.unlink()
        if machine.key and machine.standin.boots == 0:
            ssh = machine.standin.upper / "home/admin/.ssh"
            ssh.chmod(0o700)
            (ssh / "authorized_keys").chmod(0o600)
            shutil.chown(ssh, 1000, 1000)
            shutil.chown(ssh / "authorized_keys", 1000, 1000)
        machine.expected_exit = None
        machine.standin.boot()
        self.event(machine.instance_id, f"booted (boot {machine.standin.boots})")

    def _power_off(self, backend, original, reason: str, *args, **kwargs):
        answer = original(backend, *args, **kwargs)
        ids = [instance.id for instance, _ in answer]
        with self._lock:
            machines = [self.machines[i] for i in ids if i in self.machines]
            for machine in machines:
                machine.state = "stopped" if reason == "stop" else "terminated"
                if machine.expected_exit is None:
                    machine.expected_exit = reason
        for machine in machines:
            self.event(machine.instance_id, f"{reason} requested")
            threading.Thread(target=machine.standin.poweroff, daemon=True).start()
        return answer, machines

    def _on_stop_instances(self, backend, original, *args, **kwargs):
        return self._power_off(backend, original, "stop", *args, **kwargs)[0]

    def _on_terminate_instances(self, backend, original, *args, **kwargs):
        answer, machines = self._power_off(backend, original, "terminate", *args, **kwargs)
        if self.faults.late_launch_template and any(m.role == "server" for m in machines):
            template, self.faults.late_launch_template = self.faults.late_launch_template, ""
            self._late_launch(template, next(m for m in machines if m.role == "server"))
        return answer

    def _late_launch(self, template: str, server: Machine) -> None:
        """What a server still running its launcher does while it is being terminated."""
        tags = [
            {"Key": "dynwork:cluster", "Value": server.tags.get("dynwork:cluster", "")},
            {"Key": "dynwork:role", "Value": "worker"},
            {"Key": "dynwork:server", "Value": server.tags.get("dynwork:server", "")},
        ]
        try:
            answer = self.client("ec2").run_instances(
                LaunchTemplate={"LaunchTemplateName": template},
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
            self.event(server.instance_id, f"late launch succeeded: {answer['Instances'][0]['InstanceId']}")
        except Exception as exc:  # noqa: BLE001 - refused is the expected outcome once fixed
            self.event(server.instance_id, f"late launch refused: {exc}")

    def _on_create_image(self, backend, original, *args, **kwargs):
        instance_id = kwargs["instance_id"] if "instance_id" in kwargs else args[0]
        machine = self.machines[instance_id]
        reboot = machine.standin.running and machine.expected_exit is None
        if reboot:  # CreateImage without NoReboot on a running instance: EC2 reboots it
            self.event(instance_id, "rebooted by CreateImage")
            machine.expected_exit = "image"
            machine.standin.poweroff()
        elif machine.standin.wait(timeout_s=120) is None:
            raise EC2ClientError("IncorrectState", f"{instance_id} did not stop")
        ami = original(backend, *args, **kwargs)
        layer = self.dir / "images" / ami.id
        layer.parent.mkdir(exist_ok=True)
        subprocess.run(["cp", "-a", str(machine.standin.upper), str(layer)], check=True, timeout=300)
        self.images[ami.id] = [layer, *machine.standin.layers]
        self.event(instance_id, f"imaged as {ami.id}")
        if reboot:
            self._in_hypervisor(lambda: self._boot(machine)).result(timeout=60)
        return ami

    def _on_delete_security_group(self, backend, original, *args, **kwargs):
        if self.faults.dependency_violations > 0:
            self.faults.dependency_violations -= 1
            self.event("-", "DeleteSecurityGroup refused: DependencyViolation")
            raise EC2ClientError("DependencyViolation", "resource has a dependent object")
        return original(backend, *args, **kwargs)


def _write(layers: list[Path], rel: str, text: str) -> None:
    """Write a file into the upper layer; new parent directories copy the owner and mode of the
    same directory in the image (an overlay shows the upper directory's attributes)."""
    upper = layers[0]
    target = upper / rel
    parts = Path(rel).parts[:-1]
    for depth in range(1, len(parts) + 1):
        sub = Path(*parts[:depth])
        if (upper / sub).is_dir():
            continue
        (upper / sub).mkdir()
        source = next((layer / sub for layer in layers[1:] if (layer / sub).is_dir()), None)
        if source is not None:
            st = source.stat()
            (upper / sub).chmod(st.st_mode & 0o7777)
            shutil.chown(upper / sub, st.st_uid, st.st_gid)
    target.write_text(text)
