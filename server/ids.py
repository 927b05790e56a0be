"""Work ids: `<server name>.<seq>.<nonce>`. The name says which server owns the job; the nonce
makes an id from a wiped state dir unguessable as a live one."""
from __future__ import annotations

import re

NAME_RE = re.compile(r"^[a-z0-9]{1,32}$")
_ID_RE = re.compile(r"^([a-z0-9]{1,32})\.([1-9][0-9]{0,18})\.([a-z0-9]{6})$")


def format_id(name: str, seq: int, nonce: str) -> str:
    return f"{name}.{seq}.{nonce}"


def parse_id(work_id: str) -> tuple[str, int, str] | None:
    match = _ID_RE.match(work_id)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), match.group(3)
