"""Helpers for the unit tier: run async test bodies with a hard deadline, open a real store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec

from server.store import Store

P = ParamSpec("P")

#: no unit test may take longer than this, whatever goes wrong (a hung await fails instead of hanging)
DEADLINE_S = 15.0


def aio(fn: Callable[P, Awaitable[Any]]) -> Callable[P, None]:
    """Turn an `async def` test into a plain one run by asyncio.run (pytest-asyncio is not used).
    Fixtures still work: pytest reads the signature through functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(fn(*args, **kwargs), DEADLINE_S)

        asyncio.run(bounded())

    return wrapper


@contextlib.asynccontextmanager
async def opened_store(path: Path, *, synchronous: str = "NORMAL") -> AsyncIterator[Store]:
    """A started Store on a real SQLite file, closed afterwards."""
    store = Store(path, synchronous=synchronous)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def flush(store: Store) -> None:
    """Wait until everything queued to the writer so far is committed (operations commit in order)."""
    await store.run(lambda conn: None, durable=False)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` on the event loop until it holds; fail after timeout_s (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)
