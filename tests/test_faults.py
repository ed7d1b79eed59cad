"""Faults beyond a clean kill, on real node processes: a frozen node, broken and stalled links,
a partition the heartbeat does not see, a node restarted empty while listed up, and the
registry going away.

After each: no acknowledged write is lost while a replica lived, no stale value is served once
the fault healed (beyond the ring reload and hint replay, polled with a deadline), and no 5xx
other than 503 reaches a client.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cluster import Cluster, postgres_available, postgres_database
from tests.processes import NodeProcess, Registry, running_heartbeat, wait_for
from tests.proxy import Proxy, proxy_to
from tests.test_replication import SECRET, fill, items_on, read_all, status_of

pytestmark = pytest.mark.integration

KEYS = 2000
HEARTBEAT = ("--interval=0.5", "--failures=3", "--timeout=0.5")


class Writer:
    """Overwrites and deletes keys through one node while a fault lasts; remembers what was
    acknowledged (the latest value of each key, or None once deleted)."""

    def __init__(self, cluster: Cluster, via: NodeProcess, expected: dict[str, Any]) -> None:
        self.cluster = cluster
        self.via = via
        self.expected = expected
        self.bad_statuses: list[int] = []
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = cluster.registry.api_key

    def step(self, i: int) -> None:
        key = f"k:{(i * 7) % KEYS}"
        url = f"{self.via.url}/api/v1/keys/{key}"
        delete = i % 10 == 9
        try:
            if delete:
                r = self.session.delete(url, timeout=10)
            else:
                r = self.session.put(url, json={"value": f"v{i}"}, timeout=10)
        except requests.RequestException:
            r = None
        if r is not None and r.status_code in (200, 204, 404):
            self.expected[key] = None if delete else f"v{i}"
            return
        # Not acknowledged: the write may or may not have landed, so the key is not checked.
        self.expected.pop(key, None)
        if r is not None and r.status_code != 503:
            self.bad_statuses.append(r.status_code)


def stale_keys(cluster: Cluster, via: NodeProcess, expected: dict[str, Any]) -> list[str]:
    """Keys whose value read through ``via`` is not the last acknowledged one."""
    live = {k: v for k, v in expected.items() if v is not None}
    gone = [k for k, v in expected.items() if v is None]
    bad = read_all(cluster, via, live)
    for start in range(0, len(gone), 1000):
        part = gone[start : start + 1000]
        found = cluster.post(via, "/api/v1/batch/get", {"keys": part}).json()["values"]
        bad += [k for k in part if k in found]
    return bad


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", CACHE_SECRET=SECRET)
    with Cluster(registry, tmp_path, 3, CACHE_FORWARD_TIMEOUT="2") as cluster:
        yield cluster


def test_a_node_frozen_for_10_seconds_then_resumed(cluster: Cluster, tmp_path: Path):
    n1, n2, n3 = cluster.nodes
    expected: dict[str, Any] = fill(cluster, KEYS)
    writer = Writer(cluster, n1, expected)
    session = requests.Session()
    session.headers["X-API-Key"] = cluster.registry.api_key
    latencies: list[float] = []
    assert n3.proc is not None
    with running_heartbeat(cluster.registry, tmp_path / "heartbeat.log", *HEARTBEAT):
        os.killpg(n3.proc.pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            i = 0
            while time.monotonic() - frozen_at < 10:  # the fault's length, not a wait
                key = f"k:{(i * 13) % KEYS}"
                started = time.perf_counter()
                r = session.get(f"{n1.url}/api/v1/keys/{key}", timeout=10)
                latencies.append(time.perf_counter() - started)
                want = expected.get(key)
                if want is None:
                    assert r.status_code == 404, (key, r.status_code, r.text)
                else:
                    assert r.status_code == 200, (key, r.status_code, r.text)
                    assert r.json()["value"] == want
                writer.step(i)
                i += 1
            assert status_of(cluster, "n3") == "down"
        finally:
            os.killpg(n3.proc.pid, signal.SIGCONT)
        # It learns it was declared dead, empties its store, pulls its keys, and is up again.
        wait_for(lambda: status_of(cluster, "n3") == "up", timeout=60, interval=0.2)
        wait_for(
            lambda: (
                sum(items_on(cluster, cluster.nodes).values())
                == 2 * sum(1 for v in expected.values() if v is not None)
            ),
            timeout=60,
        )
    assert writer.bad_statuses == []
    for via in (n1, n2, n3):
        assert stale_keys(cluster, via, expected) == []
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    p50 = latencies[len(latencies) // 2]
    print(
        f"\n{len(latencies)} reads while frozen: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert p99 < 1.0  # failover after FAILOVER_TIMEOUT (0.25 s), then fail fast


def _behind_proxy(cluster: Cluster, only: tuple[bytes, ...] = ()) -> tuple[NodeProcess, Proxy]:
    """n3 joins with its registry URL on a proxy: peers and the heartbeat reach it through
    the proxy, the test reaches it directly."""
    n3 = cluster.new_node("n3")
    proxy = Proxy(n3.port, only)
    cluster.start_node(n3, "--url", proxy.url)
    return n3, proxy


@pytest.mark.parametrize(
    ("fault", "mode", "only"),
    [
        ("partition", "stall", (b"POST /internal/",)),  # heartbeat sees n3, peers cannot
        ("stalled link", "stall", ()),
        ("dropped link", "drop", ()),
    ],
)
def test_a_broken_link_to_a_node_then_healed(tmp_path: Path, fault: str, mode: str, only: Any):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", CACHE_SECRET=SECRET)
    with Cluster(registry, tmp_path, 2, CACHE_FORWARD_TIMEOUT="1") as cluster:
        n1, n2 = cluster.nodes
        n3, proxy = _behind_proxy(cluster, only)
        try:
            expected: dict[str, Any] = fill(cluster, KEYS)
            writer = Writer(cluster, n1, expected)
            with running_heartbeat(registry, tmp_path / "heartbeat.log", *HEARTBEAT):
                proxy.set_mode(mode)
                broken_at = time.monotonic()
                i = 0
                while time.monotonic() - broken_at < 5:  # the fault's length
                    writer.step(i)
                    i += 1
                assert stale_keys(cluster, n1, expected) == []  # reads fail over meanwhile
                proxy.set_mode("pass")
                healed_at = time.monotonic()
                if fault == "partition":
                    assert status_of(cluster, "n3") == "up"  # the heartbeat never lost it
                # Every node serves the last acknowledged values again, n3 included.
                wait_for(lambda: stale_keys(cluster, n3, expected) == [], timeout=30, interval=0.2)
                healed = time.monotonic() - healed_at
                for via in (n1, n2):
                    assert stale_keys(cluster, via, expected) == []
        finally:
            proxy.close()
    assert writer.bad_statuses == []
    print(f"\n{fault}: {i} writes during the fault; consistent {healed:.2f}s after healing")


def test_a_node_restarted_empty_while_listed_up(cluster: Cluster):
    n1, n2, n3 = cluster.nodes
    expected = fill(cluster, KEYS)
    assert n3.proc is not None
    children = Path(f"/proc/{n3.proc.pid}/task/{n3.proc.pid}/children").read_text().split()
    [worker] = [int(pid) for pid in children]
    misses: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = cluster.registry.api_key
        i = 0
        while not stop.is_set():
            keys = [f"k:{(i * 50 + j) % KEYS}" for j in range(50)]
            r = session.post(f"{n1.url}/api/v1/batch/get", json={"keys": keys}, timeout=10)
            assert r.status_code == 200, r.text
            misses.extend(r.json()["missing"] + r.json()["failed"])
            i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        os.kill(worker, signal.SIGKILL)  # gunicorn starts a new worker: an empty store
        wait_for(lambda: items_on(cluster, [n3])["n3"] > KEYS / 2, timeout=60)
        wait_for(lambda: status_of(cluster, "n3") == "up", timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert misses == []
    assert sum(items_on(cluster, cluster.nodes).values()) == 2 * KEYS
    for via in (n1, n2, n3):
        assert read_all(cluster, via, expected) == []


def test_the_data_plane_goes_on_while_the_registry_is_away(tmp_path: Path):
    if not postgres_available():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (user postgres)")
    with postgres_database() as url, proxy_to(5432) as db:
        registry = Registry(url.replace(":5432/", f":{db.port}/"), CACHE_SECRET=SECRET)
        with Cluster(registry, tmp_path, 3) as cluster:
            expected = fill(cluster, 500)
            for via in cluster.nodes:  # each node has verified the client's key once
                assert cluster.get(via, "/api/v1/stats").status_code == 200
            db.set_mode("drop")  # every registry connection is reset, new ones refused
            for i, via in enumerate(cluster.nodes):
                items = {f"outage:{i}:{j}": j for j in range(100)}
                for key, value in items.items():
                    r = cluster.put(via, f"/api/v1/keys/{key}", {"value": value})
                    assert r.status_code == 200, r.text
                expected.update(items)
                assert read_all(cluster, via, expected) == []
            db.set_mode("pass")
            # The registry is back: a change made now reaches every node.
            cluster.shell(
                "from nodes.models import Node; n = Node.objects.get(name='n2'); "
                "n.weight = 2; n.save()"
            )
            out = cluster.shell(
                "from nodes.models import RingVersion; print(RingVersion.current())"
            )
            version = int(out.split()[-1])
            for via in cluster.nodes:
                wait_for(lambda via=via: cluster.ring(via)["version"] == version, timeout=30)
            assert read_all(cluster, cluster.nodes[0], expected) == []
