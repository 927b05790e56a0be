"""py-spy around the servers during a measurement, and a summary of what it recorded.

`Profiler` runs `py-spy record --native --idle --threads --format raw` on each pid for as long as
its `with` block lasts (the benchmark wraps a row's dynwork measurement in one with --profile DIR).
Idle threads are sampled too, so a thread waiting in fsync shows; every percentage is of all
samples of the process (threads x time), and a sample is idle when its thread waits in epoll or
on a lock or queue (waiting for work), busy otherwise (running, or in I/O such as fsync).

`python -m client.bench.profile FILE...` prints, per file: each thread's share and busy share, and
over busy samples the heaviest leaf frames (where the CPU or the I/O wait is), innermost Python
frames (which Python function the native time is spent under) and Python frames inclusive.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from client.bench import probes

FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")
ADDRESS = re.compile(r"^0x[0-9a-f]+$")


def py_spy() -> str | None:
    """The py-spy executable: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy on each pid of `pids` (name -> pid), raw output to `out_dir`/`label`-name.txt."""

    def __init__(self, pids: dict[str, int], out_dir: Path, label: str, rate_hz: int = 100) -> None:
        self.pids = pids
        self.out_dir = out_dir
        self.label = label
        self.rate_hz = rate_hz
        self.outputs: list[Path] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiler:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"{self.label}-{name}.txt"
            argv = [exe, "record", "--pid", str(pid), "--native", "--idle", "--threads", "--format", "raw"]
            argv += ["--rate", str(self.rate_hz), "--output", str(out)]
            self._procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.outputs.append(out)
        return self

    def __exit__(self, *exc: object) -> None:
        probes.stop_all(self._procs, signal.SIGINT, 60)  # py-spy writes its output on ^C


IDLE = ("epoll_wait", "PyThread_acquire_lock_timed", "_queue_SimpleQueue_get", "EpollSelector.select")
GENERIC = ("threading.py", "<frozen runpy>", "asyncio/base_events.py", "asyncio/runners.py", "asyncio/events.py")
GENERIC_FRAMES = ("main (", "<module> (", "_worker (futures/thread.py)", "run_app (", "thread_run (")


def _short(frame: str) -> str:
    """'name (/a/b/dir/file.py:12)' -> 'name (dir/file.py)'; a bare address -> '(library)'."""
    match = FRAME.match(frame)
    if not match:
        return frame
    name, where = match["name"], match["where"].rsplit(":", 1)[0]
    where = "/".join(where.split("/")[-2:])
    return f"({where})" if ADDRESS.match(name) else f"{name} ({where})"


def _is_python(frame: str) -> bool:
    match = FRAME.match(frame)
    return match is not None and ".py:" in match["where"]


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    """(frames root first, samples) for each line of a py-spy raw (collapsed) file."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _idle(frames: list[str]) -> bool:
    """A thread waiting for work: in epoll, or blocked on a lock or queue (not in I/O it asked for)."""
    return any(marker in frame for frame in frames for marker in IDLE)


def _generic(name: str) -> bool:
    return name.startswith(GENERIC_FRAMES) or any(f"{g})" in name for g in GENERIC) or not name.endswith(".py)")


def summarize(stacks: Iterable[tuple[list[str], int]], top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Percent of all samples (threads x time): each thread's samples and its busy (not idle)
    ones; then over busy samples only, the leaf frames, the innermost Python frames, and the
    Python frames inclusive of their callees (generic ones such as the event loop's left out)."""
    threads: collections.Counter[str] = collections.Counter()
    busy: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    python: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in stacks:
        total += count
        head, body = (frames[0], frames[1:]) if frames and frames[0].startswith("thread ") else ("thread ?", frames)
        thread = head.split(": ", 1)[-1]
        threads[thread] += count
        if not body or _idle(body):
            continue
        busy[thread + " busy"] += count
        leaf[_short(body[-1])] += count
        inner = next((f for f in reversed(body) if _is_python(f)), None)
        python[_short(inner) if inner else "(no Python frame)"] += count
        for name in {_short(f) for f in body if _is_python(f)}:
            if not _generic(name):
                inclusive[name] += count
    scale = 100.0 / total if total else 0.0

    def shares(counter: collections.Counter[str], limit: int | None = top) -> list[tuple[str, float]]:
        return [(name, round(n * scale, 1)) for name, n in counter.most_common(limit)]

    return {
        "threads": shares(threads, None) + shares(busy, None),
        "leaf": shares(leaf),
        "python": shares(python),
        "inclusive": shares(inclusive),
    }


def format_summary(title: str, summary: dict[str, list[tuple[str, float]]]) -> str:
    lines = [f"== {title}"]
    heads = {
        "threads": "threads: all samples, then busy ones (not in epoll or waiting on a lock/queue)",
        "leaf": "busy samples by leaf frame (self)",
        "python": "busy samples by innermost Python frame (native time charged to its caller)",
        "inclusive": "busy samples by Python frame, inclusive of callees",
    }
    for key, head in heads.items():
        lines.append(f"  -- {head}")
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in summary[key]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw files (benchmark --profile DIR)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--thread", help="only the samples of threads whose name contains this")
    args = parser.parse_args(argv)
    for path in args.files:
        stacks = read_stacks(path)
        if args.thread:
            stacks = [(f, n) for f, n in stacks if f and f[0].startswith("thread ") and args.thread in f[0]]
        title = f"{path} (threads matching {args.thread!r})" if args.thread else str(path)
        print(format_summary(title, summarize(stacks, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
