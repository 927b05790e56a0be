"""What the dashboard remembers of one server: the last 15 minutes sampled each second, the
end-to-end latency of jobs finished in the last minute, and the latest failures.

Costs, by design:
- the hot path (`Recorder.finished`, called by the scheduler for each job that finishes) is O(1):
  a counter, one histogram bucket, and for a failure one append to a bounded ring. No store read.
- the sampler (`Timeline.add`, once a second) stores one row in a ring of HISTORY_S rows; the
  latency percentiles come from a histogram of LATENCY_BUCKETS log-spaced buckets, so the cost
  does not grow with throughput. Nothing here looks at the queue.
- a reader asks for the rows after a cursor (`epoch:seq`), so a page polling every second gets
  one new row per poll, and all of them only when it has none (or this server restarted).

Percentiles are exact to one bucket: within LATENCY_RATIO (about 9 %) of the true value.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from server.clock import SYSTEM_CLOCK, Clock
from server.events import Events
from server.jobs import Job

if TYPE_CHECKING:
    from server.scheduler import Lease

HISTORY_S = 15 * 60  # rows kept: one per sample, so 15 minutes at one sample a second
SAMPLE_INTERVAL_S = 1.0
LATENCY_WINDOW_S = 60  # percentiles cover jobs finished in the last minute
THROUGHPUT_WINDOW = 5  # throughput is measured over the last 5 samples
FAILURES_KEPT = 20
MAX_FAILURE_CHARS = 300

LATENCY_MIN_S = 1e-3  # bucket 0 holds everything faster than this
LATENCY_RATIO = 2 ** (1 / 8)
LATENCY_BUCKETS = 300  # the last bucket (about 200 days and more) holds everything slower
_LOG_RATIO = math.log(LATENCY_RATIO)

#: the per-sample series, in the order of Sample's fields after the time
SERIES = ("queued", "running", "throughput", "p50", "p95", "p99", "workers", "busy")
PERCENTILES = (50.0, 95.0, 99.0)
CURSOR_RE = re.compile(r"([0-9a-f]{1,16}):([0-9]{1,12})")  # epoch:seq


def latency_bucket(seconds: float) -> int:
    if not seconds > LATENCY_MIN_S:  # also nan
        return 0
    return min(LATENCY_BUCKETS - 1, 1 + int(math.log(seconds / LATENCY_MIN_S) / _LOG_RATIO))


def bucket_value(bucket: int) -> float:
    """A bucket's representative latency: the geometric middle of its bounds."""
    if bucket == 0:
        return LATENCY_MIN_S / 2
    return float(LATENCY_MIN_S * LATENCY_RATIO ** (bucket - 0.5))


