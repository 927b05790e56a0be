"""Workers as EC2 instances started from a launch template.

The cloud is the truth about the fleet: at start and every reconcile_interval_s, DescribeInstances
on this cluster's worker tags rebuilds the view, so a restarted server adopts what it launched
before (same dynwork:server tag) instead of launching duplicates. Instances of the cluster that
another server started are listed with owned=False: counted, never terminated. Launches made
since the last reconciliation are kept in the view until the cloud lists them (DescribeInstances
is eventually consistent), so a pending launch is always counted.

Every boto3 call runs in a small thread pool: the event loop never waits on AWS. The client is
built with the standard configuration chain, so AWS_ENDPOINT_URL, AWS_REGION / the config file
and the credential chain (environment, profile, instance profile) all apply. Botocore retries
are kept low; the launch guard owns back-off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from server.config import ServerSettings
from server.launchers.base import FleetMember, Launcher, LaunchError, MemberState, WorkerSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

TAG_CLUSTER = "dynwork:cluster"
TAG_ROLE = "dynwork:role"
TAG_SERVER = "dynwork:server"
TAG_WORKER_ID = "dynwork:worker-id"
ROLE_WORKER = "worker"

LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
#: a launch the cloud has not listed yet is still counted this long (eventual consistency)
UNLISTED_GRACE_S = 120.0
#: error codes that no amount of retrying soon will fix
FATAL_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "Blocked",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidLaunchTemplateName.NotFoundException",
        "InvalidLaunchTemplateId.NotFound",
        "InvalidLaunchTemplateName.MalformedException",
        "InvalidAMIID.NotFound",
        "InvalidAMIID.Malformed",
    }
)

_STATE = {
    "pending": MemberState.STARTING,
    "running": MemberState.RUNNING,
}


@dataclasses.dataclass
class Instance:
    instance_id: str
    worker_id: str
    state: str  # the EC2 state name
    launched_at: float
    owned: bool
    listed_at: float  # when the cloud last listed it (0: only known from RunInstances)

    def member(self) -> FleetMember:
        return FleetMember(self.worker_id, _STATE.get(self.state, MemberState.GONE), self.launched_at, owned=self.owned)


def user_data(spec: WorkerSpec) -> str:
    """The worker's instance user-data: a TOML document read by `python -m worker.bootstrap`."""

    def s(value: str) -> str:
        return json.dumps(value)  # a JSON string with ASCII escapes is a valid TOML basic string

    return "\n".join(
        [
            "# dynwork worker settings, read by python -m worker.bootstrap",
            f"servers = [{', '.join(s(url) for url in spec.servers)}]",
            f"token = {s(spec.token)}",
            f"worker_id = {s(spec.worker_id)}",
            f"threads = {int(spec.threads)}",
            f"idle_exit_s = {float(spec.idle_exit_s)!r}",
            "",
        ]
    )


