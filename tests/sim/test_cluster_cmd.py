"""The ``cluster`` bench part's measuring helpers, against the test cluster."""

from __future__ import annotations

import os
import subprocess
import sys

from sim.cluster_cmd import commandstats, cpu, tree
from sim.rediscluster import RedisCluster


def test_commandstats_counts_what_was_sent(redis_nodes: RedisCluster) -> None:
    port = redis_nodes.primaries()[0]
    redis_nodes.call(port, "CONFIG", "RESETSTAT")
    for _ in range(3):
        redis_nodes.call(port, "PING")
    stats = commandstats(redis_nodes.cli, [port])
    calls, usec = stats["ping"]
    assert calls == 3 and usec >= 0


def test_tree_follows_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids = tree(os.getpid())
        assert os.getpid() in pids and child.pid in pids
        assert cpu([os.getpid()]) > 0
    finally:
        child.kill()
        child.wait()
