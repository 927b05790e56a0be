"""Run a coroutine on the fastest event loop available: uvloop where it is installed (Linux,
macOS), the standard asyncio loop elsewhere. The server and the worker both start through it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop serves too, only slower
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
