"""Worker quota lent between the two servers.

Each second the borrower tells the lender how much it wants in total and how much it is using;
the lender answers with the absolute amount granted. Absolute numbers, not deltas, so a restart
of either side re-converges within one sync. A lender grants only quota it does not need itself
and never takes back quota the borrower's running workers use, so the two fleets together never
exceed the two maxima.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Loans:
    max_workers: int
    borrowed: int = 0
    lent: int = 0
    lent_synced_at: float = 0.0

    @property
    def allowed(self) -> int:
        """How many workers this server may run now."""
        return self.max_workers - self.lent + self.borrowed

    def borrow_request(self, wanted: int, have: int) -> dict[str, int]:
        """What to ask the peer for: the total extra quota wanted and the part already in use."""
        own = self.max_workers - self.lent
        return {"want_borrow": max(0, wanted - own), "in_use": max(0, min(have - own, self.borrowed))}

    def grant(self, want: int, in_use: int, own_have: int, own_wanted: int, now: float | None = None) -> int:
        """Lender side: the total quota the peer may use from now on."""
        free = max(0, self.max_workers - max(own_have, own_wanted))
        granted = min(max(0, want), free)
        granted = max(granted, min(max(0, in_use), self.lent, max(0, self.max_workers - own_have)))
        self.lent = granted
        self.lent_synced_at = time.time() if now is None else now
        return granted

    def expire_lent(self, silent_s: float, now: float | None = None) -> None:
        """A borrower that stopped syncing gets nothing back until it asks again."""
        now = time.time() if now is None else now
        if self.lent and now - self.lent_synced_at > silent_s:
            self.lent = 0
