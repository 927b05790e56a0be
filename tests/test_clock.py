"""A step of the wall clock (NTP, an operator, a resumed VM) by +/- 1 hour expires no lease, reaps
no worker, drops no result and launches nothing: every duration is measured on the monotonic
clock. In process, with the real node parts and an injected clock whose wall time jumps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from server.clock import Clock
from server.config import ServerSettings
from server.jobs import State
from server.launchers.base import FleetMember, Launcher, MemberState, WorkerSpec
from server.node import Node
from server.scaling.autoscaler import Autoscaler
from server.service import LeaseGrant

SECRET = "s" * 32
HOUR = 3600.0


class SteppedClock(Clock):
    """The real clocks, each with an offset the test moves: `step` jumps the wall clock,
    `paused` moves the monotonic one forward as if the process had been stopped."""

    def __init__(self) -> None:
        self.step = 0.0
        self.paused = 0.0
        super().__init__()

    def wall(self) -> float:
        return time.time() + self.step

    def mono(self) -> float:
        return time.monotonic() + self.paused


def autoscaler_for(node: Node, clock: Clock, launcher: Launcher, **hooks: object) -> Autoscaler:
    """An autoscaler over the node's own parts, as the node wires one (with a launcher of the test's)."""
    return Autoscaler(
        settings=node.settings,
        scheduler=node.scheduler,
        registry=node.registry,
        launcher=launcher,
        guard=node.guard,
        loans=node.loans,
        servers=("http://s1",),
        secret=SECRET,
        clock=clock.mono,
        **hooks,
    )  # type: ignore[arg-type]  # the test's hooks: on_reap


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.content_length = len(data)

    async def read(self, limit: int) -> list[bytes]:
        return [self.data]


class FakeLauncher(Launcher):
    """One worker that runs and reports; launches are recorded, never made."""

    name = "fake"

    def __init__(self, clock: Clock) -> None:
        self.launched: list[str] = []
        self.member = FleetMember("w-live", MemberState.RUNNING, clock.mono())

    async def launch(self, specs: list[WorkerSpec]) -> list[str]:
        self.launched += [s.worker_id for s in specs]
        return [s.worker_id for s in specs]

    async def terminate(self, worker_ids: list[str]) -> None:
        pass

    async def fleet(self) -> dict[str, FleetMember]:
        return {self.member.worker_id: self.member}


def settings(tmp_path: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = dict(
        launcher="none",
        state_dir=tmp_path / "s",
        name="s1",
        lease_s=30.0,
        worker_dead_s=15.0,
        result_ttl_s=600.0,
        scale_up_wait_s=60.0,
        target_drain_s=3600.0,
        hash_on_arrival=0,  # its jobs go through leases
    )
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]  # a test's mix of option types


def test_wall_clock_steps_expire_reap_drop_and_launch_nothing(tmp_path):
    async def scenario() -> None:
        clock = SteppedClock()
        node = Node(settings(tmp_path), SECRET, clock=clock)
        await node.start()
        try:
            service = node.service
            done = (await service.enqueue(1, Body(b"finished"))).work_id
            running = (await service.enqueue(1, Body(b"running"))).work_id
            waiting = (await service.enqueue(1, Body(b"waiting"))).work_id
            grants: list[LeaseGrant] = []

            async def deliver(grant: LeaseGrant) -> None:
                grants.append(grant)

            await service.lease("w-live", 2, 0.0, deliver)
            leased = {str(j.work_id): j for j in grants[0].jobs}
            assert set(leased) == {str(done), str(running)}
            await node.scheduler.complete("w-live", [(done.seq, b"\1" * 64, leased[str(done)].lease_id)])

            launcher = FakeLauncher(clock)
            autoscaler = autoscaler_for(node, clock, launcher)
            node.loans.max_workers = 3
            for step in (+HOUR, -HOUR, +24 * HOUR):
                clock.step = step
                await node._sweep()
                await node._expire_results()
                await autoscaler.tick()
                assert node.scheduler.current(running.seq) is not None, f"lease expired at a step of {step}"
                assert "w-live" in node.registry.workers, f"worker forgotten at a step of {step}"
                assert node.store.get(done.seq) is not None, f"result dropped at a step of {step}"
                assert node.scheduler.oldest_wait_s() < 30, f"the queue looks old at a step of {step}"
                assert launcher.launched == [], f"launched at a step of {step}"
                assert autoscaler.view.live == 1
            assert waiting.seq in node.scheduler.queued
            assert node.store.get(done.seq).state is State.COMPLETED
        finally:
            await node.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_server_paused_longer_than_worker_dead_s_does_not_reap_its_healthy_workers(tmp_path):
    async def scenario() -> None:
        clock = SteppedClock()
        node = Node(settings(tmp_path, worker_dead_s=4.0, scale_interval_s=0.5), SECRET, clock=clock)
        await node.start()
        try:
            launcher = FakeLauncher(clock)
            reaped: list[str] = []
            autoscaler = autoscaler_for(node, clock, launcher, on_reap=reaped.extend)
            node.registry.touch("w-live")
            await autoscaler.tick()
            clock.paused += 7.0  # SIGSTOP for 7 s: the worker could not reach us meanwhile
            await autoscaler.tick()
            assert reaped == [] and "w-live" in node.registry.workers
            for _ in range(10):  # but a worker that then stays silent while we run is reaped as usual
                clock.paused += 0.5
                await autoscaler.tick()
            assert reaped == ["w-live"]
        finally:
            await node.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
