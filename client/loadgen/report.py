"""What a bench run measured (`BenchReport`) and its latency percentiles, as text and as JSON."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from client.loadgen.config import BenchConfig
from common.stats import percentile

PERCENTILES = (50, 95, 99)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds (nan where there is nothing to measure)."""
    ordered = sorted(latencies_s)
    summary = {f"p{q}": percentile(ordered, q) * 1000 for q in PERCENTILES}
    summary["max"] = ordered[-1] * 1000 if ordered else math.nan
    summary["mean"] = sum(ordered) / len(ordered) * 1000 if ordered else math.nan
    return summary


@dataclasses.dataclass
class BenchReport:
    mode: str  # throughput | latency
    config: BenchConfig
    completed: int = 0  # jobs of the bench whose result came back (failed ones included)
    failed: int = 0  # ... of which the server reported failed
    wrong: int = 0  # ... of which the result differed from hashlib (--verify)
    foreign: int = 0  # results pulled that belong to no job of the bench
    elapsed_s: float = 0.0  # first enqueue to last result
    enqueue_s: float = 0.0  # first enqueue to last acknowledgement
    enqueue_retries: int = 0  # 503 answers (queue full) that were retried
    latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    enqueue_latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)  # PUT sent -> ack
    # latency mode, PUT sent -> an ack that carried the result (the job was hashed on arrival)
    answered_latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    error: str | None = None  # why the bench stopped early
    error_kind: str | None = None  # timeout, or a BenchError's kind: lost, unreachable, refused

    @property
    def complete(self) -> bool:
        return self.error is None and self.completed == self.config.jobs

    @property
    def ok(self) -> bool:
        return self.complete and self.failed == 0 and self.wrong == 0

    @property
    def jobs_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "mode": self.mode,
            "servers": list(cfg.servers),
            "jobs": cfg.jobs,
            "iterations": cfg.iterations,
            "body_bytes": cfg.body_bytes,
            "client": cfg.client,
            "concurrency": cfg.concurrency if self.mode == "throughput" else 1,
            "completed": self.completed,
            "failed": self.failed,
            "wrong": self.wrong if cfg.verify else None,
            "foreign": self.foreign,
            "elapsed_s": round(self.elapsed_s, 4),
            "enqueue_s": round(self.enqueue_s, 4),
            "enqueue_retries": self.enqueue_retries,
            "jobs_per_s": round(self.jobs_per_s, 1),
            "latency_ms": _json_summary(self.latencies_s),
            "enqueue_latency_ms": _json_summary(self.enqueue_latencies_s),
            "answered_latency_ms": _json_summary(self.answered_latencies_s),
            "answered_with_result": len(self.answered_latencies_s),
            "complete": self.complete,
            "ok": self.ok,
            "error": self.error,
            "error_kind": self.error_kind,
        }

    def format(self) -> str:
        cfg = self.config
        lat = latency_summary(self.latencies_s)
        enqueue_lat = _format_latency(latency_summary(self.enqueue_latencies_s))
        plural = "s" if cfg.iterations != 1 else ""
        if self.mode == "throughput":
            servers = f"{len(cfg.servers)} server{'s' if len(cfg.servers) != 1 else ''}"
            head = (
                f"bench: {cfg.jobs} jobs x {cfg.iterations} iteration{plural}, {cfg.body_bytes}-byte bodies, "
                f"concurrency {cfg.concurrency}, {servers}, {cfg.client} client"
            )
            enq_rate = cfg.jobs / self.enqueue_s if self.enqueue_s > 0 and self.error is None else 0.0
            lines = [
                head,
                f"  enqueued    {self.enqueue_s:8.3f} s  ({enq_rate:,.0f} jobs/s, {self.enqueue_retries} retried)",
                f"  end to end  {self.elapsed_s:8.3f} s  {self.jobs_per_s:,.0f} jobs/s "
                f"({self.completed}/{cfg.jobs} results)",
                "  latency     ack -> pulled: " + _format_latency(lat),
                "  enqueue     PUT -> ack:    " + enqueue_lat,
            ]
        else:
            head = (
                f"bench --latency: {len(self.latencies_s)} jobs one at a time (+{cfg.warmup} warm-up) x "
                f"{cfg.iterations} iteration{plural}, {cfg.body_bytes}-byte bodies"
            )
            lines = [
                head,
                "  latency     enqueue -> finished: " + _format_latency(lat),
                "  of which    PUT -> ack:          " + enqueue_lat,
            ]
            if self.answered_latencies_s:  # jobs hashed on arrival: the ack itself carried the result
                answered = _format_latency(latency_summary(self.answered_latencies_s))
                lines.append(f"  result      in the PUT's ack:    {answered} ({len(self.answered_latencies_s)} jobs)")
        tail = f"  failed {self.failed}"
        if cfg.verify:
            tail += f", wrong {self.wrong}"
        if self.mode == "throughput":
            tail += f", foreign results {self.foreign}" + (" (not ours: pulled and dropped)" if self.foreign else "")
        lines.append(tail)
        if self.error:
            lines.append(f"  stopped early: {self.error}")
        return "\n".join(lines)


def _json_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 3)) for k, v in latency_summary(latencies_s).items()}


def _format_latency(summary: dict[str, float]) -> str:
    return "  ".join(f"{key} {summary[key]:.2f} ms" for key in ("p50", "p95", "p99", "max"))
