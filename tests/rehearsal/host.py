"""What the rehearsal needs from the host, checked (and installed) before anything starts.

Root, util-linux `unshare`, a writable cgroup v2 hierarchy, overlayfs, and Debian packages
(mmdebstrap, openssh-client) installed with apt-get when missing. `skip_reason()` says why the
rehearsal cannot run here; in CI (as root) it only ever skips for a host without namespaces.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

CACHE_DIR = Path(os.environ.get("DYNWORK_REHEARSAL_CACHE", "/var/cache/dynwork-rehearsal"))
DEBIAN_PACKAGES = {"mmdebstrap": "mmdebstrap", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}
CGROUP_SUBTREE = "dynwork-rehearsal"


def skip_reason() -> str | None:  # noqa: PLR0911  # one early return per missing host feature
    """Why the rehearsal cannot run on this host, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups): CI runs as root"
    if not Path("/etc/debian_version").exists():
        return "needs a Debian host (apt-get for mmdebstrap)"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "util-linux unshare and setpriv are not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--uts", "--ipc", "--pid", "--cgroup", "--fork", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"this host refuses new namespaces: {probe.stderr.strip()}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    if cgroup2_root() is None:
        return "no cgroup v2 hierarchy is mounted"
    return None


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup or .../unified)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def rehearsal_cgroup() -> Path:
    root = cgroup2_root()
    assert root is not None
    path = root / CGROUP_SUBTREE
    path.mkdir(exist_ok=True)
    return path


def remove_cgroup(path: Path) -> None:
    """Kill everything in a cgroup subtree and remove it, deepest first."""
    if not path.exists():
        return
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _rmdir_when_empty(sub)
    _rmdir_when_empty(path)


def _rmdir_when_empty(path: Path) -> None:
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY until the killed processes are reaped
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def install_packages() -> None:
    """apt-get install what is missing (CI starts from a bare image)."""
    missing = sorted({pkg for tool, pkg in DEBIAN_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        capture_output=True,
        timeout=900,
    )


def port_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
