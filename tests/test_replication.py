"""Replication, failover, re-replication, joining and draining, on real node processes.

Each test starts its own cluster (nodes are killed, added and drained) on an SQLite registry,
with ``REPLICAS=2`` (the default) unless it says otherwise, and a heartbeat process where the
test needs failures noticed. Copies are counted with each node's own ``items``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cacheapi.client import CacheClient
from nodes.ring import Ring
from tests.cluster import Cluster
from tests.processes import NodeProcess, Registry, running_heartbeat, wait_for

pytestmark = pytest.mark.integration

KEYS = 10_000
SECRET = "replication-tests-secret"
INTERVAL, FAILURES = 0.5, 3  # the heartbeat of these tests: down within 1.5 s (+1 s)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", CACHE_SECRET=SECRET)
    with Cluster(registry, tmp_path, 3, CACHE_FORWARD_TIMEOUT="2") as cluster:
        yield cluster


def client_of(cluster: Cluster, *nodes: NodeProcess) -> CacheClient:
    urls = [n.url for n in nodes or cluster.nodes]
    return CacheClient(urls, api_key=cluster.registry.api_key, timeout=5)


def fill(cluster: Cluster, count: int = KEYS, prefix: str = "k") -> dict[str, int]:
    items = {f"{prefix}:{i}": i for i in range(count)}
    client = client_of(cluster)
    try:
        assert client.set_many(items) == count
    finally:
        client.close()
    return items


def items_on(cluster: Cluster, nodes: list[NodeProcess]) -> dict[str, int]:
    return {n.name: cluster.stats(n)["items"] for n in nodes}


def read_all(cluster: Cluster, via: NodeProcess, expected: dict[str, Any]) -> list[str]:
    """Read every key through ``via`` (a coordinator); the keys that were missing, failed or
    wrong. Batches of 1000, the node's limit."""
    keys = list(expected)
    bad: list[str] = []
    for start in range(0, len(keys), 1000):
        part = keys[start : start + 1000]
        r = cluster.post(via, "/api/v1/batch/get", {"keys": part})
        assert r.status_code == 200, r.text
        found = r.json()["values"]
        bad += [k for k in part if found.get(k) != expected[k]]
    return bad