class LatencyWindow:
    """A histogram of the latencies recorded in the last `window_s` seconds (one sub-histogram
    per second of `clock`, dropped as it ages out, and their running sum)."""

    def __init__(self, clock: Callable[[], float], window_s: int = LATENCY_WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self._seconds: collections.deque[tuple[int, collections.Counter[int]]] = collections.deque()
        self._total: collections.Counter[int] = collections.Counter()
        self.count = 0

    def record(self, seconds: float) -> None:
        now = int(self.clock())
        if not self._seconds or self._seconds[-1][0] != now:
            self._expire(now)
            self._seconds.append((now, collections.Counter()))
        bucket = latency_bucket(seconds)
        self._seconds[-1][1][bucket] += 1
        self._total[bucket] += 1
        self.count += 1

    def _expire(self, now: int) -> None:
        while self._seconds and self._seconds[0][0] <= now - self.window_s:
            _, gone = self._seconds.popleft()
            for bucket, n in gone.items():
                left = self._total[bucket] - n
                if left:
                    self._total[bucket] = left
                else:
                    del self._total[bucket]
                self.count -= n

    def percentiles(self, qs: Sequence[float] = PERCENTILES) -> list[float | None]:
        """The q-th percentiles (0..100) of the window, None when nothing finished in it."""
        self._expire(int(self.clock()))
        if not self.count:
            return [None for _ in qs]
        found: list[float | None] = []
        ordered = sorted(self._total.items())
        for q in qs:
            rank = max(1.0, q / 100 * self.count)
            seen = 0
            for bucket, n in ordered:
                seen += n
                if seen >= rank:
                    found.append(bucket_value(bucket))
                    break
        return found


@dataclasses.dataclass(frozen=True)
class Failure:
    work_id: str
    error: str
    at: float  # wall clock
    worker: str | None
    attempts: int


class Recorder(Events):
    """What the scheduler reports as jobs finish: throughput and latency counters, the latest
    failures. O(1) per job."""

    def __init__(self, server: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.server = server
        self.clock = clock
        self.latency = LatencyWindow(clock.mono)
        self.failures: collections.deque[Failure] = collections.deque(maxlen=FAILURES_KEPT)
        self.completed_total = 0
        self.failed_total = 0

    def finished(self, job: Job, error: str | None, worker: str | None, lease: Lease | None = None) -> None:
        if error is None:
            self.completed_total += 1
            self.latency.record(max(0.0, self.clock.mono() - job.enqueued_mono))
            return
        self.failed_total += 1
        reason = "".join(c if c.isprintable() else " " for c in error[:MAX_FAILURE_CHARS])
        self.failures.append(Failure(str(job.work_id(self.server)), reason, self.clock.wall(), worker, job.attempts))


@dataclasses.dataclass(frozen=True)
class Sample:
    """One second of one server; latencies in seconds (None: nothing finished in the window)."""

    t: float  # wall clock
    queued: int
    running: int
    throughput: float  # jobs completed per second
    p50: float | None
    p95: float | None
    p99: float | None
    workers: int  # reporting
    busy: int  # of those, hashing

    def row(self) -> tuple[float | int | None, ...]:
        return (self.t, *(getattr(self, name) for name in SERIES))


def _rounded(value: float | int | None, digits: int) -> float | int | None:
    return round(value, digits) if isinstance(value, float) else value


class Timeline:
    """A ring of the last `capacity` samples, each numbered (seq) within this run (epoch)."""

    def __init__(self, capacity: int = int(HISTORY_S / SAMPLE_INTERVAL_S), epoch: str | None = None) -> None:
        self.capacity = capacity
        self.epoch = epoch or secrets.token_hex(4)
        self.seq = 0  # of the newest sample
        self._rows: collections.deque[Sample] = collections.deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, sample: Sample) -> None:
        self._rows.append(sample)
        self.seq += 1

    def latest(self) -> Sample | None:
        return self._rows[-1] if self._rows else None

    @property
    def cursor(self) -> str:
        return f"{self.epoch}:{self.seq}"

    def after(self, cursor: str | None) -> tuple[bool, list[Sample]]:
        """(whether this is the whole ring, the samples a reader at `cursor` lacks). The whole
        ring when the cursor is missing, of another epoch, or too old to continue from."""
        match = CURSOR_RE.fullmatch(cursor) if cursor else None
        if match and match[1] == self.epoch:
            seen = int(match[2])
            missing = self.seq - seen
            if 0 <= missing <= len(self._rows):
                return False, list(itertools.islice(reversed(self._rows), missing))[::-1]
        return True, list(self._rows)

    def columns(self, cursor: str | None) -> dict[str, Any]:
        """What a reader at `cursor` lacks, as columns: {"epoch", "seq", "full", "t", <SERIES>}."""
        full, samples = self.after(cursor)
        rows = [sample.row() for sample in samples]
        out: dict[str, Any] = {"epoch": self.epoch, "seq": self.seq, "full": full}
        for index, name in enumerate(("t", *SERIES)):
            digits = 1 if name == "t" else 2 if name == "throughput" else 4
            out[name] = [_rounded(row[index], digits) for row in rows]
        return out

    def merge(self, columns: dict[str, Any]) -> None:
        """Take in what `columns` (checked, from the peer's Timeline.columns) adds."""
        samples = [Sample(*row) for row in zip(*(columns[name] for name in ("t", *SERIES)), strict=True)]
        if columns["full"] or columns["epoch"] != self.epoch:
            self._rows.clear()
        self.epoch = columns["epoch"]
        self._rows.extend(samples)
        self.seq = columns["seq"]


class Sampler:
    """Builds one Sample a second from counters kept elsewhere; throughput is measured from the
    completed count over the last THROUGHPUT_WINDOW samples (monotonic time)."""

    def __init__(self, recorder: Recorder, clock: Clock = SYSTEM_CLOCK) -> None:
        self.recorder = recorder
        self.clock = clock
        self._marks: collections.deque[tuple[float, int]] = collections.deque(maxlen=THROUGHPUT_WINDOW + 1)

    def sample(self, *, queued: int, running: int, workers: Iterable[bool]) -> Sample:
        """`workers`: one busy flag per worker reporting."""
        now = self.clock.mono()
        self._marks.append((now, self.recorder.completed_total))
        (then, before), (_, after) = self._marks[0], self._marks[-1]
        throughput = (after - before) / (now - then) if now > then else 0.0
        p50, p95, p99 = self.recorder.latency.percentiles(PERCENTILES)
        flags = list(workers)
        return Sample(
            self.clock.wall(), queued, running, throughput, p50, p95, p99, len(flags), sum(1 for b in flags if b)
        )
