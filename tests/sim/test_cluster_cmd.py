"""The ``cluster`` bench part's Redis figures, against the test cluster."""

from __future__ import annotations

from sim.cluster_cmd import commandstats
from sim.rediscluster import RedisCluster


def test_commandstats_counts_what_was_sent(redis_nodes: RedisCluster) -> None:
    port = redis_nodes.primaries()[0]
    redis_nodes.call(port, "CONFIG", "RESETSTAT")
    for _ in range(3):
        redis_nodes.call(port, "PING")
    stats = commandstats(redis_nodes.cli, [port])
    calls, usec = stats["ping"]
    assert calls == 3 and usec >= 0
