"""A real Redis Cluster on loopback for the tests and the ``cluster`` bench part: Debian's
redis-server, three primaries and three replicas, AOF with ``appendfsync always``; every
process started here and stopped here by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def _free_ports(n: int) -> list[int]:
    """``n`` free TCP ports whose cluster bus ports (+10000) are free too."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in out:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        out.append(port)
    return out


@dataclass
class RedisCluster:
    root: Path
    ports: list[int]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    cli: str = "redis-cli"
    server: str = "redis-server"

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def start_node(self, port: int) -> None:
        d = self.root / str(port)
        d.mkdir(parents=True, exist_ok=True)
        log = (d / "log").open("ab")
        self.procs[port] = subprocess.Popen(
            [self.server, "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--dir", str(d),
             "--repl-diskless-sync-delay", "0",
             "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.call(port, "PING") == "PONG":
                return
            if self.procs[port].poll() is not None:
                raise RuntimeError(f"redis-server :{port} exited: {(d / 'log').read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server :{port} did not answer")

    def call(self, port: int, *args: str) -> str:
        r = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True,
                           text=True, timeout=10, check=False)
        return r.stdout.strip()

    def info(self, port: int, section: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.call(port, "INFO", section).splitlines():
            k, sep, v = line.partition(":")
            if sep:
                out[k] = v.strip()
        return out

    def primaries(self) -> list[int]:
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None
                and self.info(p, "replication").get("role") == "master"]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is up and three primaries serve."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [p for p in self.ports if self.procs[p].poll() is None]
            if all("cluster_state:ok" in self.call(p, "CLUSTER", "INFO") for p in live) \
                    and len(self.primaries()) == 3:
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not come up")

    def create(self) -> None:
        for p in self.ports:
            self.start_node(p)
        r = subprocess.run([self.cli, "--cluster", "create", *self.nodes,
                            "--cluster-replicas", "1", "--cluster-yes"],
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout}{r.stderr}")
        self.wait_ok()
        self.wait_replicas()

    def wait_replicas(self, timeout: float = 30.0) -> None:
        """Until every primary has a replica online (WAIT can be answered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [p for p in self.ports if self.procs[p].poll() is None]
            if all("state=online" in self.info(p, "replication").get("slave0", "")
                   for p in self.primaries()) and all(
                    self.info(p, "persistence").get(k) == "0" for p in live
                    for k in ("loading", "aof_rewrite_in_progress",
                              "aof_rewrite_scheduled")) and self._acknowledged():
                return
            time.sleep(0.1)
        raise RuntimeError("redis replicas did not attach")

    def _acknowledged(self) -> bool:
        """A write to each primary is acknowledged by its replica (WAIT 1): the first
        writes of a test do not meet a replica still settling after its sync."""
        from ocs.store.cluster import slot_tags

        for port in self.primaries():
            mine = next((ln for ln in self.call(port, "CLUSTER", "NODES").splitlines()
                         if "myself" in ln), "")
            first = next((f for f in mine.split()[8:] if f[0].isdigit()), "")
            if not first:
                return False
            key = "{" + slot_tags()[int(first.split("-")[0])].decode() + "}:probe"
            r = subprocess.run([self.cli, "-p", str(port)], input=f"SET {key} 1\nWAIT 1 5000\n",
                               capture_output=True, text=True, timeout=30, check=False)
            if r.stdout.split()[-1:] != ["1"]:
                return False
            self.call(port, "DEL", key)
        return True

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[port]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)

    def flush(self) -> None:
        """Empty every primary (between tests); functions stay loaded."""
        for p in self.primaries():
            self.call(p, "FLUSHALL", "SYNC")

    def stop(self) -> None:
        for port in list(self.procs):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(port, signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(port, signal.SIGKILL)


def tools() -> tuple[str, str] | None:
    """Paths of redis-server and redis-cli, or None when they are not installed."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


@contextlib.contextmanager
def redis_cluster(root: Path, server: str = "redis-server",
                  cli: str = "redis-cli") -> Iterator[RedisCluster]:
    cluster = RedisCluster(root, _free_ports(6), cli=cli, server=server)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()
