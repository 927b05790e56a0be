"""What the soak's clients saw, and the verdict: every acknowledged job completed with the right
digest, and pullCompleted kept its guarantee (server/handouts.py).

The guarantee, seen from a client: every finished job is handed out by pullCompleted at least
once; a job is handed out again only when a response carrying it could not be confirmed, which
the checker counts (twice) but does not fail on. A response lost on the way to the client
counts as delivered on the server's side, so only jobs of pull calls that failed at the client
may be missing from the pulls: at most the sum of `top` over those calls. Those jobs, and any
other acknowledged job the pulls did not bring, are looked up with `GET /work/{id}`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from typing import Any

from native.reference import chain


def expected(body: bytes, iterations: int) -> str:
    return chain(body, iterations).hex()


@dataclasses.dataclass
class Job:
    digest: str
    iterations: int
    seen: int = 0  # times pullCompleted handed it out
    status: str | None = None  # what GET /work said at the end, for those never pulled


@dataclasses.dataclass
class Verdict:
    acknowledged: int
    completed: int
    lost: list[str]
    wrong: list[str]
    handed_out_twice: int
    pulled_not: int  # completed, but never handed out by a pull this client saw
    missing_bound: int  # how many jobs failed pull calls may have taken with them
    unacknowledged: int
    unacknowledged_completed: int
    pull_calls: int
    failed_pulls: int

    def summary(self) -> str:
        return (
            f"acknowledged={self.acknowledged} completed={self.completed} lost={len(self.lost)} "
            f"wrong={len(self.wrong)} twice={self.handed_out_twice} | not pulled (found by GET /work)="
            f"{self.pulled_not} (at most {self.missing_bound} allowed by {self.failed_pulls} failed of "
            f"{self.pull_calls} pulls) | unacknowledged enqueues={self.unacknowledged}, of which completed="
            f"{self.unacknowledged_completed}"
        )

    @property
    def ok(self) -> bool:
        return not self.lost and not self.wrong and self.pulled_not <= self.missing_bound


class Checker:
    """Bookkeeping only (no I/O); fed by the load generators, asked for the verdict at the end."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.unacknowledged: collections.Counter[tuple[str, int]] = collections.Counter()
        self.unacknowledged_seen: set[str] = set()
        self.wrong: dict[str, str] = {}
        self.pull_calls = 0
        self.failed_pulls = 0
        self.missing_bound = 0

    # -- enqueues --------------------------------------------------------------------------
    def acknowledged(self, work_id: str, digest: str, iterations: int) -> None:
        if work_id in self.jobs:
            self.wrong[work_id] = "the same work id acknowledged twice"
        self.jobs[work_id] = Job(digest, iterations)

    def unanswered(self, digest: str, iterations: int) -> None:
        """An enqueue whose answer never came (timeout, reset): it may or may not be stored."""
        self.unacknowledged[(digest, iterations)] += 1

    # -- pulls -----------------------------------------------------------------------------
    def pulled(self, items: Iterable[dict[str, Any]]) -> None:
        self.pull_calls += 1
        for item in items:
            self._item(item)

    def pull_failed(self, top: int) -> None:
        """A pull call whose answer this client did not get: its jobs may count as delivered."""
        self.pull_calls += 1
        self.failed_pulls += 1
        self.missing_bound += top

    def _item(self, item: dict[str, Any]) -> None:
        work_id, result, iterations = item.get("work_id"), item.get("result"), item.get("iterations")
        job = self.jobs.get(work_id) if isinstance(work_id, str) else None
        if job is None:
            if (result, iterations) in self.unacknowledged:
                self.unacknowledged_seen.add(str(work_id))
            else:
                self.wrong[str(work_id)] = f"handed out a job nobody enqueued: {item}"
            return
        job.seen += 1
        if result != job.digest or iterations != job.iterations:
            self.wrong[work_id] = f"handed out {result} ({iterations} iterations), expected {job.digest}"

    def watched(self, work_id: str, code: int | None, answer: dict[str, Any] | None) -> None:
        """A GET /work answer seen while the load runs (code None: no answer): an acknowledged job
        is never unknown, and a finished one shows its digest."""
        job = self.jobs[work_id]
        if code == 404:
            self.wrong[work_id] = "GET /work says there is no such job"
        if answer is None:
            return
        if answer.get("work_id") != work_id:
            self.wrong[work_id] = f"GET /work answered for another job: {answer}"
        elif answer.get("status") == "completed" and answer.get("result") != job.digest:
            self.wrong[work_id] = f"GET /work says {answer.get('result')}, expected {job.digest}"

    # -- the end ---------------------------------------------------------------------------
    def unseen(self) -> list[str]:
        """Acknowledged jobs no pull handed out yet."""
        return [work_id for work_id, job in self.jobs.items() if job.seen == 0]

    def looked_up(self, work_id: str, answer: dict[str, Any] | None) -> None:
        """What GET /work/{id} said of an acknowledged job no pull handed out (None: no answer)."""
        job = self.jobs[work_id]
        if answer is None:
            job.status = "no answer"
            return
        job.status = str(answer.get("status"))
        if job.status == "completed" and answer.get("result") != job.digest:
            self.wrong[work_id] = f"GET /work says {answer.get('result')}, expected {job.digest}"
        elif job.status == "failed":
            self.wrong[work_id] = f"failed: {answer.get('error')}"

    def verdict(self) -> Verdict:
        done = [w for w, j in self.jobs.items() if j.seen or j.status == "completed"]
        lost = [w for w, j in self.jobs.items() if not j.seen and j.status not in ("completed", "failed")]
        return Verdict(
            acknowledged=len(self.jobs),
            completed=len([w for w in done if w not in self.wrong]),
            lost=lost,
            wrong=[f"{w}: {why}" for w, why in self.wrong.items()],
            handed_out_twice=sum(1 for j in self.jobs.values() if j.seen > 1),
            pulled_not=sum(1 for j in self.jobs.values() if not j.seen and j.status == "completed"),
            missing_bound=self.missing_bound,
            unacknowledged=sum(self.unacknowledged.values()),
            unacknowledged_completed=len(self.unacknowledged_seen),
            pull_calls=self.pull_calls,
            failed_pulls=self.failed_pulls,
        )
