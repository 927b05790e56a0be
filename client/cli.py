"""`dynwork`: the command-line client of a dynwork cluster (see `dynwork --help`)."""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import sys
import textwrap
import time
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import aiohttp
from yarl import URL

from client import loadgen
from client.loadgen import describe_exception

DEFAULT_SERVERS = ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
SERVERS_ENV = "DYNWORK_SERVERS"
WAIT_CHUNK_S = 10.0  # one long-poll of `wait`; the servers allow up to long_poll_max_s (20 s by default)
WAIT_CONCURRENCY = 32
UNAVAILABLE_GRACE_S = 30.0  # `wait` rides out servers that cannot answer for this long
FINISHED = ("completed", "failed")

EXIT_OK = 0
EXIT_FAILED = 1  # a job failed or timed out, a server is down (status), the bench was incomplete
EXIT_USAGE = 2  # bad arguments, unreadable file, or a server refused the request (4xx)
EXIT_UNAVAILABLE = 3  # no server could answer
EXIT_NOT_FOUND = 4  # unknown work id

EPILOG = f"""\
servers: --server URL (repeatable), else ${SERVERS_ENV} (comma-separated), else {' and '.join(DEFAULT_SERVERS)}.
exit codes: {EXIT_OK} ok; {EXIT_FAILED} a job failed or timed out, a server is down (status) or the bench fell
short; {EXIT_USAGE} bad usage or the server refused the request; {EXIT_UNAVAILABLE} no server could answer;
{EXIT_NOT_FOUND} unknown work id."""


class CliError(Exception):
    """A failure reported as one line on stderr, with its exit code; never a traceback."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    exit_code = EXIT_USAGE


class Refused(CliError):
    """A server answered 4xx: the request itself is wrong."""

    exit_code = EXIT_USAGE


class NotFound(CliError):
    exit_code = EXIT_NOT_FOUND


class Unavailable(CliError):
    """No server gave a usable answer (down, timing out, 5xx)."""

    exit_code = EXIT_UNAVAILABLE


# -- servers and HTTP ----------------------------------------------------------------------------------

def normalize_url(text: str) -> str:
    """`http://host:port` from a server URL; the scheme may be left out."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        url = URL(raw)
        ok = (url.scheme in ("http", "https") and bool(url.host) and url.path in ("", "/")
              and not url.query_string and not url.fragment)
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"bad server URL {text!r} (want http://HOST:PORT)")
    return str(url.origin())


def resolve_servers(flags: Sequence[str] | None, environ) -> tuple[str, ...]:
    """--server flags, else $DYNWORK_SERVERS, else the two local defaults; duplicates dropped."""
    if flags:
        raw = list(flags)
    elif environ.get(SERVERS_ENV, "").strip():
        raw = [s for s in environ[SERVERS_ENV].split(",") if s.strip()]
    else:
        raw = list(DEFAULT_SERVERS)
    return tuple(dict.fromkeys(normalize_url(s) for s in raw))


def error_message(body: Any, raw: bytes) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return raw[:200].decode("utf-8", "replace").strip() or "(empty body)"


class Cluster:
    """One ClientSession for all servers. A call goes to one server and moves on to the next when
    that one cannot answer (connection error, timeout, 5xx); a 4xx is the answer."""

    def __init__(self, servers: Sequence[str], timeout_s: float) -> None:
        self.servers = tuple(servers)
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Cluster:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._session.close()

    async def request_one(self, server: str, method: str, path: str, *, data: bytes | None = None,
                          timeout_s: float | None = None) -> tuple[int, Any, bytes, dict]:
        """(status, decoded JSON or None, raw body, headers) from one server; transport errors raise."""
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        async with self._session.request(method, server + path, data=data, timeout=timeout) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return resp.status, body, raw, dict(resp.headers)

    async def call(self, method: str, path: str, *, first: int = 0, data: bytes | None = None,
                   timeout_s: float | None = None, idempotent: bool = True) -> tuple[str, Any]:
        """(server, JSON body) of the first server, from `first` on, that answers 2xx.
        4xx raises Refused (NotFound for 404); nobody answering raises Unavailable. A call that
        is not idempotent moves on only when the request cannot have been applied (no connection,
        or 503); after a timeout or a lost answer it stops instead of repeating it elsewhere."""
        failures = []
        for k in range(len(self.servers)):
            server = self.servers[(first + k) % len(self.servers)]
            try:
                status, body, raw, _ = await self.request_one(server, method, path, data=data, timeout_s=timeout_s)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures.append(f"{server}: {describe_exception(exc)}")
                if idempotent or isinstance(exc, aiohttp.ClientConnectorError):
                    continue
                raise Unavailable(f"{method} {path.split('?')[0]} to {server} got no answer "
                                  f"({describe_exception(exc)}); it may or may not have been applied") from None
            if status < 300:
                if body is None:
                    failures.append(f"{server}: HTTP {status} without a JSON body")
                    if idempotent:
                        continue
                    raise Unavailable(f"{method} {path.split('?')[0]} to {server}: HTTP {status} without a "
                                      "JSON body; it may or may not have been applied")
                return server, body
            message = error_message(body, raw)
            if status == 404:
                raise NotFound(message)
            if status < 500:
                raise Refused(f"{server} refused {method} {path.split('?')[0]}: HTTP {status}: {message}")
            failures.append(f"{server}: HTTP {status}: {message}")
            if not idempotent and status != 503:
                raise Unavailable(f"{method} {path.split('?')[0]} to {server} failed with HTTP {status}: {message}; "
                                  "it may or may not have been applied")
        raise Unavailable("no server could answer: " + "; ".join(failures))


