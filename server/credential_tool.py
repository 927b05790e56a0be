"""`python -m server.credential_tool [--token-file F] worker ID | peer | operator`: print the
credential of one role, derived from the cluster secret (for a worker started by hand, or for
calling GET /internal/status as the operator)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.credentials import Role, derive
from common.settings import SettingsError, read_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.credential_tool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--token-file", type=Path, default=Path(".run/cluster.token"), help="the cluster secret")
    parser.add_argument("role", choices=[r.value for r in Role])
    parser.add_argument("worker_id", nargs="?", default="", help="for role worker: the worker's id")
    args = parser.parse_args(argv)
    role = Role(args.role)
    if (role is Role.WORKER) != bool(args.worker_id):
        parser.error("give a worker id for role worker, and only for it")
    try:
        secret = read_token(args.token_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(derive(secret, role, args.worker_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
