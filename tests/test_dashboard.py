"""The live dashboard in a real browser: Debian's Chromium (/usr/bin/chromium), headless, driven by
Playwright's Python package (no browser is downloaded). Two servers, a local worker, jobs that
complete and one that fails; every assertion reads the page's DOM, polled with deadlines.

Screenshots (laptop 1280x800 and phone 390x844) go to the test's tmp_path; their paths are printed.
Outside CI the test is skipped when Chromium is not installed; in CI (`CI` set) that fails, since
.ci/run installs it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import http, wait_for, worker_headers

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
DEADLINE_MS = 25_000  # per condition; a loaded 2-core machine meets each in a few seconds


def _need(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (.ci/run installs Chromium; `make venv` installs Playwright)")
    pytest.skip(what)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        _need(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package is not installed")
    profile = tmp_path / "chromium-profile"  # a fresh profile for every run
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=LAPTOP,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


def until(page: Any, script: str, arg: Any = None, what: str = "condition") -> Any:
    """Poll `script` (a JS function of `arg`) in the page until it returns something truthy."""
    try:
        return page.wait_for_function(script, arg=arg, timeout=DEADLINE_MS, polling=100).json_value()
    except Exception as exc:  # playwright's TimeoutError: say what was awaited, and what the page shows
        text = page.inner_text("body")[:3000]
        raise AssertionError(f"page never showed {what}; it shows:\n{text}") from exc


def stat(page: Any, server: str, name: str) -> int:
    text = page.text_content(f'article[data-server="{server}"] [data-stat="{name}"]') or ""
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


def chart(page: Any, server: str, name: str) -> dict[str, Any]:
    figure = f'article[data-server="{server}"] figure[data-chart="{name}"]'
    value: dict[str, Any] = page.eval_on_selector(
        figure,
        """f => ({points: Number(f.querySelector("svg").dataset.points), peak: Number(f.dataset.peak),
                  paths: [...f.querySelectorAll("path")].map(p => p.getAttribute("d") || "")})""",
    )
    return value


STAT_AT_LEAST = """([server, name, n]) => {
  const dd = document.querySelector(`article[data-server="${server}"] [data-stat="${name}"]`);
  return dd && Number(dd.textContent.replace(/,/g, "")) >= n;
}"""
STAT_IS = STAT_AT_LEAST.replace(">= n", "=== n")
PEAK_AT_LEAST = """([server, name, n]) => {
  const f = document.querySelector(`article[data-server="${server}"] figure[data-chart="${name}"]`);
  return f && Number(f.dataset.peak) >= n;
}"""
POINTS_ABOVE = """([server, n]) => [...document.querySelectorAll(`article[data-server="${server}"] svg`)]
  .every(svg => Number(svg.dataset.points) > n)"""


def test_dashboard_shows_both_servers_live_in_a_real_browser(make_cluster, page, tmp_path):
    c = make_cluster(launcher="none", lease_s=2, max_attempts=1)
    a, b = c.a.name, c.b.name

    # A job that fails with a reason: leased by a "worker" that never reports, so its only lease
    # expires (max_attempts=1). Leased before any real worker runs, so none can take it.
    doomed = c.a.enqueue(b"doomed", 1)
    ghost = http("POST", f"{c.a.url}/internal/lease?max=1&wait=5", headers=worker_headers(c.token, "ghost"))
    assert ghost.status == 200 and doomed.encode() in ghost.body

    page.goto(f"{c.a.url}/dashboard")
    until(page, "() => Number(document.body.dataset.updates) >= 2", what="two updates")
    servers = page.eval_on_selector_all("article[data-server]", "els => els.map(e => e.dataset.server)")
    assert servers == [a, b]  # this server first, its peer beside it
    until(page, f"() => document.querySelector('article[data-server=\"{b}\"] .reach').textContent === 'ok'")
    before = {s: chart(page, s, "queue") for s in (a, b)}
    assert stat(page, a, "completed") == 0 and stat(page, b, "completed") == 0

    ids = [c.a.enqueue(b"job %d" % i, 1000) for i in range(30)] + [c.b.enqueue(b"peer %d" % i, 1000) for i in range(10)]
    until(page, STAT_AT_LEAST, [a, "queued", 30], "A's queue depth of 30")
    until(page, STAT_AT_LEAST, [b, "queued", 10], "B's queue depth of 10")

    worker = c.worker(own=0, threads=1, idle_exit_s=60, lease_wait_s=0.5)  # soon asks B too
    until(page, STAT_IS, [a, "completed", 30], "A's 30 completed jobs")
    until(page, STAT_IS, [b, "completed", 10], "B's 10 completed jobs")
    until(page, STAT_IS, [a, "queued", 0], "A's queue drained")
    until(page, PEAK_AT_LEAST, [a, "throughput", 0.1], "A's throughput chart above zero")
    until(page, PEAK_AT_LEAST, [a, "queue", 30], "A's queue chart reaching 30")
    until(page, PEAK_AT_LEAST, [b, "queue", 10], "B's queue chart reaching 10")
    until(page, PEAK_AT_LEAST, [a, "latency", 0.0001], "A's latency chart")
    until(page, PEAK_AT_LEAST, [a, "workers", 1], "A's workers chart")
    for server in (a, b):
        after = chart(page, server, "queue")
        assert after["points"] > before[server]["points"] and after["paths"] != before[server]["paths"]

    # The worker table: the real worker on both servers with its jobs, the ghost too.
    row = f'#workers tr[data-worker="{worker.worker_id}"][data-server="{a}"]'
    until(page, f"() => document.querySelector('{row} .jobs-done')?.textContent === '30'", what="the worker's 30 jobs")
    assert page.locator(f'#workers tr[data-worker="ghost"][data-server="{a}"]').count() == 1

    # The failed job, with its reason.
    failure = f'#failures tr[data-work-id="{doomed}"]'
    until(page, f"() => document.querySelector('{failure}')", what="the failed job")
    reason = page.text_content(f"{failure} td.reason") or ""
    assert "lease expired" in reason and "1 attempts" in reason, reason
    assert stat(page, a, "failed") == 1

    for server in (a, b):  # the charts caught up with the numbers (a sample a second): a settled screenshot
        drained = f"article[data-server='{server}'] figure[data-chart='queue']"
        until(page, f'() => document.querySelector("{drained}").dataset.last === "[0,0]"', what="a drained queue chart")
    laptop = tmp_path / "dashboard-laptop.png"
    page.screenshot(path=str(laptop), full_page=True)
    page.set_viewport_size(PHONE)
    until(page, "() => document.documentElement.scrollWidth <= window.innerWidth", what="no sideways scroll on a phone")
    phone = tmp_path / "dashboard-phone.png"
    page.screenshot(path=str(phone), full_page=True)
    print(f"\nscreenshots: {laptop} {phone}")
    assert laptop.stat().st_size > 10_000 and phone.stat().st_size > 10_000

    # The peer stops: its panel says unreachable, this server's keeps updating.
    c.b.stop()
    until(page, f"() => document.querySelector('article[data-server=\"{b}\"] .reach').textContent === 'unreachable'")
    updates = int(page.get_attribute("body", "data-updates") or 0)
    until(page, f"() => Number(document.body.dataset.updates) >= {updates + 2}", what="updates with the peer down")
    assert stat(page, a, "completed") == 30
    assert wait_for(lambda: all(c.a.work(i).json()["status"] == "completed" for i in ids[:30]), 5, "A's results")
