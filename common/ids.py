"""Work ids: `<server name>.<seq>.<nonce>`. The name says which server owns the job; the nonce
makes an id from a wiped state dir unguessable as a live one. One formatter, one parser."""

from __future__ import annotations

import dataclasses
import os
import re

NAME_RE = re.compile(r"[a-z0-9]{1,32}")
NONCE_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols without look-alikes: 5 bits each
NONCE_LENGTH = 6
MAX_SEQ = 2**63 - 1  # SQLite's integer range: a larger seq names no job
_ID_RE = re.compile(r"([a-z0-9]{1,32})\.([1-9][0-9]{0,18})\.([a-z0-9]{6})")


def new_nonce() -> str:
    return "".join(NONCE_ALPHABET[b & 31] for b in os.urandom(NONCE_LENGTH))


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
