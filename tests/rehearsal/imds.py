"""A per-instance IMDSv2 endpoint, as EC2 serves it at 169.254.169.254 (here 127.0.0.1:port).

Only token-authenticated GETs are answered (IMDSv1 is off, as the launch template requires).
It serves what the stand-ins read: the user-data (the worker's bootstrap settings, fetched from
moto at request time, so it is exactly what RunInstances received), the instance id, and, for
an instance with an instance profile, the role credentials the AWS SDK's credential chain asks
for. Each stand-in is pointed at its own endpoint through AWS_EC2_METADATA_SERVICE_ENDPOINT.
"""

from __future__ import annotations

import datetime
import http.server
import json
import secrets
import threading
from collections.abc import Callable

CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


class Imds(http.server.ThreadingHTTPServer):
    """Serves from its own thread until close(). `unready` requests fail with 503 first (an
    endpoint still coming up); `requests` records (method, path) of every request."""

    daemon_threads = True

    def __init__(
        self, instance_id: str, user_data: Callable[[], bytes | None], role: str | None, *, unready: int = 0
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.instance_id = instance_id
        self.user_data = user_data
        self.role = role
        self.unready = unready
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self.serve_forever, name=f"imds-{instance_id}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)

    def answer(self, path: str) -> tuple[int, bytes]:
        if path == "/latest/user-data":
            data = self.user_data()
            return (200, data) if data else (404, b"")
        if path == "/latest/meta-data/instance-id":
            return 200, self.instance_id.encode()
        if path.startswith(CREDENTIALS_PATH) and self.role:
            name = path[len(CREDENTIALS_PATH) :]
            if not name:
                return 200, self.role.encode()
            if name == self.role:
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
                return 200, json.dumps(
                    {
                        "Code": "Success",
                        "Type": "AWS-HMAC",
                        "AccessKeyId": "ASIAREHEARSAL",
                        "SecretAccessKey": "rehearsal",
                        "Token": "rehearsal",
                        "LastUpdated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
        return 404, b""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Imds

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
        token = secrets.token_hex(16)
        self.server.tokens.add(token)
        self._reply(200, token.encode())

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.headers.get("X-aws-ec2-metadata-token") not in self.server.tokens:
            return self._reply(401)  # IMDSv1 is off
        self._reply(*self.server.answer(self.path))
