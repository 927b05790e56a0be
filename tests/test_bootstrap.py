"""worker.bootstrap against a real IMDSv2-like HTTP server on loopback."""

from __future__ import annotations

import contextlib
import http.server
import secrets
import stat
import threading

import pytest

from server.launchers.base import WorkerSpec
from server.launchers.ec2 import user_data
from worker import bootstrap
from worker.config import load_settings as load_worker_settings

SPEC = WorkerSpec(
    "s8001-w1-abc123",
    ("http://10.0.0.5:8001", "http://10.0.0.6:8002"),
    't0ken-with-"quotes"-and-\\-' + "x" * 16,
    0,
    120.0,
)


class FakeImds(http.server.ThreadingHTTPServer):
    """IMDSv2 as EC2 serves it: GET needs a token obtained by PUT. `unready` requests fail first."""

    def __init__(self, user_data: bytes | None, unready: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), ImdsHandler)
        self.user_data = user_data
        self.unready = unready
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ImdsHandler(http.server.BaseHTTPRequestHandler):
    server: FakeImds

    def log_message(self, *args) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.server.requests.append(("PUT", self.path))
        if self.server.unready > 0:
            self.server.unready -= 1
            return self._reply(503)
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self._reply(400)
        token = secrets.token_hex(8)
        self.server.tokens.add(token)
        self._reply(200, token.encode())

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.headers.get("X-aws-ec2-metadata-token") not in self.server.tokens:
            return self._reply(401)  # IMDSv1 is disabled
        if self.path != "/latest/user-data" or self.server.user_data is None:
            return self._reply(404)
        self._reply(200, self.server.user_data)


@contextlib.contextmanager
def imds(user_data: bytes | None, unready: int = 0):
    server = FakeImds(user_data, unready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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
