"""The test cluster is three real Ray nodes (separate processes), and `cluster:` settings are checked."""

from __future__ import annotations

import pytest

from shoestring.core.cluster import ClusterConfig, cluster_nodes, using_cluster
from shoestring.core.errors import ShoestringError
from shoestring.core.local_cluster import LocalCluster


def test_fixture_is_three_nodes_in_separate_processes(ray_cluster: LocalCluster) -> None:
    assert len({n.proc.pid for n in ray_cluster.nodes}) == 3 and all(n.alive for n in ray_cluster.nodes)
    assert ray_cluster.startup_seconds < 150, f"cluster start-up took {ray_cluster.startup_seconds:.0f} s"
    with using_cluster(ray_cluster.address) as nodes:
        assert [(n.name.split("-")[0], n.cpus, n.is_head) for n in nodes] == [
            ("head", 1.0, True), ("worker", 1.0, False), ("worker", 1.0, False)
        ]  # fmt: skip
        assert {n.name for n in nodes} == {n.name for n in ray_cluster.nodes}
        assert len({n.node_id for n in nodes}) == 3
        assert all(n.memory_bytes == 2 * 2**30 for n in nodes)
    import ray

    assert not ray.is_initialized(), "using_cluster must disconnect the connection it made"


@pytest.mark.parametrize(("address", "ok"), [("local", True), ("auto", True), ("10.0.0.5:6379", True),
                                             ("ray://head:10001", True), ("head", False), ("10.0.0.5:port", False)])  # fmt: skip
def test_cluster_address_forms(address: str, ok: bool) -> None:
    if ok:
        assert ClusterConfig(address=address).enabled == (address != "local")
    else:
        with pytest.raises(ValueError, match="not a cluster address"):
            ClusterConfig(address=address)


def test_unreachable_cluster_is_one_clear_line() -> None:
    pytest.importorskip("ray")
    with pytest.raises(ShoestringError, match=r"cannot reach a Ray cluster at '127\.0\.0\.1:20999'"), \
            using_cluster("127.0.0.1:20999"):  # fmt: skip
        cluster_nodes()
