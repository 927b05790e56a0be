"""common.settings in-process: flag > environment > TOML file > default, types, errors, the token."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import pytest

from common.settings import SettingsError, build_parser, load, option, read_token
from server.config import ServerSettings
from server.config import load_settings as load_server
from worker.config import WorkerSettings
from worker.config import load_settings as load_worker

URL = "http://127.0.0.1:8001"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def load_error(capsys, argv, environ=None, loader=load_worker) -> str:
    """The message of a refused configuration (argparse exits 2 and prints to stderr)."""
    with pytest.raises(SystemExit) as info:
        loader(argv, environ or {})
    assert info.value.code == 2
    return capsys.readouterr().err


def test_defaults_come_from_the_fields():
    settings = load_worker(["--server", URL, "--worker-id", "w1"], {})
    assert settings == WorkerSettings(server=[URL], worker_id="w1")
    # a worker holds its own credential now, not the cluster secret (issue 9)
    assert settings.idle_exit_s == 60.0 and settings.token_file == Path(".run/worker.token")
    assert settings.identity == "w1"


def test_precedence_flag_then_environment_then_file_then_default(tmp_path):
    config = write_config(
        tmp_path, 'threads = 3\nidle_exit_s = 7.5\nlog_level = "DEBUG"\nserver = ["http://f"]\nworker_id = "w1"\n'
    )
    env = {"DYNWORK_WORKER_THREADS": "2", "DYNWORK_WORKER_IDLE_EXIT_S": "9"}
    settings = load_worker(["--config", str(config), "--threads", "1"], env)
    assert settings.threads == 1  # flag over environment and file
    assert settings.idle_exit_s == 9.0  # environment over file
    assert settings.log_level == "DEBUG"  # file over default
    assert settings.servers == ["http://f"]
    assert settings.batch_s == 0.25  # default
    from_env_file = load_worker([], {"DYNWORK_WORKER_CONFIG": str(config)})
    assert from_env_file.threads == 3  # the config file may itself come from the environment


def test_list_options_from_flags_environment_and_file(tmp_path):
    argv = ["--server", "http://a/", "--server", "http://b", "--worker-id", "w1"]
    assert load_worker(argv, {}).servers == ["http://a", "http://b"]
    env = {"DYNWORK_WORKER_SERVER": "http://a, http://b,", "DYNWORK_WORKER_WORKER_ID": "w1"}
    assert load_worker([], env).server == ["http://a", "http://b"]
    config = write_config(tmp_path, 'server = ["http://c"]\nworker_id = "w1"\n')
    flagged = load_worker(["--config", str(config), "--server", "http://d"], {})
    assert flagged.server == ["http://d"]  # a flag replaces the file's list, it does not extend it


@pytest.mark.parametrize(
    ("argv", "env", "toml", "expected"),
    [
        ([], {}, "", False),
        (["--daemon"], {}, "", True),
        (["--no-daemon"], {"DYNWORK_DAEMON": "yes"}, "", False),
        ([], {"DYNWORK_DAEMON": "on"}, "daemon = false\n", True),
        ([], {"DYNWORK_DAEMON": "0"}, "", False),
        ([], {}, "daemon = true\n", True),
    ],
)
def test_boolean_options(tmp_path, argv, env, toml, expected):
    config = write_config(tmp_path, toml)
    assert load_server(["--config", str(config), *argv], env).daemon is expected


def test_path_options():
    assert load_server(["--state-dir", "x/y"], {}).state_dir == Path("x/y")
    assert load_server([], {"DYNWORK_TOKEN_FILE": "/etc/t"}).token_file == Path("/etc/t")


def test_optional_path_options(tmp_path):
    settings = load_server(["--pid-file", str(tmp_path / "p.pid"), "--log-file", "s.log"], {})
    assert settings.pid_file == tmp_path / "p.pid" and settings.log_file == Path("s.log")
    assert load_server([], {"DYNWORK_PID_FILE": ""}).pid_file is None


@dataclasses.dataclass(frozen=True)
class Sample:
    limit: Optional[int] = option(None, "an Optional[...] option")  # noqa: UP045 - the spelling under test
    ratio: float | None = option(None, "an `X | None` option")


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, Sample()),
        (["--limit", "3", "--ratio", "0.5"], {}, Sample(3, 0.5)),
        ([], {"S_LIMIT": "4", "S_RATIO": "2"}, Sample(4, 2.0)),
        (["--limit", ""], {"S_RATIO": ""}, Sample()),  # empty: not set
    ],
)
def test_optional_options_in_both_spellings(argv, env, expected):
    assert load(Sample, argv, prog="p", description="d", env_prefix="S_", environ=env) == expected


def test_dashes_in_config_keys_and_flag_aliases(tmp_path):
    config = write_config(tmp_path, "max-workers = 7\n")
    assert load_server(["--config", str(config)], {}).max_workers == 7
    assert load_server(["--worker-boot-timeout", "12"], {}).worker_boot_timeout_s == 12.0


def test_unknown_config_keys_are_refused(tmp_path, capsys):
    config = write_config(tmp_path, "threads = 1\nthreds = 2\n")
    assert "unknown keys in config file" in load_error(capsys, ["--config", str(config)])


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--server", URL, "--threads", "many"], {}, "flag: bad value 'many' for threads"),
        (["--server", URL], {"DYNWORK_WORKER_IDLE_EXIT_S": "soon"}, "environment DYNWORK_WORKER_IDLE_EXIT_S"),
        (["--server", URL, "--threads", "-1"], {}, "threads and idle_exit_s must be >= 0"),
        (["--server", URL], {}, "give --worker-id"),
        (["--server", URL], {"DYNWORK_WORKER_WORKER_ID": ""}, "give --worker-id"),
        ([], {}, "give one or two --server URLs"),
        (["--server", "a", "--server", "b", "--server", "c"], {}, "give one or two --server URLs"),
    ],
)
def test_bad_worker_values_give_a_clear_error(capsys, argv, env, message):
    assert message in load_error(capsys, argv, env)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"DYNWORK_DAEMON": "maybe"}, "not a boolean: 'maybe'"),
        (["--port", "70000"], {}, "port must be 1..65535"),
        (["--launcher", "cloud"], {}, "launcher must be one of"),
        (["--min-workers", "3", "--max-workers", "2"], {}, "min_workers <= max_workers"),
        (["--launcher", "ec2"], {}, "needs --launch-template"),
        (["--sqlite-synchronous", "off"], {}, "sqlite_synchronous must be"),
    ],
)
def test_bad_server_values_give_a_clear_error(capsys, argv, env, message):
    assert message in load_error(capsys, argv, env, loader=load_server)


def test_bad_config_values_and_files(tmp_path, capsys):
    config = write_config(tmp_path, "port = 1.5\n")
    assert "bad value 1.5 for port" in load_error(capsys, ["--config", str(config)], loader=load_server)
    broken = write_config(tmp_path, "port = \n")
    assert "cannot read config file" in load_error(capsys, ["--config", str(broken)], loader=load_server)
    missing = str(tmp_path / "missing.toml")
    assert "cannot read config file" in load_error(capsys, ["--config", missing], loader=load_server)


def test_help_names_every_environment_variable():
    text = " ".join(build_parser(WorkerSettings, "worker", "d", "DYNWORK_WORKER_").format_help().split())
    for name in ("THREADS", "IDLE_EXIT_S", "SERVER", "TOKEN_FILE", "WORKER_ID"):
        assert f"env DYNWORK_WORKER_{name}" in text
    assert "precedence: flag, environment, config file, default" in text


def test_server_settings_derive_name_and_url():
    settings = ServerSettings(port=8123, public_url="http://example:9/")
    assert settings.server_name == "s8123" and settings.url == "http://example:9"
    assert ServerSettings(host="10.0.0.1", port=80, name="a").url == "http://10.0.0.1:80"


def make_token(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_read_token_strips_an_owner_only_file(tmp_path):
    assert read_token(make_token(tmp_path, "  0123456789abcdef\n", 0o600)) == "0123456789abcdef"
    assert read_token(make_token(tmp_path, "0123456789abcdef", 0o400)) == "0123456789abcdef"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_read_token_refuses_a_file_others_can_read(tmp_path, mode):
    with pytest.raises(SettingsError, match="chmod 600"):
        read_token(make_token(tmp_path, "0123456789abcdef", mode))


def test_read_token_refuses_short_and_missing_tokens(tmp_path):
    with pytest.raises(SettingsError, match="at least 16 characters"):
        read_token(make_token(tmp_path, "short\n", 0o600))
    with pytest.raises(SettingsError, match="at least 16 characters"):
        read_token(make_token(tmp_path, "   \n", 0o600))
    with pytest.raises(SettingsError, match="cannot read token file"):
        read_token(tmp_path / "nowhere")
