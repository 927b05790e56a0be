"""The throughput bench's bookkeeping: pulled results matched to acknowledged jobs in either order."""

from __future__ import annotations

import asyncio

from client.loadgen import runners
from client.loadgen.config import BenchConfig
from client.loadgen.report import BenchReport
from client.loadgen.tracker import ResultTracker, reference_result


def tracker(jobs: int, verify: bool = False) -> tuple[BenchReport, ResultTracker]:
    report = BenchReport("throughput", BenchConfig(servers=("http://x:1",), jobs=jobs, verify=verify))
    return report, ResultTracker(report, verify)


def test_tracker_matches_results_whichever_comes_first():
    report, t = tracker(3)
    t.ack("a", 1.0, None)
    t.pulled(
        [{"work_id": "a", "result": "00"}, {"work_id": "b", "result": "00"}, {"work_id": "x", "result": "00"}], 1.5
    )  # b's ack is still in flight; x is someone else's
    t.ack("b", 1.6, None)  # pulled before the ack was processed: latency 0, not negative
    t.ack("c", 2.0, None)
    assert not t.all_seen.is_set()
    t.pulled([{"work_id": "c", "result": None, "error": "boom"}], 2.25)
    assert t.all_seen.is_set()
    assert (report.completed, report.failed) == (3, 1)
    assert sorted(report.latencies_s) == [0.0, 0.25, 0.5]
    assert list(t.early) == ["x"]  # counted as foreign by run_throughput
    assert t.last_seen == 2.25


def test_tracker_verifies_results_against_hashlib():
    report, t = tracker(2, verify=True)
    t.ack("good", 0.0, b"body")
    t.ack("bad", 0.0, b"body")
    t.pulled([{"work_id": "good", "result": reference_result(b"body", 1)}, {"work_id": "bad", "result": "00" * 64}], 1)
    assert (report.completed, report.wrong, report.ok) == (2, 1, False)


def test_tracker_counts_items_without_a_work_id_as_foreign():
    report, t = tracker(1)
    t.pulled(["junk", {"result": "00"}, {"work_id": ["not", "a", "string"]}], 1.0)
    t.ack("a", 1.1, None)
    assert report.completed == 0 and list(t.early) == [None]


class ScriptedPulls:
    """An HttpClient stand-in whose pullCompleted answers come from a list, in order."""

    def __init__(self, answers: list[list[dict[str, str]]]) -> None:
        self.answers = answers

    async def call(self, method: str, target: str, **_: object) -> object:
        items = self.answers.pop(0)

        class Answer:
            @staticmethod
            def json() -> list[dict[str, str]]:
                return items

        return Answer()


def test_the_puller_backs_off_while_nothing_is_pullable_and_resets_on_a_result(monkeypatch):
    """Each empty pull costs both servers a peer round trip: past PULL_IDLE_GRACE empty pulls a
    polling client slows down, up to PULL_IDLE_MAX_S, and is back at its interval once results come."""
    _, t = tracker(2)
    t.ack("a", 0.0, None)
    t.ack("b", 0.0, None)
    item = {"result": "00"}
    empty: list[dict[str, str]] = []
    answers = [empty] * 10 + [[{**item, "work_id": "a"}], empty, [{**item, "work_id": "b"}]]
    pauses: list[float] = []

    async def no_sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(runners.asyncio, "sleep", no_sleep)
    asyncio.run(runners.pull_loop(ScriptedPulls(answers), t, 0.02))
    assert pauses == [0.02] * 5 + [0.04, 0.08, 0.16, 0.25, 0.25] + [0.02, 0.02, 0.02]
    assert t.all_seen.is_set()
