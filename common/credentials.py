"""Credentials derived from the cluster secret, so servers keep no table of them.

Only the servers (and the operator) hold the cluster secret. Every other party gets a credential
good for one role: each worker its own (for the worker endpoints, as that worker id only), the
peer server one of its own, the operator one for the detailed status. A credential is an HMAC of
the role and subject under the secret: it cannot be turned into another role's or another
worker's credential, and it reveals nothing of the secret.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac

PREFIX = "dw1."


class Role(enum.Enum):
    WORKER = "worker"
    PEER = "peer"
    OPERATOR = "operator"


def derive(secret: str, role: Role, subject: str = "") -> str:
    """The credential for `role` (and, for a worker, its id) under the cluster secret."""
    mac = hmac.new(secret.encode(), f"{role.value}\0{subject}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def worker_credential(secret: str, worker_id: str) -> str:
    return derive(secret, Role.WORKER, worker_id)


def matches(given: bytes, expected: str) -> bool:
    """Constant-time comparison of a presented credential (raw header bytes) with the expected one."""
    return hmac.compare_digest(given, expected.encode())
