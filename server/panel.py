"""What the dashboard shows of one server (its panel), and the check applied to a panel coming
from the peer.

A panel is public, like GET /status: it is built from the public status report (no URLs, launch
template or cloud error text) and from the dashboard's own memory (server/timeline.py). Every
field is listed below with its check; `check` rebuilds a peer's panel from these fields only, so
the page never renders anything the peer added.

    {"server", "summary": {SUMMARY}, "fleet": {FLEET}, "timeline": {epoch, seq, full, t, SERIES},
     "workers": [{WORKER}], "failures": [{FAILURE}] (newest first)}
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common.ids import NAME_RE
from server import status
from server.timeline import FAILURES_KEPT, HISTORY_S, MAX_FAILURE_CHARS, SAMPLE_INTERVAL_S, SERIES, Timeline

if TYPE_CHECKING:
    from server.node import Node

MAX_WORKERS_SHOWN = 500
WORKER_STATES = frozenset({"busy", "idle", "silent"})
_EPOCH = re.compile(r"[0-9a-f]{1,16}")

Check = Callable[[object], bool]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flag(value: object) -> bool:
    return isinstance(value, bool)


def _text(limit: int) -> Check:
    return lambda value: isinstance(value, str) and len(value) <= limit and value.isprintable()


def _maybe(check: Check) -> Check:
    return lambda value: value is None or check(value)


SUMMARY: dict[str, Check] = {
    "queued": _count,
    "running": _count,
    "completed": _count,  # finished jobs kept (result_ttl_s), as in /status
    "failed": _count,
    "oldest_queued_age_s": _number,
    "throughput": _number,  # jobs completed per second, over the last few samples
    "p50": _maybe(_number),  # end-to-end latency (enqueue -> complete) over the last minute, seconds
    "p95": _maybe(_number),
    "p99": _maybe(_number),
    "workers": _count,  # reporting within worker_dead_s
    "busy": _count,
    "healthy": _flag,
    "closing": _flag,
}
FLEET: dict[str, Check] = {
    "launcher": _text(16),  # none, local, ec2
    "live": _count,
    "starting": _count,
    "max": _count,
    "allowed": _count,
    "wanted": _maybe(_count),
    "guard": _maybe(_text(16)),  # ok, capped, backoff, suspended (None: no launcher)
    "launches_last_minute": _maybe(_count),
    "max_launches_per_minute": _maybe(_count),
    "launch_failures": _maybe(_count),
    "boot_failures": _maybe(_count),
    "retry_in_s": _maybe(_number),
    "probe_in_s": _maybe(_number),
    "borrowed": _count,
    "lent": _count,
}
WORKER: dict[str, Check] = {
    "id": _text(128),
    "state": lambda value: value in WORKER_STATES,
    "rate": _maybe(_number),  # cost units (SHA-512 compressions) per second while busy
    "jobs_done": _count,  # results accepted from it by this server
    "age_s": _number,  # since it first reported to this server
    "last_seen_s": _number,
}
FAILURE: dict[str, Check] = {
    "work_id": _text(80),
    "error": _text(MAX_FAILURE_CHARS),
    "at": _number,  # wall clock
    "worker": _maybe(_text(128)),
    "attempts": _count,
}


def build(node: Node, timeline: Timeline, cursor: str | None) -> dict[str, Any]:
    """This server's panel, with the samples a reader at `cursor` lacks."""
    report = status.report(node, detail=False)
    latest = timeline.latest()
    workers, launcher = report["workers"], report["launcher"]
    guard: dict[str, Any] = launcher.get("guard", {})
    summary = {
        "queued": report["queued"],
        "running": report["running"],
        "completed": report["completed"],
        "failed": report["failed"],
        "oldest_queued_age_s": report["oldest_queued_age_s"],
        "throughput": round(latest.throughput, 2) if latest else 0.0,
        **{name: _seconds(getattr(latest, name, None)) for name in ("p50", "p95", "p99")},
        "workers": latest.workers if latest else 0,
        "busy": latest.busy if latest else 0,
        "healthy": report["health"]["ok"],
        "closing": report["closing"],
    }
    fleet = {
        "launcher": launcher["kind"],
        **{key: workers.get(key, 0) for key in ("live", "starting", "max", "allowed")},
        "wanted": workers.get("wanted"),
        "guard": guard.get("state"),
        "launches_last_minute": guard.get("launches_last_minute"),
        "max_launches_per_minute": guard.get("max_per_minute"),
        "launch_failures": guard.get("failures"),
        "boot_failures": guard.get("boot_failures"),
        "retry_in_s": guard.get("retry_in_s"),
        "probe_in_s": guard.get("probe_in_s"),
        "borrowed": report["loans"]["borrowed"],
        "lent": report["loans"]["lent"],
    }
    return {
        "server": node.name,
        "summary": summary,
        "fleet": fleet,
        "timeline": timeline.columns(cursor),
        "workers": _workers(node),
        "failures": [
            {"work_id": f.work_id, "error": f.error, "at": round(f.at, 3), "worker": f.worker, "attempts": f.attempts}
            for f in reversed(node.recorder.failures)
        ],
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _workers(node: Node) -> list[dict[str, Any]]:
    now = node.clock.mono()
    dead_s = node.settings.worker_dead_s
    known = sorted(node.registry.workers.values(), key=lambda w: w.worker_id)[:MAX_WORKERS_SHOWN]
    return [
        {
            "id": w.worker_id,
            "state": "silent" if now - w.last_seen > dead_s else "busy" if w.busy else "idle",
            "rate": w.rate,
            "jobs_done": w.completed,
            "age_s": round(now - w.first_seen, 1),
            "last_seen_s": round(now - w.last_seen, 1),
        }
        for w in known
    ]


def _fields(value: object, spec: dict[str, Check], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    for key, check in spec.items():
        if not check(value.get(key)):
            raise ValueError(f"{what} has a missing or malformed {key}")
    return {key: value.get(key) for key in spec}  # an optional field left out is None


def _records(value: object, spec: dict[str, Check], limit: int, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError(f"{what} is not a list of at most {limit}")
    return [_fields(item, spec, what) for item in value]


def _timeline(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("timeline is not an object")
    epoch, seq, full = value.get("epoch"), value.get("seq"), value.get("full")
    if not (isinstance(epoch, str) and _EPOCH.fullmatch(epoch) and isinstance(seq, int) and _count(seq)):
        raise ValueError("timeline lacks its epoch or seq")
    if not _flag(full):
        raise ValueError("timeline lacks full")
    columns = {"epoch": epoch, "seq": seq, "full": full}
    length = None
    capacity = int(HISTORY_S / SAMPLE_INTERVAL_S)
    for name in ("t", *SERIES):
        column = value.get(name)
        check = _number if name in ("t", "throughput") else _maybe(_number)
        if not isinstance(column, list) or len(column) > min(capacity, seq) or not all(map(check, column)):
            raise ValueError(f"timeline has a malformed {name}")
        if length is not None and len(column) != length:
            raise ValueError("timeline columns differ in length")
        length = len(column)
        columns[name] = column
    return columns


def check(value: object) -> dict[str, Any]:
    """A panel from the peer, rebuilt from the known fields; ValueError when it is not one."""
    name = value.get("server") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError("panel has no server name")
    return {
        "server": value["server"],
        "summary": _fields(value.get("summary"), SUMMARY, "summary"),
        "fleet": _fields(value.get("fleet"), FLEET, "fleet"),
        "timeline": _timeline(value.get("timeline")),
        "workers": _records(value.get("workers"), WORKER, MAX_WORKERS_SHOWN, "workers"),
        "failures": _records(value.get("failures"), FAILURE, FAILURES_KEPT, "failures"),
    }
