"""`dynwork` argument parsing: servers from flags, environment or defaults; bad usage exits 2;
the HTTP layer's errors map onto the documented exit codes."""

from __future__ import annotations

import pytest

from client import cli
from client.options import DEFAULT_SERVERS, UsageError, resolve_servers
from common.http import HttpError, NotFound, Refused, Unauthorized, Unavailable


def test_servers_from_flags_then_environment_then_defaults():
    env = {"DYNWORK_SERVERS": "http://h1:1, h2:2/,,"}
    assert resolve_servers(["http://f:9", "f:9"], env) == ("http://f:9",)
    assert resolve_servers(None, env) == ("http://h1:1", "http://h2:2")
    assert resolve_servers(None, {}) == DEFAULT_SERVERS
    assert resolve_servers(None, {"DYNWORK_SERVERS": " "}) == DEFAULT_SERVERS
    for bad in ("ftp://x:1", "http://", "http://x:1/path", "http://x:1?q"):
        with pytest.raises(UsageError):
            resolve_servers([bad], {})


def test_bad_server_url_is_a_usage_error(capsys):
    assert cli.main(["--server", "ftp://x", "status"], environ={}) == cli.EXIT_USAGE
    assert "bad server URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["pull", "--top", "0"], ["pull", "--top", "1001"], ["pull", "--top", "x"], ["enqueue", "f"],
        ["enqueue", "--iterations", "0", "f"], ["wait"], ["bench", "--jobs", "0"], ["bench", "--body-bytes", "-1"],
        ["wait", "x", "--timeout", "nan"], ["frobnicate"], [],
    ],
)  # fmt: skip
def test_bad_arguments_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv, environ={})
    assert exc.value.code == 2
    assert "usage: dynwork" in capsys.readouterr().err


def test_global_options_go_before_or_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["--server", "a:1", "status"]).server == ["a:1"]
    assert parser.parse_args(["status", "--server", "a:1", "--server", "b:2"]).server == ["a:1", "b:2"]
    assert not hasattr(parser.parse_args(["status"]), "server")


def test_http_errors_map_onto_the_documented_exit_codes():
    assert cli.exit_code(NotFound("x")) == cli.EXIT_NOT_FOUND == 4
    assert cli.exit_code(Refused("x")) == cli.exit_code(Unauthorized("x")) == cli.EXIT_USAGE == 2
    assert cli.exit_code(UsageError("x")) == cli.EXIT_USAGE
    assert cli.exit_code(Unavailable("x")) == cli.exit_code(Unavailable("x", not_done=True)) == cli.EXIT_UNAVAILABLE
    assert cli.exit_code(HttpError("x")) == cli.EXIT_FAILED == 1


def test_unreadable_inputs_are_refused_before_anything_is_sent(tmp_path):
    (tmp_path / "ok").write_bytes(b"x")
    cli.check_inputs([str(tmp_path / "ok"), "-"])
    for paths, reason in (
        ([str(tmp_path / "ok"), str(tmp_path / "missing")], "missing: no such file"),
        ([str(tmp_path)], "a directory"),
        (["-", "-"], "only once"),
    ):
        with pytest.raises(UsageError, match=reason):
            cli.check_inputs(paths)
