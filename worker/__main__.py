"""`python -m worker`: lease jobs from the servers and hash them (see --help)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from common import loop
from common.malloc import LEASE_MMAP_THRESHOLD, LEASE_TRIM_THRESHOLD, keep_freed_body_memory
from common.settings import SettingsError, read_token
from worker.config import load_settings
from worker.runner import Worker


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
        token = read_token(settings.token_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s worker %(name)s: %(message)s"
    )
    import native  # imported late: --help works without the compiled module

    keep_freed_body_memory(LEASE_MMAP_THRESHOLD, LEASE_TRIM_THRESHOLD)  # lease answers of many bodies each
    worker = Worker(settings, token, hasher=native.chain_many, lanes=native.lanes(), feed=native.Feed)
    code = loop.run(_run(worker))
    if worker.abandoned_hashing:
        # Interpreter exit would wait for the C call to finish a job that is no longer ours.
        logging.shutdown()
        os._exit(code)
    return code


async def _run(worker: Worker) -> int:
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, worker.stop, f"signal {sig.name}")
    return await worker.run()


if __name__ == "__main__":
    sys.exit(main())
