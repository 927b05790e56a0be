"""Small bodies kept in memory from enqueue to their first lease, within a byte budget.

A small body lives in its job's row, and a lease read it back with a SELECT on the event loop.
Most jobs are leased moments after they are stored, so the bytes just written are kept here and
handed to the first lease instead. Past the budget (a backlog) bodies are read from the row, as
before: memory stays bounded whatever the queue holds. Only the event loop's thread uses it.
"""

from __future__ import annotations

from collections.abc import Iterable

FRESH_BODY_BUDGET = 16 << 20


class FreshBodies:
    def __init__(self, budget: int = FRESH_BODY_BUDGET) -> None:
        self.budget = budget
        self.held_bytes = 0
        self._bodies: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def keep(self, seq: int, body: bytes) -> None:
        if self.held_bytes + len(body) <= self.budget:
            self._bodies[seq] = body
            self.held_bytes += len(body)

    def take(self, seq: int) -> bytes | None:
        """The body once (a later lease of the same job reads the row)."""
        body = self._bodies.pop(seq, None)
        if body is not None:
            self.held_bytes -= len(body)
        return body

    def forget(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.take(seq)
