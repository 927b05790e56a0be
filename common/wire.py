"""The internal wire format shared by server and worker: headers and the lease framing.

A lease response carries raw job bodies without base64: a 4-byte big-endian length, a JSON
header describing the jobs, then the bodies back to back in header order.
"""

from __future__ import annotations

import json
import struct
from typing import Any

LEASE_CONTENT_TYPE = "application/x-dynwork-lease"
WORKER_ID_HEADER = "X-Worker-Id"
_LENGTH = struct.Struct(">I")
JOIN_BELOW = 16 * 1024  # bodies smaller than this travel joined with their neighbours ...
JOINED_MAX = 64 * 1024  # ... in chunks of at most this


class ProtocolError(ValueError):
    """A message that does not follow the internal wire format."""


def pack_lease(header: dict[str, Any], bodies: list[bytes]) -> list[bytes]:
    """Chunks to write, in order. Each chunk costs the server a write call, so bodies under
    JOIN_BELOW are joined with their neighbours (and the header) into chunks of up to JOINED_MAX;
    a bigger body goes alone, uncopied, where a copy would cost more than the call it saves."""
    head = json.dumps(header, separators=(",", ":")).encode()
    chunks: list[bytes] = []
    pending: list[bytes] = [_LENGTH.pack(len(head)), head]
    size = len(pending[0]) + len(head)
    for body in bodies:
        alone = len(body) >= JOIN_BELOW
        if pending and (alone or size + len(body) > JOINED_MAX):
            chunks.append(b"".join(pending))
            pending, size = [], 0
        if alone:
            chunks.append(body)
        else:
            pending.append(body)
            size += len(body)
    if pending:
        chunks.append(b"".join(pending))
    return chunks


def unpack_lease(data: bytes) -> tuple[dict[str, Any], list[memoryview]]:
    """The header and each job's body (sizes from the header's jobs[i]["size"]): views into
    `data`, since a copy of every body cost the worker as much CPU as hashing it."""
    try:
        (head_len,) = _LENGTH.unpack_from(data, 0)
        header = json.loads(data[_LENGTH.size : _LENGTH.size + head_len])
        offset = _LENGTH.size + head_len
        view = memoryview(data)
        bodies = []
        jobs = header["jobs"]
        if not isinstance(jobs, list):
            raise ProtocolError("lease header jobs is not a list")
        for job in jobs:
            size = job["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"bad job size {size!r}")
            end = offset + size
            if end > len(data):
                raise ProtocolError("lease body shorter than its header says")
            bodies.append(view[offset:end])
            offset = end
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed lease response: {exc}") from None
    if offset != len(data):
        raise ProtocolError("lease body longer than its header says")
    return header, bodies
