"""The Ansible tree is lint-clean: ansible-lint (production profile, offline) and yamllint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    tool = BIN / name
    if not tool.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", NO_COLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    return subprocess.run([str(tool), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_ansible_lint_production_profile_is_clean():
    result = run_tool("ansible-lint", "--offline", "--profile", "production", "--nocolor")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_yamllint_is_clean():
    result = run_tool("yamllint", "--strict", ".")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]


def test_lint_configuration_pins_the_production_profile_offline():
    config = (ROOT / ".ansible-lint").read_text()
    assert "profile: production" in config and "offline: true" in config
