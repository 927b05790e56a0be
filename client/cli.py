"""`dynwork`: the command-line client of a dynwork cluster (see `dynwork --help`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

from client import loadgen
from client.api import FINISHED, UNAVAILABLE_GRACE_S, DynworkClient
from client.format import STATUS_LEGEND, format_history, format_pulled, format_status
from client.options import (
    DEFAULT_SERVERS,
    SERVERS_ENV,
    UsageError,
    non_negative_float,
    positive_float,
    positive_int,
    resolve_servers,
)
from client.progress import Progress
from common.http import HttpError, NotFound, Refused, Unavailable

WAIT_CONCURRENCY = 32  # jobs `wait` long-polls at once

EXIT_OK = 0
EXIT_FAILED = 1  # a job failed or timed out, a server is down (status), the bench was incomplete
EXIT_USAGE = 2  # bad arguments, unreadable file, or a server refused the request (4xx)
EXIT_UNAVAILABLE = 3  # no server could answer
EXIT_NOT_FOUND = 4  # unknown work id

EPILOG = f"""\
servers: --server URL (repeatable), else ${SERVERS_ENV} (comma-separated), else {" and ".join(DEFAULT_SERVERS)}.
exit codes: {EXIT_OK} ok; {EXIT_FAILED} a job failed or timed out, a server is down (status) or the bench fell
short; {EXIT_USAGE} bad usage or the server refused the request; {EXIT_UNAVAILABLE} no server could answer;
{EXIT_NOT_FOUND} unknown work id."""

Command = Callable[[argparse.Namespace, DynworkClient, TextIO], Awaitable[int]]


def exit_code(exc: HttpError | UsageError) -> int:
    """The exit code that reports `exc`: the HTTP layer's classes map onto the documented codes."""
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, Refused | UsageError):
        return EXIT_USAGE
    if isinstance(exc, Unavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


# -- commands ------------------------------------------------------------------------------------------


def read_input(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def check_inputs(paths: Sequence[str]) -> None:
    """UsageError unless every path can be read: nothing is enqueued when one cannot."""
    if list(paths).count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    for path in paths:
        if path != "-" and (os.path.isdir(path) or not os.access(path, os.R_OK)):
            reason = (
                "a directory" if os.path.isdir(path) else "no such file" if not os.path.exists(path) else "not readable"
            )
            raise UsageError(f"cannot read {path}: {reason}")


async def cmd_enqueue(args: argparse.Namespace, client: DynworkClient, out: TextIO) -> int:
    check_inputs(args.files)
    for path in args.files:
        work_id = await client.enqueue(read_input(path), args.iterations)
        print(work_id, file=out, flush=True)
    return EXIT_OK


async def cmd_pull(args: argparse.Namespace, client: DynworkClient, out: TextIO) -> int:
    items = await client.pull(args.top)
    if args.pretty:
        print(format_pulled(items) if items else "(no completed results waiting)", file=out)
    else:
        for item in items:
            print(json.dumps(item, separators=(",", ":")), file=out)
    return EXIT_OK


async def cmd_get(args: argparse.Namespace, client: DynworkClient, out: TextIO) -> int:
    item = await client.get(args.work_id, history=args.history)
    history = item.pop("history", None)
    print(json.dumps(item, indent=2), file=out)
    if history is not None:
        print(format_history(history), file=out)
    return EXIT_OK


async def cmd_wait(args: argparse.Namespace, client: DynworkClient, out: TextIO) -> int:
    """Waits for all jobs at once (at most WAIT_CONCURRENCY long-polls) and prints each result, in
    the order given, as soon as it and those before it are in."""
    ids = list(dict.fromkeys(args.work_ids))
    deadline = time.monotonic() + args.timeout if args.timeout else None
    progress = Progress(len(ids), sys.stderr, enabled=sys.stderr.isatty() and not args.quiet)
    gate = asyncio.Semaphore(WAIT_CONCURRENCY)
    results: list[dict[str, Any] | HttpError | None] = [None] * len(ids)
    finished = [asyncio.Event() for _ in ids]

    async def one(index: int) -> None:
        try:
            async with gate:
                results[index] = await client.wait(ids[index], deadline=deadline)
        except HttpError as exc:
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
        for index, work_id in enumerate(ids):
            await finished[index].wait()
            item = results[index]
            if item is None:  # its task failed unexpectedly: let that error show
                await tasks[index]
                continue
            if isinstance(item, HttpError):
                codes.add(exit_code(item))
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


async def cmd_status(args: argparse.Namespace, client: DynworkClient, out: TextIO) -> int:
    entries = await client.status()
    if args.json:
        print(json.dumps(entries, indent=2), file=out)
    else:
        print(format_status(entries), file=out)
        if any(e["up"] for e in entries):
            print(STATUS_LEGEND, file=out)
    down = sum(not e["up"] for e in entries)
    if down == len(entries):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED if down else EXIT_OK


async def cmd_bench(args: argparse.Namespace, client: DynworkClient, out: TextIO) -> int:
    try:
        cfg = loadgen.BenchConfig(
            servers=client.servers,
            jobs=args.jobs,
            iterations=args.iterations,
            body_bytes=args.body_bytes,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            verify=args.verify,
            warmup=args.warmup,
            http_timeout_s=client.timeout_s,
            client=args.client,
            pull_interval_s=args.pull_interval,
        )
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


COMMANDS: Mapping[str, Command] = {
    "enqueue": cmd_enqueue,
    "pull": cmd_pull,
    "get": cmd_get,
    "wait": cmd_wait,
    "status": cmd_status,
    "bench": cmd_bench,
}


# -- argument parsing ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        action="append",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"a server to talk to (repeatable; env {SERVERS_ENV}; default {', '.join(DEFAULT_SERVERS)})",
    )
    common.add_argument(
        "--http-timeout",
        type=positive_float,
        metavar="S",
        default=argparse.SUPPRESS,
        help="timeout of one HTTP request, seconds (default 10)",
    )
    parser = argparse.ArgumentParser(
        prog="dynwork",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Client of a dynwork cluster: enqueue work, collect results, inspect the servers, "
        "measure throughput.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=textwrap.fill(help_text, 100),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("enqueue", "enqueue each FILE as one job ('-' reads stdin); prints one work id per line")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--iterations", "-n", type=positive_int(), required=True, metavar="N", help="SHA-512 iterations per job"
    )

    p = add("pull", "take completed results (each is handed out once across both servers)")
    p.add_argument(
        "--top", type=positive_int(1, 1000), default=100, metavar="N", help="at most N results (1..1000, default 100)"
    )
    p.add_argument("--pretty", action="store_true", help="a table instead of JSON lines")

    p = add("get", "show one job's status and result (from any server)")
    p.add_argument("work_id", metavar="ID")
    p.add_argument("--history", action="store_true", help="also what happened to it: enqueued, leases, handed out")

    p = add(
        "wait",
        "wait until the jobs are finished and print their results as JSON lines, in the order given "
        "(a progress bar on a terminal; servers that cannot answer are retried for "
        f"{UNAVAILABLE_GRACE_S:g} s)",
    )
    p.add_argument("work_ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="S", help="give up after S seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = add("status", "show both servers' status")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = add(
        "bench",
        "load generator: enqueues jobs over all servers while pulling their results, then prints "
        "jobs/s end to end and latency percentiles. It takes every completed result from "
        "pullCompleted, so run it alone: other clients' results are counted as foreign and "
        "are then only retrievable with `get`.",
    )
    p.add_argument("--jobs", type=positive_int(), default=10_000, metavar="N", help="jobs to run (default 10000)")
    p.add_argument("--iterations", type=positive_int(), default=1, metavar="N", help="iterations per job (default 1)")
    p.add_argument("--body-bytes", type=positive_int(0), default=64, metavar="B", help="body size (default 64)")
    p.add_argument(
        "--concurrency", type=positive_int(), default=64, metavar="C", help="enqueue requests in flight (default 64)"
    )
    p.add_argument(
        "--latency",
        action="store_true",
        help="one job at a time: enqueue, then GET /work/{id}?wait; report that round trip",
    )
    p.add_argument(
        "--warmup",
        type=positive_int(0),
        default=3,
        metavar="K",
        help="--latency: jobs run first and not counted (default 3)",
    )
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="S", help="give up after S s (default 300)")
    p.add_argument("--verify", action="store_true", help="check every result against hashlib")
    p.add_argument(
        "--pull-interval",
        type=non_negative_float,
        default=loadgen.PULL_INTERVAL_S,
        metavar="S",
        help="pause between pulls that came back short; shorter pulls more often, which costs the servers"
        f" a query each (default {loadgen.PULL_INTERVAL_S:g}); past 5 empty pulls in a row it doubles, up to 0.25 s",
    )
    p.add_argument(
        "--client",
        choices=loadgen.CLIENTS,
        default="raw",
        help="HTTP client: raw (lean keep-alive HTTP/1.1, about a quarter of aiohttp's CPU per "
        "request) or aiohttp (default raw)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


# -- entry point ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, servers: Sequence[str], out: TextIO) -> int:
    async with DynworkClient(servers, timeout_s=getattr(args, "http_timeout", 10.0)) as client:
        return await COMMANDS[args.command](args, client, out)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The `dynwork` console script: parses argv, runs one command, returns the exit code."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    try:
        servers = resolve_servers(getattr(args, "server", None), environ)
        return asyncio.run(run(args, servers, sys.stdout))
    except (UsageError, HttpError) as exc:
        print(f"dynwork: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `dynwork pull | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
