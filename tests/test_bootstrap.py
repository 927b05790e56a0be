"""worker.bootstrap against a real IMDSv2-like HTTP server on loopback."""

from __future__ import annotations

import contextlib
import stat

import pytest

from server.launchers.base import WorkerSpec
from server.launchers.ec2 import user_data
from tests.rehearsal.imds import Imds
from worker import bootstrap
from worker.config import load_settings as load_worker_settings

SPEC = WorkerSpec(
    "s8001-w1-abc123",
    ("http://10.0.0.5:8001", "http://10.0.0.6:8002"),
    't0ken-with-"quotes"-and-\\-' + "x" * 16,
    0,
    120.0,
)


@contextlib.contextmanager
def imds(user_data: bytes | None, unready: int = 0):
    """IMDSv2 as EC2 serves it (tests/rehearsal/imds.py), with only this user-data."""
    server = Imds("i-bootstrap", lambda: user_data, role=None, unready=unready)
    try:
        yield server
    finally:
        server.close()


def test_reads_user_data_writes_token_0600_and_runs_the_worker(tmp_path, monkeypatch):
    token_file = tmp_path / "run" / "cluster.token"
    seen = []

    def run_worker(argv):
        seen.append(argv)
        return 3

    with imds(user_data(SPEC).encode()) as fake:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url)
        code = bootstrap.main(["--token-file", str(token_file)], run_worker=run_worker)
    assert code == 3  # the worker's exit code is the bootstrap's
    assert [r[0] for r in fake.requests] == ["PUT", "GET"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == SPEC.token
    # the argv is what the real worker CLI accepts, with the user-data's values
    (argv,) = seen
    settings = load_worker_settings(argv, environ={})
    assert settings.servers == list(SPEC.servers)
    assert settings.worker_id == SPEC.worker_id
    assert settings.token_file == token_file
    assert settings.threads == 0 and settings.idle_exit_s == 120.0


def test_waits_for_metadata_that_is_not_ready_yet(tmp_path):
    with imds(user_data(SPEC).encode(), unready=2) as fake:
        code = bootstrap.main(
            ["--imds-endpoint", fake.url, "--token-file", str(tmp_path / "t")], run_worker=lambda argv: 0
        )
    assert code == 0
    assert [r[0] for r in fake.requests] == ["PUT", "PUT", "PUT", "GET"]


def test_gives_up_when_metadata_never_answers(tmp_path):
    with imds(b"", unready=10_000) as fake:
        code = bootstrap.main(
            ["--imds-endpoint", fake.url, "--imds-wait-s", "0.5", "--token-file", str(tmp_path / "t")],
            run_worker=pytest.fail,
        )
    assert code == 1
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"not = [toml",
        b'servers = []\ntoken = "x"\nworker_id = "w"\n',
        b'servers = ["http://a"]\nworker_id = "w"\n',
        b"\xff\xfe",
    ],
)
def test_bad_or_missing_user_data_is_a_config_error(tmp_path, body):
    with imds(body) as fake:
        code = bootstrap.main(
            ["--imds-endpoint", fake.url, "--token-file", str(tmp_path / "t")], run_worker=pytest.fail
        )
    assert code == bootstrap.EXIT_BAD_USER_DATA
    assert not (tmp_path / "t").exists()
