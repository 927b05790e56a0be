"""GET /status (public) and GET /internal/status (the operator's, with every detail).

The public report says how the server is doing: counts, ages, rates, fleet sizes, whether the
peer answers and whether launching works. What could help an attacker or leak account data
(the peer's URL, the launch template, cloud error text with ARNs and account ids) is only in
the operator's report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.jobs import State

if TYPE_CHECKING:
    from server.node import Node

PRIVATE_LAUNCHER_KEYS = frozenset({"launch_template", "cluster", "reconcile_error"})
PRIVATE_GUARD_KEYS = frozenset({"last_error"})


def report(node: Node, *, detail: bool) -> dict[str, Any]:
    service, scheduler, settings = node.service, node.scheduler, node.settings
    counts = node.store.counts()
    workers = node.autoscaler.status() if node.autoscaler else {"live": 0, "starting": 0, "max": 0, "allowed": 0}
    peer = None
    if node.peer:
        peer = {"name": node.peer.name, "reachable": node.peer.reachable()}
        if detail:
            peer |= {"url": node.peer.url, "error": node.peer.last_error}
    launcher: dict[str, Any] = {"kind": "none"}
    if node.launcher:
        full = node.launcher.status()
        guard = node.guard.status()
        launcher = full if detail else {k: v for k, v in full.items() if k not in PRIVATE_LAUNCHER_KEYS}
        if not detail and "reconcile_error" in full:
            launcher["reconcile_failing"] = full["reconcile_error"] is not None
        launcher["guard"] = guard if detail else {k: v for k, v in guard.items() if k not in PRIVATE_GUARD_KEYS}
    status: dict[str, Any] = {
        "server": node.name,
        "queued": len(scheduler.queued),
        "running": len(scheduler.leases),
        "completed": counts.get(State.COMPLETED, 0),
        "failed": counts.get(State.FAILED, 0),
        "oldest_queued_age_s": round(scheduler.oldest_wait_s(), 3),
        "backlog_cost": scheduler.backlog_cost,
        "jobs_per_s": scheduler.jobs_per_s(),
        "workers": workers,
        "workers_reporting": len(node.registry.seen_within(settings.worker_dead_s)),
        "loans": {"borrowed": node.loans.borrowed, "lent": node.loans.lent},
        "peer": peer,
        "launcher": launcher,
        "health": {"ok": not node.health.degraded, "problems": node.health.problems(detail=detail)},
        "connections": node.connections.status(),
        "closing": service.closing,
    }
    if detail:
        status["url"] = settings.url
        status["handouts"] = {
            "reserved_for_peer": len(node.handouts.for_peer),
            "confirmed_with_peer_total": node.handouts.confirmed_total,
            "lapsed_total": node.handouts.lapsed_total,
        }
        status["store"] = {"commits": node.store.db.commits, "wal_checkpoints": node.store.db.checkpoints}
    return status
