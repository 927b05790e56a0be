"""What is wrong with this server right now, for /healthz and /status: a background loop that
keeps failing (disk full, the cloud refusing calls) names its trouble here until it recovers.
Each problem has a public summary (the kind of error) and a detail (its full text, which may
carry cloud account data) that only the operator's detailed status shows."""

from __future__ import annotations

from server.clock import SYSTEM_CLOCK, Clock


class Health:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._problems: dict[str, tuple[str, str, float]] = {}  # what -> (summary, detail, since)

    def failing(self, what: str, summary: str, detail: str = "") -> None:
        since = self._problems[what][2] if what in self._problems else self.clock.mono()
        self._problems[what] = (summary[:200], detail[:1000], since)

    def recovered(self, what: str) -> None:
        self._problems.pop(what, None)

    @property
    def degraded(self) -> bool:
        return bool(self._problems)

    def problems(self, *, detail: bool = False) -> dict[str, dict[str, object]]:
        now = self.clock.mono()
        return {
            what: {"error": summary, **({"detail": text} if detail else {}), "for_s": round(now - since, 1)}
            for what, (summary, text, since) in self._problems.items()
        }
