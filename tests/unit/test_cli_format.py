"""What `dynwork` prints: aligned tables, times, pulled results, server status, the progress bar."""

from __future__ import annotations

import io

from client.format import format_pulled, format_status, format_table, format_time
from client.progress import Progress


def test_format_table_aligns_columns():
    text = format_table(("NAME", "N"), [("a", 1), ("long-name", 12345)], right=(1,))
    assert text.splitlines() == ["NAME           N", "a              1", "long-name  12345"]


def test_format_status_shows_a_down_server():
    up = {"url": "http://a:1", "up": True, "status": {
        "server": "s1", "queued": 3, "running": 1, "completed": 10, "failed": 0, "oldest_queued_age_s": 1.25,
        "jobs_per_s": 12.5, "workers": {"live": 2, "starting": 1, "allowed": 5}, "workers_reporting": 4,
        "loans": {"borrowed": 1, "lent": 0},
        "peer": {"reachable": False}, "closing": False}}  # fmt: skip
    down = {"url": "http://b:2", "up": False, "error": "connection refused"}
    lines = format_status([up, down]).splitlines()
    assert lines[0].split() == ["SERVER", "URL", "STATE", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "OLDEST",
                                "JOBS/S", "WORKERS", "SERVING", "LOANS", "PEER"]  # fmt: skip
    assert lines[1].split() == ["s1", "http://a:1", "up", "3", "1", "10", "0", "1.2s", "12.5", "2+1/5", "4",
                                "+1/-0", "unreachable"]  # fmt: skip
    assert lines[2].split()[:3] == ["-", "http://b:2", "DOWN"]
    assert lines[3] == "http://b:2: connection refused"
    # A status from a newer or older server with fields missing still renders.
    assert "?" in format_status([{"url": "http://a:1", "up": True, "status": {}}])


def test_format_pulled_and_times():
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(None) == "-"
    text = format_pulled([{"work_id": "s1.1.abcdef", "iterations": 7, "completed_at": 1.5, "result": "ab"},
                          {"work_id": "s1.2.abcdef", "iterations": 1, "completed_at": 2, "result": None,
                           "error": "boom"}])  # fmt: skip
    assert "s1.1.abcdef           7  1970-01-01T00:00:01.500Z  ab" in text
    assert "FAILED: boom" in text


def test_progress_bar_draws_only_on_a_terminal():
    stream = io.StringIO()
    bar = Progress(4, stream, enabled=True, width=8)
    bar.update()
    bar.update(failed=True)
    assert bar.line().startswith("[####----] 2/4 done, 1 failed")
    bar.close()
    assert stream.getvalue().startswith("\r[##------] 1/4 done") and stream.getvalue().endswith("\n")
    quiet = io.StringIO()
    silent = Progress(1, quiet, enabled=False)
    silent.update()
    silent.close()
    assert quiet.getvalue() == ""
