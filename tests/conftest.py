"""Shared fixtures: a real LMDB store in a temp dir with the demo plans loaded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import CONFIG_DIR, require_tool

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.provisioning import op_load_plans
from ocs.rating.plans import load_plans_file
from ocs.store import Store
from ocs.store.cluster import ClusterStore
from sim.rediscluster import RedisCluster, redis_cluster


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", map_size_mb=64)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def demo_store(store: Store) -> Store:
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    return store


@pytest.fixture
def engine(demo_store: Store) -> ChargingEngine:
    return ChargingEngine(
        demo_store, None, EngineSettings(node="t1", home_networks=frozenset({"22801"}))
    )


@pytest.fixture(params=["lmdb", "redis"])
def engine_on_both(request: pytest.FixtureRequest, demo_store: Store) -> ChargingEngine:
    """The engine on each store adapter in turn: the LMDB store, then an empty store on
    the shared Redis Cluster; the demo plans loaded in either."""
    settings = EngineSettings(node="t1", home_networks=frozenset({"22801"}))
    if request.param == "lmdb":
        return ChargingEngine(demo_store, None, settings)
    store: ClusterStore = request.getfixturevalue("cluster_store")
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    return ChargingEngine(store, None, settings)


@pytest.fixture
def repo_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a copy of config/, as a user's checkout would."""
    shutil.copytree(CONFIG_DIR, tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def redis_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster (3 primaries, 3 replicas) on loopback, shared by the session's
    tests that leave it whole (a test that kills nodes starts its own)."""
    with redis_cluster(tmp_path_factory.mktemp("redis"), require_tool("redis-server"),
                       require_tool("redis-cli")) as cluster:
        yield cluster


@pytest.fixture
def cluster_store(redis_nodes: RedisCluster) -> Iterator[ClusterStore]:
    """An empty store on the shared cluster (WAIT allows 2 s: a loaded CI machine)."""
    redis_nodes.flush()
    s = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        yield s
    finally:
        s.close()
