"""Work ids: `<server name>.<seq>.<nonce>`. The name says which server owns the job; the nonce
makes an id from a wiped state dir unguessable as a live one. One formatter, one parser."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import threading

NAME_RE = re.compile(r"[a-z0-9]{1,32}")
NONCE_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols without look-alikes: 5 bits each
NONCE_LENGTH = 6
MAX_SEQ = 2**63 - 1  # SQLite's integer range: a larger seq names no job
_ID_RE = re.compile(r"([a-z0-9]{1,32})\.([1-9][0-9]{0,18})\.([a-z0-9]{6})")


class RandomPool:
    """os.urandom bytes handed out from a buffer refilled a page at a time. One getrandom call per
    job let the event loop's thread give up the GIL to the store writer on every enqueue; the
    bytes are the same kernel randomness. A forked child starts with an empty buffer."""

    def __init__(self, refill: int = 4096) -> None:
        self._refill = refill
        self._buffer = b""
        self._pos = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buffer, self._pos = b"", 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if len(self._buffer) - self._pos < n:
                self._buffer, self._pos = os.urandom(max(n, self._refill)), 0
            start = self._pos
            self._pos += n
        return self._buffer[start : start + n]


RANDOM = RandomPool()


def new_nonce() -> str:
    return "".join(NONCE_ALPHABET[b & 31] for b in RANDOM.take(NONCE_LENGTH))


def new_token(nbytes: int) -> str:
    """What secrets.token_urlsafe(nbytes) gives, from the pool."""
    return base64.urlsafe_b64encode(RANDOM.take(nbytes)).rstrip(b"=").decode("ascii")


@dataclasses.dataclass(frozen=True)
class WorkId:
    server: str
    seq: int
    nonce: str

    def __str__(self) -> str:
        return f"{self.server}.{self.seq}.{self.nonce}"

    @classmethod
    def parse(cls, text: str) -> WorkId | None:
        """The id in `text`, which must be exactly an id (no surrounding text, no newline)."""
        match = _ID_RE.fullmatch(text)
        if match is None:
            return None
        seq = int(match.group(2))
        if seq > MAX_SEQ:
            return None
        return cls(match.group(1), seq, match.group(3))