# -- commands ------------------------------------------------------------------------------------------

def read_input(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


async def cmd_enqueue(args, cluster: Cluster, out) -> int:
    if args.files.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    for path in args.files:  # fail before anything is enqueued
        if path != "-" and (os.path.isdir(path) or not os.access(path, os.R_OK)):
            reason = ("a directory" if os.path.isdir(path) else
                      "no such file" if not os.path.exists(path) else "not readable")
            raise UsageError(f"cannot read {path}: {reason}")
    first = random.randrange(len(cluster.servers))
    for i, path in enumerate(args.files):
        body = read_input(path)
        _, answer = await cluster.call("PUT", f"/enqueue?iterations={args.iterations}", data=body,
                                       first=(first + i) % len(cluster.servers), idempotent=False)
        print(answer["work_id"], file=out, flush=True)
    return EXIT_OK


def format_time(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "-"
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; columns listed in `right` are right-aligned."""
    table = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    right = set(right)
    lines = []
    for row in table:
        cells = [cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_pulled(items: list[dict]) -> str:
    rows = [(i.get("work_id"), i.get("iterations"), format_time(i.get("completed_at")),
             i.get("result") if i.get("result") is not None else f"FAILED: {i.get('error')}") for i in items]
    return format_table(("WORK ID", "ITERATIONS", "COMPLETED", "RESULT"), rows, right=(1,))


async def cmd_pull(args, cluster: Cluster, out) -> int:
    _, items = await cluster.call("POST", f"/pullCompleted?top={args.top}", idempotent=False)
    if args.pretty:
        print(format_pulled(items) if items else "(no completed results waiting)", file=out)
    else:
        for item in items:
            print(json.dumps(item, separators=(",", ":")), file=out)
    return EXIT_OK


def work_path(work_id: str, wait_s: float = 0.0) -> str:
    path = "/work/" + quote(work_id, safe="")
    return f"{path}?wait={wait_s:g}" if wait_s > 0 else path


async def cmd_get(args, cluster: Cluster, out) -> int:
    _, item = await cluster.call("GET", work_path(args.work_id))
    print(json.dumps(item, indent=2), file=out)
    return EXIT_OK


class Progress:
    """A one-line progress bar on a terminal; silent elsewhere."""

    def __init__(self, total: int, stream, enabled: bool, width: int = 30) -> None:
        self.total, self.stream, self.enabled, self.width = total, stream, enabled, width
        self.done = self.failed = 0
        self.start = time.monotonic()

    def line(self) -> str:
        filled = self.width * self.done // self.total if self.total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[{bar}] {self.done}/{self.total} done{failed}  {time.monotonic() - self.start:.1f}s"

    def update(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self.draw()

    def draw(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar so that a line printed next (on either stream) starts clean."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line on the stream above the bar."""
        self.clear()
        print(text, file=self.stream)
        self.draw()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


async def wait_one(cluster: Cluster, work_id: str, deadline: float | None,
                   grace_s: float = UNAVAILABLE_GRACE_S) -> dict:
    """The job's final status, or its latest one when the deadline passes first. While no server
    can answer (a restart, say) it keeps asking for up to grace_s before giving up."""
    down_since: float | None = None
    while True:
        wait_s = WAIT_CHUNK_S
        if deadline is not None:
            wait_s = min(wait_s, max(deadline - time.monotonic(), 0.0))
        try:
            _, item = await cluster.call("GET", work_path(work_id, wait_s), timeout_s=wait_s + cluster.timeout_s)
        except Unavailable:
            now = time.monotonic()
            down_since = now if down_since is None else down_since
            if now - down_since >= grace_s or (deadline is not None and now >= deadline):
                raise
            await asyncio.sleep(min(0.1 + (now - down_since) / 10, 1.0))  # 0.1 s, slowing to 1 s
            continue
        down_since = None
        if item.get("status") in FINISHED or (deadline is not None and time.monotonic() >= deadline):
            return item


async def cmd_wait(args, cluster: Cluster, out) -> int:
    ids = list(dict.fromkeys(args.work_ids))
    deadline = time.monotonic() + args.timeout if args.timeout else None
    progress = Progress(len(ids), sys.stderr, enabled=sys.stderr.isatty() and not args.quiet)
    gate = asyncio.Semaphore(WAIT_CONCURRENCY)
    results: list[dict | CliError | None] = [None] * len(ids)
    finished = [asyncio.Event() for _ in ids]

    async def one(index: int) -> None:
        try:
            async with gate:
                results[index] = await wait_one(cluster, ids[index], deadline)
        except CliError as exc:
            results[index] = exc
        finally:
            finished[index].set()  # also when something unexpected broke it: the printer must not hang
        item = results[index]
        progress.update(failed=not isinstance(item, dict) or item.get("status") != "completed")

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.5)
            progress.draw()

    tasks = [asyncio.create_task(one(i)) for i in range(len(ids))]
    tick = asyncio.create_task(ticker())
    codes = {EXIT_OK}
    try:
        progress.draw()
        for index, work_id in enumerate(ids):  # results in the order given, each as soon as it can be
            await finished[index].wait()
            item = results[index]
            if item is None:  # its task failed unexpectedly: let that error show
                await tasks[index]
            if isinstance(item, CliError):
                codes.add(item.exit_code)
                progress.message(f"dynwork: {work_id}: {item}")
                continue
            if item.get("status") == "failed":
                codes.add(EXIT_FAILED)
            elif item.get("status") not in FINISHED:
                codes.add(EXIT_FAILED)
                progress.message(f"dynwork: {work_id}: still {item.get('status')} after {args.timeout:g} s")
            progress.clear()
            print(json.dumps(item, separators=(",", ":")), file=out, flush=True)
            progress.draw()
    finally:
        tick.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(tick, *tasks, return_exceptions=True)
        progress.close()
    return max(codes)


async def fetch_status(cluster: Cluster, server: str) -> dict:
    try:
        status, body, raw, _ = await cluster.request_one(server, "GET", "/status")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return {"url": server, "up": False, "error": describe_exception(exc)}
    if status != 200 or not isinstance(body, dict):
        return {"url": server, "up": False, "error": f"HTTP {status}: {error_message(body, raw)}"}
    return {"url": server, "up": True, "status": body}


def _get(d: Any, *keys: str, default: Any = "?") -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return default if d is None else d


def format_status(entries: list[dict]) -> str:
    header = ("SERVER", "URL", "STATE", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "OLDEST", "JOBS/S",
              "WORKERS", "SERVING", "LOANS", "PEER")
    rows, notes = [], []
    for entry in entries:
        if not entry["up"]:
            rows.append(["-", entry["url"], "DOWN"] + ["-"] * (len(header) - 3))
            notes.append(f"{entry['url']}: {entry['error']}")
            continue
        s = entry["status"]
        state = "closing" if s.get("closing") else "up"
        oldest = _get(s, "oldest_queued_age_s")
        rate = _get(s, "jobs_per_s")
        workers = f"{_get(s, 'workers', 'live')}+{_get(s, 'workers', 'starting')}/{_get(s, 'workers', 'allowed')}"
        loans = f"+{_get(s, 'loans', 'borrowed')}/-{_get(s, 'loans', 'lent')}"
        peer = s.get("peer")
        peer_text = "none" if peer is None else ("ok" if _get(peer, "reachable", default=False) else "unreachable")
        rows.append([_get(s, "server"), entry["url"], state, _get(s, "queued"), _get(s, "running"),
                     _get(s, "completed"), _get(s, "failed"),
                     f"{oldest:.1f}s" if isinstance(oldest, (int, float)) else oldest,
                     f"{rate:.1f}" if isinstance(rate, (int, float)) else rate, workers,
                     _get(s, "workers_reporting"), loans, peer_text])
    text = format_table(header, rows, right=(3, 4, 5, 6, 7, 8, 10))
    return text + "".join(f"\n{note}" for note in notes)


async def cmd_status(args, cluster: Cluster, out) -> int:
    entries = list(await asyncio.gather(*(fetch_status(cluster, s) for s in cluster.servers)))
    if args.json:
        print(json.dumps(entries, indent=2), file=out)
    else:
        print(format_status(entries), file=out)
        if any(e["up"] for e in entries):
            print("WORKERS: launched by the server, live+starting/allowed; SERVING: workers reporting to it; "
                  "LOANS: +borrowed/-lent", file=out)
    down = sum(not e["up"] for e in entries)
    if down == len(entries):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED if down else EXIT_OK


async def cmd_bench(args, cluster: Cluster, out) -> int:
    try:
        cfg = loadgen.BenchConfig(servers=cluster.servers, jobs=args.jobs, iterations=args.iterations,
                                  body_bytes=args.body_bytes, concurrency=args.concurrency,
                                  timeout_s=args.timeout, verify=args.verify, warmup=args.warmup,
                                  http_timeout_s=cluster.timeout_s, client=args.client,
                                  pull_interval_s=args.pull_interval)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = await loadgen.run(cfg, latency=args.latency)
    if args.json:
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        print(report.format(), file=out)
    if report.error_kind == "unreachable":
        return EXIT_UNAVAILABLE
    if report.error_kind == "refused":
        return EXIT_USAGE
    return EXIT_OK if report.ok else EXIT_FAILED


# -- argument parsing ----------------------------------------------------------------------------------

def positive_int(low: int = 1, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


def _float_above(low: float, *, inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= low if inclusive else value > low) or math.isinf(value):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low:g}, got {text}")
        return value
    return parse


positive_float = _float_above(0, inclusive=False)
non_negative_float = _float_above(0, inclusive=True)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", action="append", metavar="URL", default=argparse.SUPPRESS,
                        help=f"a server to talk to (repeatable; env {SERVERS_ENV}; "
                             f"default {', '.join(DEFAULT_SERVERS)})")
    common.add_argument("--http-timeout", type=positive_float, metavar="S", default=argparse.SUPPRESS,
                        help="timeout of one HTTP request, seconds (default 10)")
    parser = argparse.ArgumentParser(prog="dynwork", parents=[common], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Client of a dynwork cluster: enqueue work, collect results, "
                                                 "inspect the servers, measure throughput.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=textwrap.fill(help_text, 100),
                              epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("enqueue", "enqueue each FILE as one job ('-' reads stdin); prints one work id per line")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--iterations", "-n", type=positive_int(), required=True, metavar="N",
                   help="SHA-512 iterations per job")

    p = add("pull", "take completed results (each is handed out once across both servers)")
    p.add_argument("--top", type=positive_int(1, 1000), default=100, metavar="N",
                   help="at most N results (1..1000, default 100)")
    p.add_argument("--pretty", action="store_true", help="a table instead of JSON lines")

    p = add("get", "show one job's status and result (from any server)")
    p.add_argument("work_id", metavar="ID")

    p = add("wait", "wait until the jobs are finished and print their results as JSON lines, in the order given "
                    "(a progress bar on a terminal; servers that cannot answer are retried for "
                    f"{UNAVAILABLE_GRACE_S:g} s)")
    p.add_argument("work_ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="S", help="give up after S seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = add("status", "show both servers' status")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = add("bench", "load generator: enqueues jobs over all servers while pulling their results, then prints "
                     "jobs/s end to end and latency percentiles. It takes every completed result from "
                     "pullCompleted, so run it alone: other clients' results are counted as foreign and "
                     "are then only retrievable with `get`.")
    p.add_argument("--jobs", type=positive_int(), default=10_000, metavar="N", help="jobs to run (default 10000)")
    p.add_argument("--iterations", type=positive_int(), default=1, metavar="N", help="iterations per job (default 1)")
    p.add_argument("--body-bytes", type=positive_int(0), default=64, metavar="B", help="body size (default 64)")
    p.add_argument("--concurrency", type=positive_int(), default=64, metavar="C",
                   help="enqueue requests in flight (default 64)")
    p.add_argument("--latency", action="store_true",
                   help="one job at a time: enqueue, then GET /work/{id}?wait; report that round trip")
    p.add_argument("--warmup", type=positive_int(0), default=3, metavar="K",
                   help="--latency: jobs run first and not counted (default 3)")
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="S", help="give up after S s (default 300)")
    p.add_argument("--verify", action="store_true", help="check every result against hashlib")
    p.add_argument("--pull-interval", type=non_negative_float, default=loadgen.PULL_INTERVAL_S, metavar="S",
                   help="pause between pulls that came back short; shorter pulls more often, which costs the "
                        f"servers a query each (default {loadgen.PULL_INTERVAL_S:g})")
    p.add_argument("--client", choices=loadgen.CLIENTS, default="raw",
                   help="HTTP client: raw (lean keep-alive HTTP/1.1, about a quarter of aiohttp's CPU per "
                        "request) or aiohttp (default raw)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


COMMANDS = {"enqueue": cmd_enqueue, "pull": cmd_pull, "get": cmd_get, "wait": cmd_wait, "status": cmd_status,
            "bench": cmd_bench}


async def run(args: argparse.Namespace, servers: Sequence[str], out) -> int:
    async with Cluster(servers, getattr(args, "http_timeout", 10.0)) as cluster:
        return await COMMANDS[args.command](args, cluster, out)


def main(argv: Sequence[str] | None = None, environ=None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        servers = resolve_servers(getattr(args, "server", None), environ)
        return asyncio.run(run(args, servers, sys.stdout))
    except CliError as exc:
        print(f"dynwork: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `dynwork pull | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
