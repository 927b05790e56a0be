"""Settings objects that cannot drift from their command line.

A settings class is a frozen dataclass whose fields carry their help text. `load` builds the
argparse parser from the fields, so every option is a flag, an environment variable with a
derived name, and a key of an optional TOML config file. Precedence: flag, then environment,
then config file, then the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def option(default: Any, help: str, *, metavar: str | None = None, aliases: Sequence[str] = ()) -> Any:
    """A settings field: its default, the help line `--help` shows, and extra flag spellings."""
    metadata = {"help": help, "metavar": metavar, "aliases": tuple(aliases)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(prefix: str, name: str) -> str:
    return prefix + name.upper()


def _converter(annotation: Any) -> tuple[Callable[[str], Any], bool]:
    """(parse one string, is it a list) for a field's type annotation."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return _converter(inner)[0], True
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        parse, is_list = _converter(inner[0])
        return (lambda s: None if s == "" else parse(s)), is_list
    if annotation is bool:
        return _parse_bool, False
    if annotation is Path:
        return Path, False
    return annotation, False


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"not a boolean: {text!r}")


def _coerce(name: str, raw: Any, parse: Callable[[str], Any], is_list: bool, source: str) -> Any:
    """One value from a flag, the environment (strings) or the config file (TOML types)."""

    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value).strip()

    try:
        if is_list:
            items = raw if isinstance(raw, list) else [s for s in str(raw).split(",") if s.strip()]
            return [parse(text(item)) for item in items]
        return parse(text(raw))
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{source}: bad value {raw!r} for {name}: {exc}") from None


def build_parser(cls: type[Any], prog: str, description: str, env_prefix: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=(
            f"Every option is also read from the environment as {env_prefix}<OPTION> "
            f"(e.g. {_env_name(env_prefix, 'some_option')}) and from the TOML file given by --config; "
            "precedence: flag, environment, config file, default."
        ),
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML file with settings (keys as option names)")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        _, is_list = _converter(hints[field.name])
        is_flag = hints[field.name] is bool
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        env = _env_name(env_prefix, field.name)
        help_text = f"{field.metadata.get('help', '')} (env {env}; default {default!r})"
        names = [_flag(field.name), *field.metadata.get("aliases", ())]
        if is_flag:
            parser.add_argument(
                *names,
                dest=field.name,
                default=argparse.SUPPRESS,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                *names,
                dest=field.name,
                default=argparse.SUPPRESS,
                action="append" if is_list else "store",
                metavar=field.metadata.get("metavar") or field.name.upper(),
                help=help_text,
            )
    return parser


def load(
    cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    env_prefix: str,
    environ: typing.Mapping[str, str] | None = None,
) -> T:
    """Settings from flags, environment and config file, validated by the class's __post_init__."""
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prog, description, env_prefix)
    given = vars(parser.parse_args(argv))
    config_path = given.pop("config", None) or environ.get(_env_name(env_prefix, "config"))
    from_file: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                from_file = {k.replace("-", "_"): v for k, v in tomllib.load(fh).items()}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"cannot read config file {config_path}: {exc}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(from_file) - known)
    if unknown:
        parser.error(f"unknown keys in config file {config_path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    try:
        for field in dataclasses.fields(cls):
            parse, is_list = _converter(hints[field.name])
            env = _env_name(env_prefix, field.name)
            if field.name in given:
                values[field.name] = _coerce(field.name, given[field.name], parse, is_list, "flag")
            elif env in environ:
                values[field.name] = _coerce(field.name, environ[env], parse, is_list, f"environment {env}")
            elif field.name in from_file:
                values[field.name] = _coerce(field.name, from_file[field.name], parse, is_list, f"config {config_path}")
        return cls(**values)
    except SettingsError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def read_token(path: Path) -> str:
    """The cluster secret from a file that only its owner can read."""
    try:
        mode = path.stat().st_mode & 0o777
        token = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"cannot read token file {path}: {exc}") from None
    if mode & 0o077:
        raise SettingsError(f"token file {path} has mode {mode:o}; it must not be readable by others (chmod 600)")
    if len(token) < 16:
        raise SettingsError(f"token file {path} holds no usable token (at least 16 characters)")
    return token
