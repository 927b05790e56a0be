"""The docs cannot drift from the code: every setting is in the README, every cited test exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from server.config import ServerSettings
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent


def test_readme_documents_every_setting_and_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make up" in readme and "make test" in readme
    for cls in (ServerSettings, WorkerSettings):
        for field in dataclasses.fields(cls):
            assert f"`--{field.name.replace('_', '-')}`" in readme, field.name


def test_failure_modes_cite_tests_that_exist():
    text = (ROOT / "docs" / "failure-modes.md").read_text()
    cited = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", text)
    cited += [(None, name) for name in re.findall(r"`(test_\w+)`", text)]
    assert len(cited) > 15
    sources: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        sources.setdefault(path.name, []).append(path.read_text())
    for filename, function in cited:
        if filename:
            assert filename in sources, filename
        if function:
            where = sources[filename] if filename else [t for texts in sources.values() for t in texts]
            assert any(f"def {function}(" in s for s in where), function
