"""`python -m server`: run a dynwork front server (see --help)."""

from __future__ import annotations

import sys

from common import logs, loop
from common.settings import SettingsError, read_token
from server.config import load_settings
from server.daemon import daemonize


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    logs.setup(settings.log_level, settings.log_format)
    try:
        token = read_token(settings.token_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from server.app import serve  # after the fork in daemon mode: nothing of the event loop is shared

    if settings.daemon:
        return daemonize(settings, lambda ready: loop.run(serve(settings, token, ready)))
    return loop.run(serve(settings, token))


if __name__ == "__main__":
    sys.exit(main())