def status_of(cluster: Cluster, name: str) -> str:
    """The node's status in the registry: read straight from an SQLite registry (a cheap
    query, so polling it times a status change closely), else through ``manage.py shell``."""
    url = cluster.registry.env["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5)) as db:
            row = db.execute("SELECT status FROM nodes_node WHERE name = ?", (name,)).fetchone()
        return row[0]
    out = cluster.shell(
        f"from nodes.models import Node; print(Node.objects.get(name={name!r}).status)"
    )
    return out.split()[-1]  # the shell announces its imports first


class StatusWatch:
    """Polls a node's registry status in a thread and notes when it first reads ``status``."""

    def __init__(self, cluster: Cluster, name: str, status: str) -> None:
        self.seen_at: float | None = None
        self._done = threading.Event()

        def poll() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self._done.is_set():
                if status_of(cluster, name) == status:
                    self.seen_at = time.monotonic()
                    break
                self._done.wait(0.02)
            self._done.set()

        threading.Thread(target=poll, daemon=True).start()

    def wait(self, timeout: float) -> float:
        self._done.wait(timeout)
        self._done.set()
        assert self.seen_at is not None, "the status never changed"
        return self.seen_at


def test_a_killed_node_loses_nothing_is_replaced_and_rejoins(cluster: Cluster, tmp_path: Path):
    n1, n2, n3 = cluster.nodes
    expected = fill(cluster)
    copies = items_on(cluster, cluster.nodes)
    assert sum(copies.values()) == 2 * KEYS, copies  # two copies of every key
    assert all(c > KEYS / 2 for c in copies.values()), copies  # spread over the three

    with running_heartbeat(
        cluster.registry,
        tmp_path / "heartbeat.log",
        f"--interval={INTERVAL}",
        f"--failures={FAILURES}",
        "--timeout=0.5",
    ):
        watch = StatusWatch(cluster, "n3", "down")
        killed = time.monotonic()
        n3.kill()
        # Before the heartbeat noticed: every key is read from its other owner.
        assert read_all(cluster, n1, expected) == []
        detected = watch.wait(timeout=30) - killed
        assert read_all(cluster, n2, expected) == []

        # Re-replication: the survivors copy n3's keys to each other, two copies again.
        wait_for(lambda: sum(items_on(cluster, [n1, n2]).values()) == 2 * KEYS, timeout=60)
        rereplicated = time.monotonic() - killed
        assert items_on(cluster, [n1, n2]) == {"n1": KEYS, "n2": KEYS}

        # Restarted with an empty store: re-added, gets its share, serves, and the others
        # let go of what it owns again.
        n3.start()
        n3.wait_ready()
        wait_for(lambda: sum(items_on(cluster, cluster.nodes).values()) == 2 * KEYS, timeout=60)
        assert items_on(cluster, [n3])["n3"] > KEYS / 2
        assert read_all(cluster, n3, expected) == []
    print(f"\ndetection {detected:.2f}s, re-replication done {rereplicated:.2f}s after the kill")
    assert detected < INTERVAL * FAILURES + 1 + 0.5  # interval x K + 1 s, + slack for CI


def test_writes_acknowledged_while_a_node_dies_are_all_kept(cluster: Cluster, tmp_path: Path):
    n1, n2, n3 = cluster.nodes
    acknowledged: dict[str, int] = {}
    errors: list[int] = []
    stop = threading.Event()

    def writer(via: NodeProcess, prefix: str) -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = cluster.registry.api_key
        i = 0
        while not stop.is_set():
            key = f"{prefix}:{i}"
            try:
                r = session.put(f"{via.url}/api/v1/keys/{key}", json={"value": i}, timeout=10)
            except requests.RequestException:
                r = None
            if r is not None and r.status_code == 200:
                assert r.json()["copies"] >= 1
                acknowledged[key] = i
            elif r is not None and r.status_code != 503:
                errors.append(r.status_code)
            i += 1
        session.close()

    with running_heartbeat(
        cluster.registry, tmp_path / "heartbeat.log", f"--interval={INTERVAL}", "--timeout=0.5"
    ):
        threads = [threading.Thread(target=writer, args=(n, n.name)) for n in (n1, n2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acknowledged) > 300, timeout=30)
        n3.kill()
        wait_for(lambda: status_of(cluster, "n3") == "down", timeout=30, interval=0.1)
        marked = len(acknowledged)
        wait_for(lambda: len(acknowledged) > marked + 300, timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []  # no 5xx but 503 (and there were none of those either: a live owner)
    assert read_all(cluster, n1, acknowledged) == []
    assert read_all(cluster, n2, acknowledged) == []


def test_a_fourth_node_joining_under_load_takes_a_quarter(cluster: Cluster):
    n1 = cluster.nodes[0]
    expected = fill(cluster)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = cluster.registry.api_key
        i = 0
        while not stop.is_set():
            keys = [f"k:{(i * 37 + j) % KEYS}" for j in range(50)]
            r = session.post(f"{n1.url}/api/v1/batch/get", json={"keys": keys}, timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert r.json()["missing"] == [], r.json()["missing"]
                assert r.json()["failed"] == []
            i += 1
        session.close()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        n4 = cluster.add_node("n4")
        wait_for(lambda: sum(items_on(cluster, cluster.nodes).values()) == 2 * KEYS, timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    share = items_on(cluster, [n4])["n4"] / (2 * KEYS)
    print(f"\nn4 received {share:.1%} of the copies")
    assert 0.20 <= share <= 0.30
    assert set(statuses) == {200}
    assert read_all(cluster, n4, expected) == []


def test_drain_from_the_admin_hands_every_key_off_then_disables(cluster: Cluster):
    n1, _, n3 = cluster.nodes
    expected = fill(cluster)
    cluster.shell(
        "from nodes.models import Node; Node.objects.filter(name='n2').set_status('draining')"
    )
    wait_for(lambda: status_of(cluster, "n2") == "disabled", timeout=60, interval=0.1)
    assert items_on(cluster, cluster.nodes) == {"n1": KEYS, "n2": 0, "n3": KEYS}
    assert read_all(cluster, n1, expected) == []
    assert read_all(cluster, n3, expected) == []


def test_sigterm_hands_keys_off_with_no_replica_to_fall_back_on(tmp_path: Path):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    with Cluster(registry, tmp_path, 3, CACHE_REPLICAS="1") as cluster:
        n1, n2, n3 = cluster.nodes
        expected = fill(cluster, 3000)
        before = items_on(cluster, cluster.nodes)
        assert sum(before.values()) == 3000
        assert before["n2"] > 500
        n2.terminate()  # SIGTERM: the graceful stop hands off first
        assert n2.wait_exit(timeout=60) == 0
        assert status_of(cluster, "n2") == "down"  # so that a restart rejoins
        assert sum(items_on(cluster, [n1, n3]).values()) == 3000  # one copy each, all kept
        assert read_all(cluster, n1, expected) == []


def test_a_stale_copy_never_wins_and_a_deleted_key_stays_deleted(cluster: Cluster, tmp_path: Path):
    n1, n2, n3 = cluster.nodes
    client = client_of(cluster)
    try:
        client.set("doomed", "old")
        client.set("kept", "new")
        assert client.delete("doomed") is True
        # An older copy of "kept" and of "doomed" reaches their owners late (a slow push).
        old = "1000-0-n9"
        ring = Ring.from_dict(cluster.ring(n1))
        for key in ("kept", "doomed"):
            for owner in ring.owners(key):
                late = {"items": [{"key": key, "value": "old", "version": old}]}
                node = cluster.node(owner.name)
                r = cluster.post(node, "/sync", late, headers={"X-Cluster-Secret": SECRET})
                assert r.status_code == 200, r.text
                assert r.json() == {"stored": 0, "skipped": 1}
        assert client.get("kept") == "new"
        assert client.get("doomed") is None
        # A ring change moves keys around: the delete holds, the newer value holds.
        with running_heartbeat(
            cluster.registry, tmp_path / "heartbeat.log", f"--interval={INTERVAL}", "--timeout=0.5"
        ):
            n3.kill()
            wait_for(lambda: status_of(cluster, "n3") == "down", timeout=30, interval=0.1)
            # "kept" back to two copies on the survivors; "doomed" nowhere.
            wait_for(lambda: sum(items_on(cluster, [n1, n2]).values()) == 2, timeout=30)
        for via in (n1, n2):
            assert cluster.get(via, "/api/v1/keys/doomed").status_code == 404
            assert cluster.get(via, "/api/v1/keys/kept").json()["value"] == "new"
    finally:
        client.close()
