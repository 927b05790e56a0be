"""What a job is, in memory and on disk: its states, the stored record and the live index entry."""

from __future__ import annotations

import dataclasses
import enum

from common.cost import job_cost
from common.ids import WorkId


class State(enum.IntEnum):
    """A job's state; the values are what the store keeps (finished states compare >= COMPLETED)."""

    QUEUED = 0
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def finished(self) -> bool:
        return self >= State.COMPLETED


@dataclasses.dataclass
class Job:
    """An unfinished job as the scheduler tracks it (bodies stay on disk)."""

    seq: int
    nonce: str
    iterations: int
    size: int
    enqueued_at: float  # wall clock, shown to people
    attempts: int = 0
    waiting_since: float = 0.0  # monotonic: when it was last queued (its wait is a duration)
    enqueued_mono: float = 0.0  # monotonic: when it was enqueued (its end-to-end time is a duration)
    where: tuple[int, int] | None = None  # (segment, offset) of its body; None: in the row (older state dirs)

    @property
    def cost(self) -> int:
        return job_cost(self.iterations, self.size)

    def work_id(self, server: str) -> WorkId:
        return WorkId(server, self.seq, self.nonce)


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job as stored, without its body."""

    seq: int
    nonce: str
    iterations: int
    size: int
    state: State
    attempts: int
    worker: str | None
    enqueued_at: float
    completed_at: float | None
    result: bytes | None
    error: str | None
    lease_id: str | None = None  # the current lease while running
    where: tuple[int, int] | None = None  # (segment, offset) of its body while unfinished

    def work_id(self, server: str) -> WorkId:
        return WorkId(server, self.seq, self.nonce)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a job ended: a 64-byte result, or an error (a failed job)."""

    seq: int
    result: bytes | None
    error: str | None = None
    lease_id: str | None = None  # the lease it came under (None: decided by the server)
