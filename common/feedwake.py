"""An eventfd that a hashing thread writes when a job of its `native.Feed` is done, read on the
event loop (see native.Feed.notify): the server's arrival hashing and the worker's lanes use it to
take each result as soon as its lane is done, not when the whole run is."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Callable
from typing import Any


class FeedWake:
    """Linux only: `open` gives None elsewhere (or when no fd is left, or the loop cannot watch
    one), and the caller then takes a run's results when the run is done, as a whole."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop, on_wake: Callable[[], None]) -> FeedWake | None:
        try:
            wake = cls(loop, os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        except (AttributeError, OSError):  # no eventfd here, or no fd left
            return None

        def woken() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(wake.fd)
            on_wake()

        try:
            loop.add_reader(wake.fd, woken)
        except (NotImplementedError, OSError):  # a loop that cannot watch fds
            os.close(wake.fd)
            return None
        return wake

    def close(self, running: concurrent.futures.Future[Any] | None) -> None:
        """Stop reading it, and close it once no run can write to it: after `running` (the run
        that was given it, if it may still be going; its task was cancelled) is done."""
        self.loop.remove_reader(self.fd)
        fd = self.fd
        if running is None:
            os.close(fd)
        else:  # at once if it is done; else in the hashing thread, once the run has returned
            running.add_done_callback(lambda _: os.close(fd))
