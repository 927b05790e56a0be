"""Worker quota lent between the two servers.

Each second the borrower tells the lender how much it wants in total and how much its running
workers use; the lender answers with the absolute amount granted. Absolute numbers, not deltas,
so a restart of either side re-converges within one sync. A lender grants only quota it does
not need itself and never takes back quota the borrower's running workers use.

The invariant: the two fleets together never exceed the two maxima. It holds across failures
because the lender holds what it lent until the borrower says otherwise: a lender restart
reloads it (it is saved, durably, before any grant is answered), and a silent borrower (down or
partitioned) keeps its loan on the lender's books, while the borrower, unable to sync, shrinks
its own view of the loan to what its running workers use. A peer gone for good therefore keeps
the quota it was using until it syncs again (a restart of it with no workers gives it back).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Loans:
    max_workers: int
    borrowed: int = 0  # quota the peer granted this server at the last sync
    lent: int = 0  # quota this server granted the peer, held until the peer syncs again

    @property
    def allowed(self) -> int:
        """How many workers this server may run now."""
        return self.max_workers - self.lent + self.borrowed

    def borrow_request(self, wanted: int, have: int) -> dict[str, int]:
        """What to ask the peer for: the total extra quota wanted and the part already in use."""
        own = self.max_workers - self.lent
        # What runs beyond our own quota, borrowed or not (after a restart `borrowed` is 0 while
        # adopted workers run): the lender keeps at most what it lent us of it.
        return {"want_borrow": max(0, wanted - own), "in_use": max(0, have - own)}

    def grant(self, want: int, in_use: int, own_have: int, own_wanted: int) -> int:
        """Lender side: the total quota the peer may use from now on."""
        free = max(0, self.max_workers - max(own_have, own_wanted))
        granted = min(max(0, want), free)
        # What the peer's running workers use stays theirs, as far as it was lent and is not ours.
        keep = min(max(0, in_use), self.lent, max(0, self.max_workers - own_have))
        self.lent = max(granted, keep)
        return self.lent

    def peer_unreachable(self, have: int) -> None:
        """Borrower side, when a sync fails: keep only what running workers use."""
        in_use = have - (self.max_workers - self.lent)
        self.borrowed = max(0, min(self.borrowed, in_use))
