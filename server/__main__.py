"""`python -m server`: run a dynwork front server (see --help)."""
from __future__ import annotations

import asyncio
import logging
import sys

from server.config import load_settings
from server.daemon import daemonize
from worker.settings import SettingsError, read_token


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = read_token(settings.token_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.daemon:
        return daemonize(settings, lambda ready: asyncio.run(_serve(settings, token, ready)))
    from server.app import serve
    return asyncio.run(serve(settings, token))


async def _serve(settings, token, ready) -> int:
    from server.app import serve
    return await serve(settings, token, ready)


if __name__ == "__main__":
    sys.exit(main())
