"""The load generator's settings (`BenchConfig`), checked on construction."""

from __future__ import annotations

import dataclasses

PULL_INTERVAL_S = 0.02  # a puller whose last pull was not full waits this long before the next
CLIENTS = ("raw", "aiohttp")  # HTTP clients the bench can use


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    servers: tuple[str, ...]
    jobs: int = 10_000
    iterations: int = 1
    body_bytes: int = 64
    concurrency: int = 64
    timeout_s: float = 300.0
    verify: bool = False  # check every result against hashlib (keeps the bodies in memory)
    warmup: int = 3  # latency mode: jobs run first and left out of the figures
    http_timeout_s: float = 10.0  # connecting, and waiting for an answer (plus a long-poll's length)
    client: str = "raw"  # raw (lean HTTP/1.1 on asyncio) or aiohttp
    # Every pull that is not full costs both servers a query (the peer fills the rest), so pullers
    # pause between pulls that came back short; the pause adds at most this to measured latencies.
    pull_interval_s: float = PULL_INTERVAL_S

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("need at least one server")
        for name in ("jobs", "iterations", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.body_bytes < 0 or self.warmup < 0 or self.pull_interval_s < 0:
            raise ValueError("body_bytes, warmup and pull_interval_s must be >= 0")
        if self.timeout_s <= 0 or self.http_timeout_s <= 0:
            raise ValueError("timeout_s and http_timeout_s must be > 0")
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}")
