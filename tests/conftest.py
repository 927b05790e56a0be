"""Fixtures shared by the tiers. tests/unit/ is the fast tier (no subprocess, no network but
loopback); everything else starts real processes and is marked `slow` here, so
`pytest -m "not slow"` runs the unit tier alone."""

import socket
from pathlib import Path

import pytest

from tests.cluster import Cluster

UNIT_DIR = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT_DIR not in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(**server_settings) -> a started Cluster of two peer servers."""
    made: list[Cluster] = []

    def make(**settings) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", **settings)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def cluster(make_cluster):
    """Two peer servers without autoscaling; tests start the workers they need."""
    return make_cluster(launcher="none")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One cluster for a module's read-only checks (bad input, auth): they change nothing visible."""
    cluster = Cluster(tmp_path_factory.mktemp("shared"), launcher="none").start()
    yield cluster
    cluster.close()


@pytest.fixture
def silent_url():
    """A server that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
