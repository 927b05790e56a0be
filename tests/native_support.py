"""Shared helpers for the native tests: the reference chain and the known-answer vectors."""

from __future__ import annotations

import json
import pathlib

from native.reference import chain as reference  # noqa: F401 - re-exported for the tests

VECTORS_PATH = pathlib.Path(__file__).parent / "data" / "sha512_chain.json"

# Lengths around every SHA-512 padding boundary: the 0x80 byte and the 16-byte length must fit
# after the data (len % 128 == 111 fits in one block, 112 needs a second one).
PADDING_BOUNDARIES = sorted(
    {n for k in range(4) for base in (111, 112, 127, 128) for n in (base + 128 * k + d for d in (-1, 0, 1)) if n >= 0}
    | {0, 1, 63, 64, 65}
)


def vector_body(spec: dict) -> bytes:
    kind = spec["kind"]
    if kind == "bytes":
        return bytes.fromhex(spec["hex"])
    if kind == "pattern":
        return bytes(i % 251 for i in range(spec["length"]))
    if kind == "repeat":
        return bytes([spec["byte"]]) * spec["length"]
    raise ValueError(f"unknown body kind {kind!r}")


def load_vectors() -> list[tuple[bytes, int, bytes]]:
    doc = json.loads(VECTORS_PATH.read_text())
    return [(vector_body(v["body"]), v["iterations"], bytes.fromhex(v["result"])) for v in doc["vectors"]]
