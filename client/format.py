"""Plain-text rendering for the `dynwork` CLI: aligned tables, UTC times, pulled results, server status."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from client.api import ServerStatus

STATUS_HEADER = (
    "SERVER", "URL", "STATE", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "OLDEST", "JOBS/S", "WORKERS", "SERVING",
    "LOANS", "PEER",
)  # fmt: skip
STATUS_LEGEND = (
    "WORKERS: launched by the server, live+starting/allowed; SERVING: workers reporting to it; LOANS: +borrowed/-lent"
)


def format_time(epoch: Any) -> str:
    """An epoch time as ISO 8601 UTC with milliseconds; "-" for anything that is not a number."""
    if not isinstance(epoch, int | float):
        return "-"
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; columns listed in `right` are right-aligned."""
    table = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    right_aligned = set(right)
    lines = []
    for row in table:
        cells = [
            cell.rjust(w) if c in right_aligned else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_pulled(items: Sequence[dict[str, Any]]) -> str:
    """pullCompleted's items as a table, a failed job's error in place of its result."""
    rows = [
        (
            i.get("work_id"),
            i.get("iterations"),
            format_time(i.get("completed_at")),
            i.get("result") if i.get("result") is not None else f"FAILED: {i.get('error')}",
        )
        for i in items
    ]
    return format_table(("WORK ID", "ITERATIONS", "COMPLETED", "RESULT"), rows, right=(1,))


def _get(d: Any, *keys: str, default: Any = "?") -> Any:
    """d[k1][k2]...; `default` where a level is missing (a status from an older or newer server)."""
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return default if d is None else d


def _status_row(s: dict[str, Any], url: str) -> list[Any]:
    oldest = _get(s, "oldest_queued_age_s")
    rate = _get(s, "jobs_per_s")
    workers = f"{_get(s, 'workers', 'live')}+{_get(s, 'workers', 'starting')}/{_get(s, 'workers', 'allowed')}"
    loans = f"+{_get(s, 'loans', 'borrowed')}/-{_get(s, 'loans', 'lent')}"
    peer = s.get("peer")
    peer_text = "none" if peer is None else ("ok" if _get(peer, "reachable", default=False) else "unreachable")
    return [
        _get(s, "server"),
        url,
        "closing" if s.get("closing") else "up",
        _get(s, "queued"),
        _get(s, "running"),
        _get(s, "completed"),
        _get(s, "failed"),
        f"{oldest:.1f}s" if isinstance(oldest, int | float) else oldest,
        f"{rate:.1f}" if isinstance(rate, int | float) else rate,
        workers,
        _get(s, "workers_reporting"),
        loans,
        peer_text,
    ]


def format_status(entries: Sequence[ServerStatus]) -> str:
    """One row per server (DOWN for one that could not answer), then why each down one is down."""
    rows, notes = [], []
    for entry in entries:
        if not entry["up"]:
            rows.append(["-", entry["url"], "DOWN"] + ["-"] * (len(STATUS_HEADER) - 3))
            notes.append(f"{entry['url']}: {entry.get('error')}")
        else:
            rows.append(_status_row(entry.get("status", {}), entry["url"]))
    text = format_table(STATUS_HEADER, rows, right=(3, 4, 5, 6, 7, 8, 10))
    return text + "".join(f"\n{note}" for note in notes)


def format_history(history: dict[str, Any]) -> str:
    """A job's history as a table, one line per event: enqueued, each lease, finished, handed out."""
    rows: list[Sequence[Any]] = [(format_time(history.get("enqueued_at")), "enqueued", "", "")]
    for lease in history.get("leases") or []:
        rows.append(
            (format_time(lease.get("started_at")), "leased", lease.get("worker", "?"), lease.get("lease_id", ""))
        )
        if lease.get("ended_at") is not None:
            rows.append(
                (
                    format_time(lease.get("ended_at")),
                    "lease ended",
                    lease.get("worker", "?"),
                    lease.get("outcome") or "",
                )
            )
    if history.get("finished_at") is not None:
        rows.append((format_time(history.get("finished_at")), "finished", "", ""))
    if history.get("handed_out_at") is not None:
        rows.append((format_time(history.get("handed_out_at")), "handed out", "", ""))
    return format_table(("time", "event", "worker", "detail"), rows)
