"""Daemon mode with pid files, for `make up` and the Ansible local target (no root, no systemd).

`python -m server --daemon ...` starts a detached server and returns once it listens;
`python -m server.daemon stop PIDFILE` stops one and waits until it is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import ServerSettings

READY_TIMEOUT_S = 60.0


def running_pid(pid_file: Path) -> int | None:
    """The pid in the file if that process is alive and is a dynwork server."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if b"server" in cmdline else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def daemonize(settings: ServerSettings, run: Callable[[Callable[[], None]], int]) -> int:
    """Start `run(ready)` detached; return 0 once it calls ready(), 1 if it dies first."""
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = settings.pid_file or state_dir / "server.pid"
    log_file = settings.log_file or state_dir / "server.log"
    pid = running_pid(pid_file)
    if pid is not None:
        print(f"already running (pid {pid})")
        return 0
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        return _wait_ready(read_end, pid_file, log_file)
    # First child: new session, then fork again so the daemon can never reacquire a terminal.
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pid_file)

    def ready() -> None:
        os.write(write_end, b"ok")
        os.close(write_end)

    code = 1
    try:
        code = run(ready)
    finally:
        if running_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)
        os._exit(code)


def _wait_ready(read_end: int, pid_file: Path, log_file: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with os.fdopen(read_end, "rb") as pipe:
        # EOF without "ok" means the daemon died before it listened.
        import select

        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.5)
            if ready:
                if pipe.read(2) == b"ok":
                    print(f"started (pid {running_pid(pid_file)})")
                    return 0
                break
    print(f"failed to start; last lines of {log_file}:\n{_tail(log_file)}", file=sys.stderr)
    return 1


def stop(pid_file: Path, timeout_s: float) -> int:
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_pid(pid_file) is None and not Path(f"/proc/{pid}").exists():
            print("stopped")
            return 0
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"killed (pid {pid} ignored SIGTERM for {timeout_s:.0f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.daemon", description="Stop a daemonized server.")
    sub = parser.add_subparsers(dest="command", required=True)
    stop_cmd = sub.add_parser("stop", help="SIGTERM the server in PIDFILE and wait until it is gone")
    stop_cmd.add_argument("pid_file", type=Path)
    stop_cmd.add_argument("--timeout", type=float, default=90.0, help="seconds before SIGKILL (default 90)")
    args = parser.parse_args(argv)
    return stop(args.pid_file, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
