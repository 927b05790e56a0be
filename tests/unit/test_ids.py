"""common.ids: work ids `<server>.<seq>.<nonce>`, one formatter, one strict parser, the nonce."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.ids import MAX_SEQ, NONCE_ALPHABET, NONCE_LENGTH, RandomPool, WorkId, new_nonce, new_token


def test_parse_a_valid_id():
    assert WorkId.parse("s8001.42.abc234") == WorkId("s8001", 42, "abc234")
    assert str(WorkId("s8001", 42, "abc234")) == "s8001.42.abc234"
    assert WorkId.parse(f"a.{MAX_SEQ}.zzzzzz") == WorkId("a", MAX_SEQ, "zzzzzz")
    assert WorkId.parse("x" * 32 + ".1.000000") is not None


@pytest.mark.parametrize(
    "text",
    [
        "s8001.42.abc234\n",
        "s8001.42.abc234\r\n",
        " s8001.42.abc234",
        "s8001.42.abc234 ",
        "S8001.42.abc234",
        "s8001.42.ABC234",
        "s8001.042.abc234",
        "s8001.0.abc234",
        "s8001.-1.abc234",
        "s8001.+1.abc234",
        "s8001.12345678901234567890.abc234",  # 20 digits
        f"s8001.{MAX_SEQ + 1}.abc234",  # 19 digits, beyond SQLite's integers
        "s8001.١٢.abc234",  # non-ASCII digits
        "s8001.42.abc23",
        "s8001.42.abc2345",
        "x" * 33 + ".1.abc234",
        ".1.abc234",
        "s_1.1.abc234",
        "s-1.1.abc234",
        "s.1.1.abc234",
        "s8001.42",
        "s8001.42.abc234.x",
        "s8001/42/abc234",
        "",
    ],
)
def test_parse_refuses_anything_but_exactly_an_id(text):
    assert WorkId.parse(text) is None


@given(
    server=st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True),
    seq=st.integers(min_value=1, max_value=MAX_SEQ),
    nonce=st.from_regex(r"[a-z0-9]{6}", fullmatch=True),
)
def test_format_parse_round_trip(server, seq, nonce):
    work_id = WorkId(server, seq, nonce)
    assert WorkId.parse(str(work_id)) == work_id


def test_new_nonce_uses_the_alphabet_and_length():
    nonces = {new_nonce() for _ in range(200)}
    assert len(nonces) > 190  # 30 random bits each: repeats are vanishingly rare
    for nonce in nonces:
        assert len(nonce) == NONCE_LENGTH
        assert set(nonce) <= set(NONCE_ALPHABET)
        assert WorkId.parse(f"s1.1.{nonce}") is not None
    assert len(set(NONCE_ALPHABET)) == 32  # 5 bits a symbol
    assert not re.search(r"[l1o0]", NONCE_ALPHABET)  # no look-alikes
    assert set("".join(nonces)) == set(NONCE_ALPHABET)  # every symbol is reachable


def test_the_random_pool_never_hands_out_the_same_bytes_twice_across_refills():
    pool = RandomPool(refill=64)
    draws = [pool.take(16) for _ in range(40)]  # ten refills of four draws each
    assert all(len(d) == 16 for d in draws)
    assert len(set(draws)) == len(draws)
    assert len(pool.take(100)) == 100  # more than a refill


def test_a_forked_child_draws_other_bytes_than_its_parent():
    pool = RandomPool()
    pool.take(1)  # the buffer is full now: a child would inherit it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, then out without pytest's teardown
        os.write(write, pool.take(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != pool.take(32)


def test_tokens_look_like_secrets_token_urlsafe():
    tokens = {new_token(16) for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", t) for t in tokens)
