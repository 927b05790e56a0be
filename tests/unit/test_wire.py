"""common.wire: the lease framing (length, JSON header, raw bodies) and its malformed shapes."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.wire import JOIN_BELOW, JOINED_MAX, ProtocolError, pack_lease, unpack_lease


def frame(header: object, bodies: bytes = b"", *, head: bytes | None = None) -> bytes:
    raw = json.dumps(header).encode() if head is None else head
    return struct.pack(">I", len(raw)) + raw + bodies


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)


@given(
    bodies=st.lists(st.binary(max_size=300), max_size=8),
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "jobs"), json_scalars, max_size=3),
    lease_s=st.floats(min_value=0.001, max_value=1e6),
)
def test_pack_unpack_round_trip(bodies, extra, lease_s):
    header = {
        **extra,
        "lease_s": lease_s,
        "jobs": [{"work_id": f"s1.{i + 1}.abcdef", "iterations": i + 1, "size": len(b)} for i, b in enumerate(bodies)],
    }
    chunks = pack_lease(header, bodies)
    assert len(chunks) == 1  # small bodies travel in one write with the header
    assert unpack_lease(b"".join(chunks)) == (header, bodies)


def test_small_pieces_are_joined_up_to_the_limit_and_bigger_bodies_go_alone_uncopied():
    sizes = [10, JOIN_BELOW, 5, JOIN_BELOW - 1, 200, 7] + [JOIN_BELOW - 1] * 5 + [3]
    bodies = [bytes([i]) * n for i, n in enumerate(sizes)]
    header = {"jobs": [{"work_id": f"s1.{i + 1}.abcdef", "iterations": 1, "size": n} for i, n in enumerate(sizes)]}
    chunks = pack_lease(header, bodies)
    assert unpack_lease(b"".join(chunks)) == (header, bodies)
    assert chunks[1] is bodies[1]  # a body of JOIN_BELOW goes alone, not copied
    joined = [c for c in chunks if c is not bodies[1]]
    assert all(len(c) <= JOINED_MAX for c in joined)
    # header and 10 | the big one | 5, JOIN_BELOW-1, 200, 7 and two more | the other three and 3
    assert [len(c) for c in chunks[2:]] == [3 * (JOIN_BELOW - 1) + 212, 3 * (JOIN_BELOW - 1) + 3]


def test_zero_jobs_and_empty_bodies():
    assert unpack_lease(b"".join(pack_lease({"jobs": []}, []))) == ({"jobs": []}, [])
    header = {"jobs": [{"size": 0}, {"size": 0}]}
    assert unpack_lease(b"".join(pack_lease(header, [b"", b""]))) == (header, [b"", b""])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "no length"),
        (b"\x00\x00\x01", "short length"),
        (struct.pack(">I", 100) + b'{"jobs": []}', "length beyond the data"),
        (frame(None, head=b"{not json"), "bad JSON"),
        (frame(None, head=b"\xff\xfe"), "not UTF-8"),
        (frame([1, 2]), "header not an object"),
        (frame({"lease_s": 1}), "no jobs"),
        (frame({"jobs": [{}]}), "job without a size"),
        (frame({"jobs": [{"size": "x"}]}, b"x"), "size not a number"),
        (frame({"jobs": [{"size": None}]}), "size null"),
        (frame({"jobs": [5]}), "job not an object"),
        (frame({"jobs": [{"size": 4}]}, b"abc"), "body shorter"),
        (frame({"jobs": [{"size": 2}]}, b"abc"), "body longer"),
        (frame({"jobs": []}, b"x"), "bytes after zero jobs"),
        (frame({"jobs": [{"size": -1}]}), "negative size, short"),
    ],
)
def test_malformed_leases_raise_protocol_error(data, why):
    with pytest.raises(ProtocolError):
        unpack_lease(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame({"jobs": [{"size": -1}, {"size": 1}]}), id="negative-size-reads-the-header"),
        pytest.param(frame({"jobs": [{"size": 2.7}]}, b"ab"), id="fractional-size"),
        pytest.param(frame({"jobs": [{"size": True}]}, b"a"), id="boolean-size"),
        pytest.param(frame({"jobs": {}}), id="jobs-not-a-list"),
    ],
)
def test_ill_typed_sizes_raise_protocol_error(data):
    with pytest.raises(ProtocolError):
        unpack_lease(data)


def test_protocol_error_is_a_value_error_with_a_reason():
    with pytest.raises(ValueError, match="malformed lease response"):
        unpack_lease(b"\x00")
    with pytest.raises(ProtocolError, match="shorter than its header"):
        unpack_lease(frame({"jobs": [{"size": 9}]}, b"abc"))
