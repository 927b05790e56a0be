"""One stand-in instance: a rootfs booted with systemd as PID 1 in its own namespaces.

The root is an overlay: the image layers read-only (topmost first, the base rootfs last) under
the instance's own upper directory, which is its "EBS volume": it outlives a stop, and a baked
image is a copy of it. Everything is mounted inside the stand-in's mount namespace, so the
kernel undoes every mount when the namespace dies; the processes live in their own cgroup
(cgroup namespace, cgroup2 mounted inside) so that systemd can manage its units and the host
can kill the whole tree at once. The network is the host's: sshd and the server listen on the
stand-in's own 127.0.0.N.

Nothing outlives the test: `unshare --kill-child` and a parent-death signal tie PID 1 to the
process that started it (a crashed pytest takes its stand-ins along), and `destroy()` kills the
cgroup. `poweroff()` is the ACPI button (SIGRTMIN+4: systemd's clean shutdown); systemd's
final reboot(2) in a PID namespace ends that namespace: SIGINT for poweroff, SIGHUP for reboot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.rehearsal import host

BOOT_SCRIPT = r"""
set -eu
R="$STANDIN_ROOT"
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$STANDIN_LOWER,upperdir=$STANDIN_UPPER,workdir=$STANDIN_WORK" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
touch "$R/dev/console"; mount --bind "$STANDIN_CONSOLE" "$R/dev/console"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
if [ -n "$STANDIN_WHEELS" ]; then mount --bind -o ro "$STANDIN_WHEELS" "$R$STANDIN_WHEELS_AT"; fi
hostname "$STANDIN_HOSTNAME"
exec chroot "$R" /lib/systemd/systemd --system
"""


class StandIn:
    """A booted rootfs. `boot()` must be called from a thread that outlives the stand-in."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        layers: list[Path],
        hostname: str,
        *,
        wheels: Path | None = None,
        wheels_at: str = "",
    ) -> None:
        self.name = name
        self.dir = workdir
        self.layers = layers
        self.hostname = hostname
        self.wheels, self.wheels_at = wheels, wheels_at
        self.upper, self.work, self.root = workdir / "upper", workdir / "work", workdir / "root"
        self.console = workdir / "console.log"
        for path in (self.upper, self.work, self.root):
            path.mkdir(parents=True, exist_ok=True)
        self.cgroup = host.rehearsal_cgroup() / name
        self.proc: subprocess.Popen | None = None
        self.boots = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def boot(self) -> None:
        assert not self.running, f"{self.name} is already running"
        host.remove_cgroup(self.cgroup)
        self.cgroup.mkdir()
        self.console.touch()
        procs = self.cgroup / "cgroup.procs"
        # Before unshare: join the stand-in's own cgroup, and die with the thread that started it
        # (a shell and setpriv rather than preexec_fn, which is unsafe in this threaded process).
        enter = ["/bin/sh", "-c", 'echo $$ > "$0" && exec setpriv --pdeathsig KILL "$@"', str(procs)]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "container": "dynwork-standin",
            "STANDIN_ROOT": str(self.root),
            "STANDIN_UPPER": str(self.upper),
            "STANDIN_WORK": str(self.work),
            "STANDIN_LOWER": ":".join(str(p) for p in self.layers),
            "STANDIN_CONSOLE": str(self.console),
            "STANDIN_HOSTNAME": self.hostname,
            "STANDIN_WHEELS": str(self.wheels or ""),
            "STANDIN_WHEELS_AT": self.wheels_at,
        }
        with open(self.dir / "boot.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *enter,
                    "unshare",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--pid",
                    "--cgroup",
                    "--fork",
                    "--kill-child",
                    "/bin/sh",
                    "-c",
                    BOOT_SCRIPT,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        self.boots += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid1(self, timeout_s: float = 10.0) -> int:
        """Host pid of the stand-in's PID 1 (systemd), the child of unshare."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while True:
            children = path.read_text().split() if path.exists() else []
            if children:
                return int(children[0])
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"{self.name}: no PID 1 ({self.boot_log()})")
            time.sleep(0.02)

    def wait(self, timeout_s: float) -> int | None:
        """Wait until PID 1 has gone; the exit status, or None on timeout."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def poweroff(self, timeout_s: float = 60.0) -> None:
        """A clean shutdown (units stopped in order), then force if it does not end in time."""
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError, RuntimeError):
            os.kill(self.pid1(), signal.SIGRTMIN + 4)
        if self.wait(timeout_s) is None:
            self.destroy()

    def destroy(self) -> None:
        """Kill everything at once (the power cord) and remove the cgroup."""
        host.remove_cgroup(self.cgroup)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    # -- inspection ----------------------------------------------------------------------------
    def run(self, *argv: str, timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the running stand-in (all its namespaces, its root)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1()), "-m", "-u", "-i", "-p", "-C", "-r", "-w", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {argv} -> {result.returncode}: {result.stdout}{result.stderr}")
        return result

    def journal(self, *args: str, lines: int = 60) -> str:
        """The stand-in's persistent journal, read from its disk (works after it stopped too)."""
        journals = self.upper / "var/log/journal"
        if not journals.exists() or shutil.which("journalctl") is None:
            return "(no journal, or no journalctl on the host)"
        result = subprocess.run(
            ["journalctl", "--directory", str(journals), "--no-pager", "-n", str(lines), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout[-8000:] + result.stderr[-2000:]

    def boot_log(self) -> str:
        path = self.dir / "boot.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
