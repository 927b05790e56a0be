import pytest

from tests.cluster import Cluster


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
