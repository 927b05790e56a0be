"""Values on the `dynwork` command line: the servers to talk to and bounded numbers."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence

from yarl import URL

DEFAULT_SERVERS = ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
SERVERS_ENV = "DYNWORK_SERVERS"


class UsageError(Exception):
    """Bad usage the parser cannot see (a server URL, an unreadable file): one line, exit 2."""


def normalize_url(text: str) -> str:
    """`http://host:port` from a server URL; the scheme may be left out."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        url = URL(raw)
        ok = (
            url.scheme in ("http", "https")
            and bool(url.host)
            and url.path in ("", "/")
            and not url.query_string
            and not url.fragment
        )
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"bad server URL {text!r} (want http://HOST:PORT)")
    return str(url.origin())


def resolve_servers(flags: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    """--server flags, else $DYNWORK_SERVERS, else the two local defaults; duplicates dropped."""
    if flags:
        raw = list(flags)
    elif environ.get(SERVERS_ENV, "").strip():
        raw = [s for s in environ[SERVERS_ENV].split(",") if s.strip()]
    else:
        raw = list(DEFAULT_SERVERS)
    return tuple(dict.fromkeys(normalize_url(s) for s in raw))


def positive_int(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a decimal integer within low..high."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    return parse


def _float_above(low: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= low if inclusive else value > low) or math.isinf(value):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low:g}, got {text}")
        return value

    return parse


positive_float = _float_above(0, inclusive=False)
non_negative_float = _float_above(0, inclusive=True)