def _error(exc: BaseException, what: str) -> LaunchError:
    """A boto3/botocore exception as a LaunchError, classified retryable or not."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "")
    name = type(exc).__name__
    retryable = code not in FATAL_CODES and name not in (
        "NoCredentialsError",
        "NoRegionError",
        "PartialCredentialsError",
    )
    return LaunchError(f"{what}: {code or name}: {exc}", retryable=retryable)


class Ec2Launcher(Launcher):
    name = "ec2"
    default_boot_timeout_s = 300.0

    def __init__(
        self,
        settings: ServerSettings,
        *,
        client_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.template = settings.launch_template
        self.cluster = settings.cluster
        self.region = settings.aws_region or None
        self.server = settings.server_name
        self.reconcile_interval_s = settings.reconcile_interval_s
        self.clock = clock  # monotonic: what every duration is measured on
        self.wall = wall  # only to turn the cloud's LaunchTime into the monotonic clock
        self._client_factory = client_factory or self._default_client
        # The boto3 EC2 client (untyped), built in start() once the environment is final (tests start moto first).
        self.client: Any = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="ec2")
        self._instances: dict[str, Instance] = {}  # by instance id
        self._gone: list[FleetMember] = []  # reported GONE once by fleet(), then forgotten
        self._closed = False
        self.reconciled_at: float | None = None
        self.reconcile_error: str | None = None
        self.launched_total = 0
        self.terminated_total = 0

    def _default_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        return boto3.session.Session().client("ec2", region_name=self.region, config=config)

    async def _call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, **kwargs))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            self.client = await asyncio.get_running_loop().run_in_executor(self._pool, self._client_factory)
        except Exception as exc:
            raise RuntimeError(
                f"cannot create the EC2 client: {type(exc).__name__}: {exc} "
                "(set --aws-region or AWS_REGION, and credentials)"
            ) from exc
        await self.reconcile()  # adopt the fleet before the first scaling decision

    def loops(self) -> dict[str, tuple[Callable[[], Awaitable[None]], float]]:
        return {"ec2 reconcile": (self.reconcile, self.reconcile_interval_s)}

    async def close(self) -> None:
        # Instances keep running: they exit on their own when idle.
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the truth -------------------------------------------------------------------------
    def _filters(self) -> list[dict[str, Any]]:
        return [
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]},
            {"Name": f"tag:{TAG_ROLE}", "Values": [ROLE_WORKER]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]

    def _describe(self, instance_ids: list[str] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Filters": self._filters()}
        if instance_ids:
            kwargs["InstanceIds"] = instance_ids
        found: list[dict[str, Any]] = []
        for page in self.client.get_paginator("describe_instances").paginate(**kwargs):
            for reservation in page.get("Reservations", []):
                found.extend(reservation.get("Instances", []))
        return found

    def _from_cloud(self, raw: dict[str, Any], now: float) -> Instance | None:
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        if tags.get(TAG_CLUSTER) != self.cluster or tags.get(TAG_ROLE) != ROLE_WORKER:
            return None
        launch_time = raw.get("LaunchTime")
        launched_at = now
        if launch_time is not None and hasattr(launch_time, "timestamp"):
            launched_at = now - max(0.0, self.wall() - float(launch_time.timestamp()))
        return Instance(
            instance_id=raw["InstanceId"],
            worker_id=tags.get(TAG_WORKER_ID) or raw["InstanceId"],
            state=raw.get("State", {}).get("Name", "pending"),
            launched_at=launched_at,
            owned=tags.get(TAG_SERVER) == self.server,
            listed_at=now,
        )

    async def reconcile(self) -> None:
        """Rebuild the fleet view from DescribeInstances; a failure keeps the last view."""
        if self._closed:
            return
        try:
            raw = await self._call(self._describe)
        except Exception as exc:  # noqa: BLE001 - any AWS or network failure: keep the last view
            self.reconcile_error = str(_error(exc, "DescribeInstances"))
            log.warning("fleet reconciliation failed, keeping the last view: %s", self.reconcile_error)
            return
        now = self.clock()
        listed = {}
        for item in raw:
            inst = self._from_cloud(item, now)
            if inst is not None:
                listed[inst.instance_id] = inst
        for instance_id, known in list(self._instances.items()):
            if instance_id in listed:
                if known.state == "shutting-down" and listed[instance_id].state in _STATE:
                    listed[instance_id].state = known.state  # we terminated it; the cloud lags
                continue
            recent_launch = known.listed_at == 0 and now - known.launched_at < UNLISTED_GRACE_S
            if recent_launch:
                listed[instance_id] = known  # launched, not listed yet
            else:
                self._gone.append(dataclasses.replace(known.member(), state=MemberState.GONE))
        new = [i for i in listed.values() if i.instance_id not in self._instances]
        for inst in new:
            log.info(
                "adopted %s instance %s (worker %s, %s)",
                "own" if inst.owned else "foreign",
                inst.instance_id,
                inst.worker_id,
                inst.state,
            )
        self._instances = listed
        self.reconciled_at = now
        self.reconcile_error = None
        # A stopped worker is useless and still bills for its volume: finish the job the
        # instance-initiated shutdown should have done.
        stopped = [i.worker_id for i in listed.values() if i.owned and i.state == "stopped"]
        if stopped:
            await self.terminate(stopped)

    async def fleet(self) -> dict[str, FleetMember]:
        members = {m.worker_id: m for m in self._gone}
        self._gone = []
        for inst in self._instances.values():
            members[inst.worker_id] = inst.member()
        return members

    # -- launching -------------------------------------------------------------------------
    def _run_one(self, spec: WorkerSpec) -> dict[str, Any]:
        tags = [
            {"Key": TAG_CLUSTER, "Value": self.cluster},
            {"Key": TAG_ROLE, "Value": ROLE_WORKER},
            {"Key": TAG_SERVER, "Value": self.server},
            {"Key": TAG_WORKER_ID, "Value": spec.worker_id},
            {"Key": "Name", "Value": f"dynwork-{self.cluster}-{spec.worker_id}"},
        ]
        answer = self.client.run_instances(
            LaunchTemplate={"LaunchTemplateName": self.template},
            MinCount=1,
            MaxCount=1,
            UserData=user_data(spec),
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        )
        instance: dict[str, Any] = answer["Instances"][0]
        return instance

    async def launch(self, specs: list[WorkerSpec]) -> list[str]:
        """One RunInstances per worker (each has its own user-data), all at once."""
        if self.reconciled_at is None:
            # Until the cloud has told us what runs, a launch could duplicate a fleet we own.
            raise LaunchError(f"fleet not reconciled yet: {self.reconcile_error}")
        results = await asyncio.gather(
            *(self._call(self._run_one, spec=spec) for spec in specs), return_exceptions=True
        )
        started, errors = [], []
        now = self.clock()
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(_error(result, "RunInstances"))
                continue
            inst = Instance(
                result["InstanceId"],
                spec.worker_id,
                result.get("State", {}).get("Name", "pending"),
                now,
                owned=True,
                listed_at=0.0,
            )
            self._instances[inst.instance_id] = inst
            started.append(spec.worker_id)
            log.info("launched instance %s for worker %s", inst.instance_id, spec.worker_id)
        self.launched_total += len(started)
        if errors:
            first = errors[0]
            message = f"{len(errors)} of {len(specs)} launch(es) failed; first: {first}"
            raise LaunchError(message, started=started, retryable=all(e.retryable for e in errors))
        return started

    async def terminate(self, worker_ids: list[str]) -> None:
        """Terminate owned workers; ids of foreign or unknown instances are ignored."""
        wanted = set(worker_ids)
        targets = [
            i for i in self._instances.values() if i.worker_id in wanted and i.owned and i.state != "shutting-down"
        ]
        if not targets:
            return
        try:
            # Ask the cloud again, by id and by tag, right before terminating: only instances that
            # are this cluster's workers now are ever terminated, whatever the cached view says.
            confirmed = await self._call(self._describe, instance_ids=[i.instance_id for i in targets])
            ids = [
                raw["InstanceId"]
                for raw in confirmed
                if (inst := self._from_cloud(raw, 0.0)) is not None and inst.owned
            ]
            if ids:
                await self._call(self.client.terminate_instances, InstanceIds=ids)
        except Exception as exc:  # noqa: BLE001 - retried at the next reap or reconciliation
            log.warning(
                "terminating %s failed: %s",
                ", ".join(i.instance_id for i in targets),
                _error(exc, "TerminateInstances"),
            )
            return
        for inst in targets:
            if inst.instance_id in ids:
                inst.state = "shutting-down"
        self.terminated_total += len(ids)
        log.info("terminated instance(s) %s", ", ".join(ids))

    def status(self) -> dict[str, Any]:
        owned = [i for i in self._instances.values() if i.owned and i.state in _STATE]
        foreign = [i for i in self._instances.values() if not i.owned and i.state in _STATE]
        return {
            "kind": self.name,
            "launch_template": self.template,
            "cluster": self.cluster,
            "instances": len(owned),
            "foreign_instances": len(foreign),
            "launched_total": self.launched_total,
            "terminated_total": self.terminated_total,
            "reconciled_at": self.reconciled_at,
            "reconcile_error": self.reconcile_error,
        }
