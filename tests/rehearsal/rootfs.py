"""The base image of every stand-in, and the wheels its pip installs from; both cached.

The base is what a Debian 12 cloud image gives: systemd, sshd, sudo, Python 3.11, and the default
user `admin` (passwordless sudo) that receives the key pair's public key at first boot. SSH host
keys are made at first boot (as cloud-init does), so a baked image carries none of the builder's.
It also carries the OS packages the common role asks for, so that role's install task finds
them installed instead of downloading them three times. pip inside a stand-in reads /etc/pip.conf:
no index, only the wheelhouse, which the stand-in mounts read-only; the project itself is still
built there from the release the common role ships (the cffi extension compiled in the stand-in).

Cache keys are hashes of the inputs (package list, this file's customisation, the project's
dependencies), so a change rebuilds and a rerun reuses. Builds run under a lock, into a temporary
directory renamed at the end, so an interrupted build is never taken for a finished one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

PACKAGES = [
    "systemd",
    "systemd-sysv",
    "openssh-server",
    "sudo",
    "procps",
    "python3",
    "python3-apt",
    # what roles/common/vars/Debian.yml installs
    "python3.11",
    "python3.11-venv",
    "python3.11-dev",
    "gcc",
    "libc6-dev",
    "tar",
    "gzip",
]
WHEELS_MOUNT = "/var/cache/rehearsal-wheels"
CUSTOMIZE_VERSION = "3"
FILES = {
    "etc/sudoers.d/90-cloud-init-users": "admin ALL=(ALL) NOPASSWD:ALL\n",
    "etc/pip.conf": f"[global]\nno-index = true\nfind-links = {WHEELS_MOUNT}\n",
    "etc/hostname": "localhost\n",
    "etc/machine-id": "",
    # cloud-init's ssh module: host keys made at first boot
    "etc/systemd/system/standin-hostkeys.service": (
        "[Unit]\nDescription=Generate SSH host keys (cloud-init stand-in)\nBefore=ssh.service\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/bin/ssh-keygen -A\n\n[Install]\nWantedBy=multi-user.target\n"
    ),
}
MASKED = ["console-getty.service", "getty@.service", "getty.target", "systemd-firstboot.service"]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def base_rootfs(cache: Path) -> Path:
    """The customised Debian 12 rootfs directory (built once per key, about 30 s)."""
    key = _key(" ".join(PACKAGES), CUSTOMIZE_VERSION, repr(sorted(FILES.items())), " ".join(MASKED))
    final = cache / f"rootfs-{key}"
    with _locked(cache / "rootfs.lock"):
        if final.is_dir():
            return final
        for stale in cache.glob("rootfs-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f"building-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tar = cache / f"debian-{key}.tar"
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(PACKAGES)}", "bookworm", str(tar)],
            check=True,
            capture_output=True,
            timeout=900,
        )
        subprocess.run(["tar", "-C", str(tmp), "-xf", str(tar)], check=True, timeout=300)
        tar.unlink()
        _customize(tmp)
        tmp.rename(final)
        return final


def _customize(root: Path) -> None:
    subprocess.run(
        ["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "admin"],
        check=True,
        capture_output=True,
    )
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "etc/sudoers.d/90-cloud-init-users").chmod(0o440)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "standin-hostkeys.service").symlink_to("/etc/systemd/system/standin-hostkeys.service")
    for unit in MASKED:
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)  # journals survive for diagnostics
    (root / WHEELS_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)


def wheelhouse(cache: Path, project: Path) -> Path:
    """Wheels of the project's dependencies and build requirements, for pip inside stand-ins."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    requirements = sorted(meta["project"]["dependencies"]) + sorted(meta["build-system"]["requires"])
    key = _key(*requirements, f"{sys.version_info.major}.{sys.version_info.minor}")
    final = cache / f"wheels-{key}"
    with _locked(cache / "wheels.lock"):
        if final.is_dir():
            return final
        for stale in cache.glob("wheels-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f"building-wheels-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp), *requirements],
            check=True,
            capture_output=True,
            timeout=900,
        )
        tmp.rename(final)
        return final
