"""Logging for the server and the worker: text lines, or JSON objects one per line.

JSON lines carry `ts`, `level`, `logger` and `msg`, plus the event fields a line was logged with
(`work_id`, `worker`), so an operator can select a job's or a worker's lines with jq or a log
store. Nothing secret is ever passed to a logger: credentials, the cluster secret and job bodies
stay out of every line (tests/test_logs.py checks the logs of a whole run).
"""

from __future__ import annotations

import datetime
import logging

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EVENT_FIELDS = ("work_id", "worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in EVENT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(level: str, fmt: str = "text", *, prefix: str = "") -> None:
    """Configure the root logger once, for a process's whole life."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(prefix + TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
