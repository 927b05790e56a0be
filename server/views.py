"""What the API shows of a job, and the checks applied to the same shapes coming from the peer."""

from __future__ import annotations

import math
import re
from typing import Any

from common.ids import WorkId
from server.jobs import JobRecord, State

DIGEST_HEX = re.compile(r"[0-9a-f]{128}")  # a SHA-512 digest as the API shows it
STATUS_LABELS = frozenset(state.label for state in State)
WORK_STATUS_KEYS = ("work_id", "status", "iterations", "enqueued_at", "completed_at", "result", "error", "attempts")


def finished_item(server: str, record: JobRecord) -> dict[str, Any]:
    """A finished job as pullCompleted hands it out."""
    item: dict[str, Any] = {
        "work_id": str(record.work_id(server)),
        "result": record.result.hex() if record.result else None,
        "iterations": record.iterations,
        "completed_at": record.completed_at,
    }
    if record.error is not None:
        item["error"] = record.error
    return item


def work_status(server: str, record: JobRecord) -> dict[str, Any]:
    """A job as GET /work/{id} shows it."""
    return {
        "work_id": str(record.work_id(server)),
        "status": record.state.label,
        "iterations": record.iterations,
        "enqueued_at": record.enqueued_at,
        "completed_at": record.completed_at,
        "result": record.result.hex() if record.result else None,
        "error": record.error,
        "attempts": record.attempts,
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_HEX.fullmatch(value) is not None


def check_finished_item(value: object, owner: str | None) -> dict[str, Any]:
    """A pullCompleted item from the peer, checked field by field; ValueError when it is not one."""
    if not isinstance(value, dict):
        raise ValueError("item is not an object")
    raw_id = value.get("work_id")
    work_id = WorkId.parse(raw_id) if isinstance(raw_id, str) else None
    if work_id is None or (owner is not None and work_id.server != owner):
        raise ValueError("item has no work id of the peer's")
    result, error = value.get("result"), value.get("error")
    if not (_is_digest(result) or (result is None and isinstance(error, str))):
        raise ValueError("item has neither a digest nor an error")
    if not _is_count(value.get("iterations")) or not _is_number(value.get("completed_at")):
        raise ValueError("item lacks iterations or completed_at")
    item = {k: value[k] for k in ("work_id", "result", "iterations", "completed_at")}
    if error is not None:
        item["error"] = str(error)
    return item


def check_work_status(value: object, work_id: str) -> dict[str, Any]:
    """A /work answer from the peer for `work_id`, checked; ValueError when it is not one."""
    if not isinstance(value, dict) or value.get("work_id") != work_id:
        raise ValueError("answer is not the status of the job asked for")
    if value.get("status") not in STATUS_LABELS:
        raise ValueError("answer has no known status")
    result, error = value.get("result"), value.get("error")
    if result is not None and not _is_digest(result):
        raise ValueError("answer has a malformed result")
    if error is not None and not isinstance(error, str):
        raise ValueError("answer has a malformed error")
    if not _is_count(value.get("iterations")) or not _is_count(value.get("attempts", 0)):
        raise ValueError("answer lacks iterations or has odd attempts")
    if not _is_number(value.get("enqueued_at")):
        raise ValueError("answer lacks enqueued_at")
    completed_at = value.get("completed_at")
    if completed_at is not None and not _is_number(completed_at):
        raise ValueError("answer has a malformed completed_at")
    checked = {k: value[k] for k in WORK_STATUS_KEYS if k in value}
    if "history" in value:
        checked["history"] = check_history(value["history"])
    return checked


def check_history(value: object) -> dict[str, Any]:
    """A job's history from the peer: times and leases of the documented shape only."""
    if not isinstance(value, dict) or not isinstance(value.get("leases"), list) or len(value["leases"]) > 1000:
        raise ValueError("history is not an object with a list of leases")
    times = ("enqueued_at", "finished_at", "handed_out_at")
    if any(value.get(k) is not None and not _is_number(value.get(k)) for k in times):
        raise ValueError("history has a malformed time")
    leases = []
    for lease in value["leases"]:
        if not isinstance(lease, dict) or not all(isinstance(lease.get(k), str) for k in ("lease_id", "worker")):
            raise ValueError("history has a malformed lease")
        if any(lease.get(k) is not None and not _is_number(lease.get(k)) for k in ("started_at", "ended_at")):
            raise ValueError("history has a malformed lease time")
        outcome = lease.get("outcome")
        if outcome is not None and not isinstance(outcome, str):
            raise ValueError("history has a malformed outcome")
        leases.append({k: lease.get(k) for k in ("lease_id", "worker", "started_at", "ended_at", "outcome")})
    return {**{k: value.get(k) for k in times}, "leases": leases}
