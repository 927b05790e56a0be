"""`python -m worker.bootstrap`: start a worker on an EC2 instance from its user-data.

The AMI's systemd unit runs this at boot. It reads the instance user-data over IMDSv2 (PUT for
a session token, then GET with it), a TOML document written by the server's EC2 launcher:

    servers = ["http://10.0.0.5:8001", "http://10.0.0.6:8002"]   # own server first
    token = "dw1...."      # this worker's own credential (never the cluster secret)
    worker_id = "s8001-w3-a1b2c3"
    threads = 0            # 0: one per core
    idle_exit_s = 120.0

writes the token to a mode-0600 file, and runs the worker in this process; its exit code is
this command's, and the unit then powers the instance off (instance-initiated shutdown is
terminate). IMDS may not answer in the first seconds of a boot, so fetching retries for a while.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.settings import SettingsError, load, option

log = logging.getLogger("worker.bootstrap")

ENV_PREFIX = "DYNWORK_BOOTSTRAP_"
TOKEN_TTL_S = 21600
EXIT_BAD_USER_DATA = 78  # EX_CONFIG: retrying the same user-data cannot help


@dataclasses.dataclass(frozen=True)
class BootstrapSettings:
    imds_endpoint: str = option(
        "", "instance metadata endpoint (default: $AWS_EC2_METADATA_SERVICE_ENDPOINT or http://169.254.169.254)"
    )
    imds_wait_s: float = option(120.0, "how long to keep trying to read the user-data at boot")
    token_file: Path = option(Path("/run/dynwork/worker.token"), "where to write the worker's credential (mode 0600)")
    log_level: str = option("INFO", "logging level")

    def __post_init__(self) -> None:
        if self.imds_wait_s < 0:
            raise SettingsError("imds_wait_s must be >= 0")

    @property
    def endpoint(self) -> str:
        url = self.imds_endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "http://169.254.169.254"
        return url.rstrip("/")


class UserDataError(Exception):
    """The user-data is missing or is not the worker settings TOML the launcher writes."""


def fetch_user_data(endpoint: str, *, wait_s: float, timeout_s: float = 2.0) -> bytes:
    """IMDSv2: a session token by PUT, then the user-data by GET; retried until wait_s passes."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            put = urllib.request.Request(
                f"{endpoint}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
            )
            with urllib.request.urlopen(put, timeout=timeout_s) as resp:
                session = resp.read().decode().strip()
            get = urllib.request.Request(f"{endpoint}/latest/user-data", headers={"X-aws-ec2-metadata-token": session})
            with urllib.request.urlopen(get, timeout=timeout_s) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise UserDataError("the instance has no user-data") from None
            error: Exception = exc
        except (urllib.error.URLError, OSError) as exc:
            error = exc
        if time.monotonic() + delay > deadline:
            raise OSError(f"instance metadata at {endpoint} did not answer within {wait_s:.0f}s: {error}")
        log.info("instance metadata not ready (%s); retrying in %.1fs", error, delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def parse_user_data(raw: bytes) -> dict[str, Any]:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserDataError(f"user-data is not TOML: {exc}") from None
    servers = data.get("servers")
    if not isinstance(servers, list) or not 1 <= len(servers) <= 2 or not all(isinstance(s, str) for s in servers):
        raise UserDataError("user-data needs servers = [one or two URLs]")
    if not isinstance(data.get("token"), str) or not data["token"]:
        raise UserDataError("user-data needs a token")
    if not isinstance(data.get("worker_id"), str) or not data["worker_id"]:
        raise UserDataError("user-data needs a worker_id")
    if not isinstance(data.get("threads", 0), int) or not isinstance(data.get("idle_exit_s", 60.0), (int, float)):
        raise UserDataError("user-data threads must be an integer and idle_exit_s a number")
    return data


def write_token(path: Path, token: str) -> None:
    """Write the secret so that it is never readable by others, not even for a moment."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def worker_argv(data: dict[str, Any], token_file: Path) -> list[str]:
    argv = []
    for url in data["servers"]:
        argv += ["--server", url]
    argv += [
        "--token-file",
        str(token_file),
        "--worker-id",
        data["worker_id"],
        "--threads",
        str(int(data.get("threads", 0))),
        "--idle-exit-s",
        f"{float(data.get('idle_exit_s', 60.0)):g}",
    ]
    return argv


def main(argv: Sequence[str] | None = None, *, run_worker: Callable[[list[str]], int] | None = None) -> int:
    settings = load(
        BootstrapSettings,
        argv,
        prog="python -m worker.bootstrap",
        env_prefix=ENV_PREFIX,
        description="Start a dynwork worker from the EC2 instance's user-data (IMDSv2).",
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        data = parse_user_data(fetch_user_data(settings.endpoint, wait_s=settings.imds_wait_s))
    except UserDataError as exc:
        log.error("cannot start a worker: %s", exc)
        return EXIT_BAD_USER_DATA
    except OSError as exc:
        log.error("cannot start a worker: %s", exc)
        return 1
    write_token(settings.token_file, data["token"])
    args = worker_argv(data, settings.token_file)
    log.info("starting worker %s for %s", data["worker_id"], ", ".join(data["servers"]))
    if run_worker is None:
        from worker.__main__ import main as worker_main  # the worker proper, in this process

        run_worker = worker_main
    return int(run_worker(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
