"""The operator's side: a committed copy of the working tree and ansible-playbook run in it.

Instances get `git HEAD` of the controller's checkout, so the rehearsal deploys a copy of this
working tree (tracked and untracked, not ignored files), committed in a fresh repository: what
is tested is what is on disk, and a "code change" is a commit there, never in the real checkout.
Its .secrets/ (SSH key, cluster token, known_hosts) stays inside the copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "rehearsal",
    "GIT_AUTHOR_EMAIL": "rehearsal@invalid",
    "GIT_COMMITTER_NAME": "rehearsal",
    "GIT_COMMITTER_EMAIL": "rehearsal@invalid",
}


class Controller:
    def __init__(self, source: Path, checkout: Path, environ: dict[str, str]) -> None:
        self.dir = checkout
        self.environ = environ
        files = subprocess.run(
            ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout.split(b"\0")
        for name in filter(None, (f.decode() for f in files)):
            src = source / name
            if src.is_file():
                (checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, checkout / name)
        checkout.chmod(0o700)  # ansible ignores an ansible.cfg in a world-writable directory
        self.git("init", "--quiet")
        self.commit("the working tree under test")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.dir), *args],
            check=True,
            capture_output=True,
            text=True,
            env=dict(os.environ, **GIT_ENV),
        ).stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "--short=12", "HEAD")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DYNWORK_", "ANSIBLE_"))}
        env.update(self.environ, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        return env

    def playbook(self, *args: str, timeout_s: float = 900) -> Run:
        started = time.monotonic()
        result = subprocess.run(
            # setpriv: a killed pytest leaves no playbook behind (preexec_fn is unsafe with threads)
            ["setpriv", "--pdeathsig", "TERM", str(BIN / "ansible-playbook"), *args],
            cwd=self.dir,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        return Run(result, time.monotonic() - started)

    def inventory(self) -> dict:
        """`ansible-inventory -i inventory/aws --list`: the hosts the plays would see now."""
        result = subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", "inventory/aws", "--list"],
            cwd=self.dir,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(result.stdout)


class Run:
    def __init__(self, result: subprocess.CompletedProcess, seconds: float) -> None:
        self.rc, self.stdout, self.stderr, self.seconds = result.returncode, result.stdout, result.stderr, seconds

    def changed(self) -> dict[str, int]:
        found = {
            m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", self.stdout, re.M)
        }
        assert found, f"no PLAY RECAP:\n{self.explain()}"
        return found

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for a failing changed=0 check)."""
        tasks, current = [], ""
        for line in self.stdout.splitlines():
            if line.startswith("TASK ["):
                current = line
            elif line.startswith("changed:"):
                tasks.append(f"{current} {line}")
        return tasks

    def explain(self) -> str:
        return (
            f"rc={self.rc} after {self.seconds:.0f}s\n--- stdout (tail)\n{self.stdout[-7000:]}\n"
            f"--- stderr (tail)\n{self.stderr[-2500:]}"
        )
