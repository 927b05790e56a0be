"""Dependencies run one way: common/ and native/ import none of the project's other packages,
worker/, server/ and client/ only those two. Read from the source
(every import statement, lazy ones included), so a violation fails here before anything runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "native", "worker", "server", "client")
ALLOWED = {
    "common": set(),
    "native": set(),
    "worker": {"common", "native"},
    "server": {"common", "native"},  # native: jobs hashed on arrival
    "client": {"common", "native"},
}


def project_imports(path: Path) -> set[str]:
    """The project packages a module imports, wherever in the module the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_lies_below_it(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = project_imports(path) - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}, f"{package}/ may import only {sorted(ALLOWED[package])}"


def test_the_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from server.store import Store\n    import client.cli\n")
    assert project_imports(module) == {"server", "client"}
