"""Helpers for the unit tier: async test bodies with a hard deadline, a real store, a clock the test
moves, a server node wired from its real parts (no background loops, no listening socket), and a
gate that holds the store's writer thread so that operations queue up behind it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec

from server.clock import Clock
from server.config import ServerSettings
from server.node import Node
from server.store import Store

P = ParamSpec("P")

#: no unit test may take longer than this, whatever goes wrong (a hung await fails instead of hanging)
DEADLINE_S = 15.0
SECRET = "unit-test-cluster-secret-0123456789"


def aio(fn: Callable[P, Awaitable[Any]]) -> Callable[P, None]:
    """Turn an `async def` test into a plain one run by asyncio.run (pytest-asyncio is not used).
    Fixtures still work: pytest reads the signature through functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(fn(*args, **kwargs), DEADLINE_S)

        asyncio.run(bounded())

    return wrapper


class FakeClock(Clock):
    """server.clock.Clock moved by the test: `advance` moves both clocks (time passes),
    `step_wall` moves the wall clock alone (NTP, an operator, a resumed VM)."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1000.0) -> None:
        self.wall_now = wall
        self.mono_now = mono
        super().__init__()

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall_now += seconds


@contextlib.asynccontextmanager
async def opened_store(path: Path, *, synchronous: str = "NORMAL") -> AsyncIterator[Store]:
    """A started Store on a real SQLite file, closed afterwards."""
    store = Store(path, synchronous=synchronous)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def insert_seq(store: Store, nonce: str, iterations: int, body: bytes, now: float) -> int:
    """Store.insert for a test that needs only the new job's seq (not where its body went)."""
    seq, _ = await store.insert(nonce, iterations, body, now)
    return seq


async def flush(store: Store) -> None:
    """Wait until everything queued to the writer so far is committed (operations commit in order)."""
    await store.db.run(lambda conn: None, durable=False)


@contextlib.asynccontextmanager
async def opened_node(
    state_dir: Path, *, clock: Clock | None = None, name: str = "a", **settings: Any
) -> AsyncIterator[Node]:
    """A real server.node.Node (store, scheduler, registry, hand-outs, peering, service) started
    as Node.start does but without its background loops: the test calls sweeps itself."""
    settings.setdefault("launcher", "none")
    settings.setdefault("sqlite_synchronous", "NORMAL")
    settings.setdefault("hash_on_arrival", 0)  # the worker path, unless a test asks for hashing on arrival
    node = Node(ServerSettings(name=name, state_dir=state_dir, **settings), SECRET, clock=clock or FakeClock())
    await node.store.start()
    try:
        await node.store.check_identity(node.name)
        await node.scheduler.load()
        await node.revocations.load()
        await node.peering.load()
        if node.peer:
            await node.peer.start()
        yield node
    finally:
        await node.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` on the event loop until it holds; fail after timeout_s (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_in_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 5.0), "the writer thread never got there"


class Gate:
    """An operation that holds the writer thread until opened, so what follows queues up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        assert self.opened.wait(5.0)

    def open(self) -> None:
        self.opened.set()
