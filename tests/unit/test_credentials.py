"""common.credentials and server.credential_tool: one credential per role (and per worker id),
derived from the cluster secret, compared in constant time."""

from __future__ import annotations

import hmac
import os

import pytest

from common import credentials
from common.credentials import PREFIX, Role, derive, matches, worker_credential
from server import credential_tool

SECRET = "cluster-secret-0123456789abcdef"


def test_each_role_and_each_worker_gets_its_own_credential():
    made = {
        derive(SECRET, Role.PEER),
        derive(SECRET, Role.OPERATOR),
        derive(SECRET, Role.WORKER, "w1"),
        derive(SECRET, Role.WORKER, "w2"),
        derive(SECRET, Role.WORKER, "w10"),
        derive(SECRET, Role.WORKER, ""),
        derive(SECRET + "x", Role.PEER),  # another cluster
    }
    assert len(made) == 7
    assert all(c.startswith(PREFIX) and SECRET not in c for c in made)
    assert derive(SECRET, Role.WORKER, "w1") == derive(SECRET, Role.WORKER, "w1")  # no table needed
    assert worker_credential(SECRET, "w1") == derive(SECRET, Role.WORKER, "w1")
    # the role and the subject cannot be shuffled into each other
    assert derive(SECRET, Role.PEER) != derive(SECRET, Role.WORKER, "peer")


def test_matches_compares_raw_bytes_in_constant_time(monkeypatch):
    expected = derive(SECRET, Role.WORKER, "w1")
    assert matches(expected.encode(), expected)
    for given in (b"", expected[:-1].encode(), expected.encode() + b"=", expected.upper().encode(), b"\xff\xfe"):
        assert not matches(given, expected)
    compared = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", spy)
    assert not matches(b"dw1.guess", expected)
    assert compared == [(b"dw1.guess", expected.encode())]  # bytes against bytes, never ==


def test_credential_tool_prints_the_credential_of_one_role(tmp_path, capsys):
    token = tmp_path / "cluster.token"
    token.write_text(SECRET + "\n")
    os.chmod(token, 0o600)
    assert credential_tool.main(["--token-file", str(token), "worker", "w7"]) == 0
    assert capsys.readouterr().out.strip() == derive(SECRET, Role.WORKER, "w7")
    assert credential_tool.main(["--token-file", str(token), "peer"]) == 0
    assert capsys.readouterr().out.strip() == derive(SECRET, Role.PEER)
    with pytest.raises(SystemExit):
        credential_tool.main(["--token-file", str(token), "peer", "w7"])  # a worker id only for a worker
    with pytest.raises(SystemExit):
        credential_tool.main(["--token-file", str(token), "worker"])
    os.chmod(token, 0o644)
    assert credential_tool.main(["--token-file", str(token), "peer"]) == 2
