"""A real 3-node Ray cluster for the cluster tests: a head and two workers, each its own `ray start` process.

One cluster per test session (start-up is the expensive part on 2 cores), on loopback ports
inside 20000-20999 with its own temp folder, so it never meets another Ray on the machine.
The head has 1 CPU and each worker 1 CPU (logical), object stores of 100 MiB. Node deaths are
noticed within a few seconds (health checks every second; three misses = dead) so the
node-kill tests stay short. The cluster stops after the last test of this folder, not at the
end of the session (its ~20 idle processes would otherwise run beside every later test, the
planner's timing checks included), and the run fails if any of its processes is still alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoestring.core.local_cluster import BLOCK, LocalCluster

PORTS = range(20000, 21000, BLOCK)
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
                          "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}  # fmt: skip


_RUNNING: list[LocalCluster] = []
HERE = Path(__file__).parent


def _stop(cluster: LocalCluster) -> None:
    cluster.stop()
    left = cluster.leftover_processes()
    assert not left, f"cluster processes left after teardown: {[p.pid for p in left]}"


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test in this folder, stop the session's cluster (pytest's own session scope
    would keep it until every other folder's tests have run)."""
    if _RUNNING and (nextitem is None or HERE not in Path(nextitem.path).parents):
        _stop(_RUNNING.pop())


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    pytest.importorskip("ray")
    last: Exception | None = None
    for base in PORTS:
        cluster = LocalCluster(port_base=base, head_cpus=1, worker_cpus=[1, 1], object_store_bytes=100 * 2**20,
                               memory_bytes=2 * 2**30, env=FAST_FAILURE_DETECTION)  # fmt: skip
        try:
            cluster.start()
        except Exception as err:  # ports taken by another session's cluster: try the next block
            last = err
            if "are taken" in str(err):
                continue
            raise
        _RUNNING.append(cluster)
        try:
            yield cluster
        finally:
            if _RUNNING:  # the run ended inside this folder (-x, a deselection)
                _stop(_RUNNING.pop())
        return
    raise RuntimeError(f"no free port block for a test cluster in 20000-20999: {last}")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer, saved as an HF folder."""
    from tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden=32, intermediate=64, layers=2)


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset artifact folder of 32 training and 8 validation chats from Python's own docs."""
    import hashlib
    import json
    from pydoc_data.topics import topics

    recs = [{"id": f"doc{i}", "messages": [{"role": "user", "content": f"What does the Python reference say about {k}?"},
                                           {"role": "assistant", "content": " ".join(t.split())[:300]}]}
            for i, (k, t) in enumerate(sorted(topics.items())[:40])]  # fmt: skip
    root = tmp_path_factory.mktemp("chat-ds")
    for name, part in (("train", recs[:32]), ("validation", recs[32:]), ("test", [])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"kind": "dataset", "stage": "curate", "hash": digest,
                                                    "stats": {"kept": 32}}))  # fmt: skip
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every cluster test (each passes in 25-95 s on 2 cores): a Ray call that never
    returns fails its test after 5 minutes instead of holding the whole CI run."""
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.timeout(300))
