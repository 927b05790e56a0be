"""The local target of `ansible-playbook site.yml`: two daemon servers, verified, idempotent.

Runs the real playbook (connection local) on free loopback ports with its state in a temporary
directory, so it never touches a `make up` cluster on 8001/8002.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not installed next to python"),
]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def recap_changed(stdout: str) -> dict[str, int]:
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", stdout, re.M)}
    assert found, f"no PLAY RECAP in output:\n{stdout[-3000:]}"
    return found


@pytest.fixture(scope="module")
def local_target(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    ports = free_ports(2)
    extra = json.dumps({"dynwork_local_ports": ports, "dynwork_run_dir": str(run_dir), "common_venv": sys.prefix})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "DYNWORK_"))}

    def playbook(path: str, *more: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ANSIBLE_PLAYBOOK), path, "-e", extra, *more],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    yield playbook, ports, run_dir
    playbook("playbooks/teardown.yml")


def explain(result: subprocess.CompletedProcess) -> str:
    return f"rc={result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


def test_site_starts_two_verified_peers_then_changes_nothing_then_tears_down(local_target):
    playbook, ports, run_dir = local_target
    first = playbook("site.yml")
    assert first.returncode == 0, explain(first)
    assert sum(recap_changed(first.stdout).values()) > 0
    # The verify play compared each server's result with the controller's hashlib reference.
    assert re.search(r"s8001\s+at\s+http://127.0.0.1:\d+:\s+s8001\.\d+\.\w+\s+matches", first.stdout), explain(first)
    assert re.search(r"s8002\s+at\s+http://127.0.0.1:\d+:\s+s8002\.\d+\.\w+\s+matches", first.stdout), explain(first)
    token = run_dir / "cluster.token"
    assert token.stat().st_mode & 0o777 == 0o600
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200

    second = playbook("site.yml")
    assert second.returncode == 0, explain(second)
    assert set(recap_changed(second.stdout).values()) == {0}, explain(second)

    # Other arguments restart the servers ("already running" alone would keep the old ones).
    third = playbook("site.yml", "-e", '{"server_max_workers": 3, "server_metrics_auth": true}')
    assert third.returncode == 0, explain(third)
    assert recap_changed(third.stdout)["s8001"] > 0, explain(third)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as answer:
            assert json.loads(answer.read())["workers"]["max"] == 3
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert refused.value.code == 401  # server_metrics_auth reached the server

    down = playbook("playbooks/teardown.yml")
    assert down.returncode == 0, explain(down)
    for name in ("s8001", "s8002"):
        assert not (run_dir / name / "server.pid").exists()
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after teardown"


def test_aws_server_config_template_is_what_the_server_loads(tmp_path):
    """The server.toml an AWS server gets parses with the server's own loader, mode 0600."""
    from server.config import load_settings

    dest = tmp_path / "server.toml"
    variables = {
        "server_host": "0.0.0.0",
        "server_port": "8001",
        "server_name": "s1",
        "server_public_url": "http://10.0.0.5:8001",
        "server_peer": "http://10.0.0.6:8001",
        "server_state_dir": "/var/lib/dynwork",
        "server_token_file": "/etc/dynwork/cluster.token",
        "server_launcher": "ec2",
        "server_max_workers": 5,
        "server_worker_idle_s": 60,
        "server_launch_template": "dynwork-worker",
        "server_cluster": "dynwork",
        "server_aws_region": "eu-west-1",
        "server_metrics": True,
        "server_metrics_auth": True,
        "server_log_format": "json",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "DYNWORK_"))}
    result = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            json.dumps(
                {
                    "src": str(ROOT / "roles/server/templates/etc/dynwork/server.toml.j2"),
                    "dest": str(dest),
                    "mode": "0600",
                }
            ),
            "-e",
            json.dumps(variables),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, explain(result)
    assert dest.stat().st_mode & 0o777 == 0o600
    settings = load_settings(["--config", str(dest)], environ={})
    assert (settings.host, settings.port, settings.server_name) == ("0.0.0.0", 8001, "s1")
    assert (settings.peer, settings.url) == ("http://10.0.0.6:8001", "http://10.0.0.5:8001")
    assert (settings.launcher, settings.launch_template, settings.cluster) == ("ec2", "dynwork-worker", "dynwork")
    assert str(settings.token_file) == "/etc/dynwork/cluster.token" and settings.aws_region == "eu-west-1"
    assert (settings.metrics, settings.metrics_auth, settings.log_format) == (True, True, "json")


def test_worker_image_unit_runs_bootstrap_and_powers_off_after():
    unit = (ROOT / "roles/worker/templates/etc/systemd/system/dynwork-worker.service.j2").read_text()
    defaults = (ROOT / "roles/worker/defaults/main.yml").read_text()
    assert unit.startswith("# {{ ansible_managed }}")
    assert "ExecStart={{ worker_venv }}/bin/python -m worker.bootstrap" in unit
    assert "worker_venv: /opt/dynwork/.venv" in defaults
    assert "ExecStopPost=+{{ worker_poweroff_command }}" in unit and "systemctl poweroff" in defaults
    # bootstrap writes the token under /run/dynwork, the unit's runtime directory
    assert "RuntimeDirectory=dynwork" in unit
