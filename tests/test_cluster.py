"""Three real `runnode` processes on one shared registry (file SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from nodes.ring import Ring
from tests.cluster import Cluster, postgres_available, postgres_database
from tests.processes import Registry, wait_for

pytestmark = pytest.mark.integration
SECRET = "integration-test-cluster-secret"
PEER = {"X-Cluster-Secret": SECRET}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cluster(request, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            if not postgres_available():
                pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (user postgres)")
            url = stack.enter_context(postgres_database())
        else:
            url = f"sqlite:///{log_dir / 'registry.sqlite3'}"
        registry = Registry(url, CACHE_SECRET=SECRET)
        yield stack.enter_context(
            Cluster(registry, log_dir, 3, CACHE_FORWARD_TIMEOUT="2", CACHE_REPLICAS="1")
        )


def ring_of(cluster: Cluster) -> Ring:
    return Ring.from_dict(cluster.ring(cluster.nodes[0]))


def local_read(cluster: Cluster, node, key: str):
    """Read the node's own store only: an internal call is never forwarded. The body is the
    stored bytes (JSON text for a JSON value)."""
    return cluster.session.post(
        f"{node.url}/internal/v1/get", json={"key": key}, headers=PEER, timeout=10
    )


def test_all_nodes_share_one_ring(cluster):
    rings = [cluster.ring(n) for n in cluster.nodes]
    assert all(r == rings[0] for r in rings)
    assert [n["name"] for n in rings[0]["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["status"] == "up" for n in rings[0]["nodes"])


def test_a_key_written_through_any_node_reads_back_through_every_node(cluster):
    for writer in cluster.nodes:
        key = f"anywhere-{writer.name}"
        value = {"written_by": writer.name, "n": [1, 2, 3]}
        assert cluster.put(writer, f"/api/v1/keys/{key}", {"value": value}).status_code == 200
        for reader in cluster.nodes:
            r = cluster.get(reader, f"/api/v1/keys/{key}")
            assert r.status_code == 200, (reader.name, r.text)
            assert r.json()["value"] == value


def test_each_key_is_stored_on_its_primary_only(cluster):
    ring = ring_of(cluster)
    keys = [f"placed-{i}" for i in range(30)]
    for i, key in enumerate(keys):
        cluster.put(cluster.nodes[i % 3], f"/api/v1/keys/{key}", {"value": i})
    for key in keys:
        primary = ring.primary(key).name
        holders = [n.name for n in cluster.nodes if local_read(cluster, n, key).status_code == 200]
        assert holders == [primary], key


def test_a_batch_of_1000_keys_is_split_by_owner(cluster):
    ring = ring_of(cluster)
    entry = cluster.nodes[0]
    cluster.post(entry, "/api/v1/flush", {})
    keys = [f"batch-{i}" for i in range(1000)]
    r = cluster.post(
        entry, "/api/v1/batch/set", {"items": [{"key": k, "value": i} for i, k in enumerate(keys)]}
    )
    assert r.json() == {"stored": 1000, "failed": []}
    expected = {name: len(group) for name, group in ring.group_by_owner(keys).items()}
    assert sum(expected.values()) == 1000
    assert all(count > 200 for count in expected.values())
    assert {n.name: cluster.stats(n)["items"] for n in cluster.nodes} == expected

    r = cluster.post(
        cluster.nodes[1], "/api/v1/batch/get", {"keys": [*keys[:999], "batch-missing"]}
    )
    body = r.json()
    assert body["values"] == {k: i for i, k in enumerate(keys[:999])}
    assert body["missing"] == ["batch-missing"]
    assert body["failed"] == []

    r = cluster.post(cluster.nodes[2], "/api/v1/batch/delete", {"keys": keys[:500]})
    assert r.json() == {"deleted": 500, "failed": []}
    assert sum(cluster.stats(n)["items"] for n in cluster.nodes) == 500


def test_a_batch_mixing_local_and_forwarded_values_orjson_cannot_encode(cluster):
    """Values from other owners come back parsed; one that orjson cannot encode (an integer
    beyond 64 bits, nesting deeper than 255) must not turn the whole answer into a 500."""
    ring = ring_of(cluster)
    entry = cluster.nodes[0]
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    keys = {}
    for owner in ("n1", "n2", "n3"):
        found = [
            k for k in (f"wide-{owner}-{i}" for i in range(200)) if ring.primary(k).name == owner
        ]
        keys[owner] = found[:2]
    stored = {}
    for big, nested in keys.values():
        stored[big], stored[nested] = 2**70 + 1, deep
    r = cluster.post(
        entry, "/api/v1/batch/set", {"items": [{"key": k, "value": v} for k, v in stored.items()]}
    )
    assert r.json() == {"stored": 6, "failed": []}
    r = cluster.post(entry, "/api/v1/batch/get", {"keys": [*stored, "wide-missing"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["values"] == stored
    assert body["missing"] == ["wide-missing"]
    assert body["failed"] == []


def test_an_internal_request_is_never_forwarded_again(cluster):
    ring = ring_of(cluster)
    key = next(f"hop-{i}" for i in range(100) if ring.primary(f"hop-{i}").name == "n3")
    entry, owner = cluster.node("n1"), cluster.node("n3")
    assert cluster.put(entry, f"/api/v1/keys/{key}", {"value": "v"}).status_code == 200

    before = {n.name: cluster.stats(n)["forwards"] for n in cluster.nodes}
    # An internal call on a node that does not own the key: served locally (a miss), and
    # the node does not call anyone.
    assert local_read(cluster, entry, key).status_code == 404
    # A hops header from a client pins nothing: the call is forwarded as any other.
    r = cluster.get(entry, f"/api/v1/keys/{key}", headers={"X-Forwarded-Hops": "1"})
    assert r.json()["value"] == "v"
    before["n1"] += 1
    # A client request through n1 is forwarded exactly once, and n3 answers from its store.
    assert cluster.get(entry, f"/api/v1/keys/{key}").json()["value"] == "v"
    after = {n.name: cluster.stats(n)["forwards"] for n in cluster.nodes}
    assert after["n1"] == before["n1"] + 1
    assert after["n2"] == before["n2"]
    assert after["n3"] == before["n3"]
    assert local_read(cluster, owner, key).content == b'"v"'
    # That forward reached n3 as an internal call, which n3 counts as one.
    assert cluster.stats(owner)["ops"]["internal_get"] >= 1


def test_internal_calls_need_the_secret_and_are_served_locally(cluster):
    ring = ring_of(cluster)
    key = next(f"int-{i}" for i in range(100) if ring.primary(f"int-{i}").name == "n3")
    entry = cluster.node("n1")
    assert cluster.put(entry, f"/api/v1/keys/{key}", {"value": 1}).status_code == 200
    url = f"{entry.url}/internal/v1/get"
    # A client's API key is not the cluster secret.
    r = cluster.session.post(url, json={"key": key}, timeout=5)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = cluster.session.post(url, json={"key": key}, headers={"X-Cluster-Secret": "x"}, timeout=5)
    assert r.status_code == 403
    # With the secret: n1's own store only (n3 owns the key), and n1 calls nobody.
    before = cluster.stats(entry)["forwards"]
    r = cluster.session.post(
        url, json={"key": key}, headers={"X-Cluster-Secret": SECRET}, timeout=5
    )
    assert r.status_code == 404
    assert r.headers["X-Cache-Internal"] == "1"
    assert cluster.stats(entry)["forwards"] == before
    owner_url = f"{cluster.node('n3').url}/internal/v1/get"
    r = cluster.session.post(owner_url, json={"key": key}, headers=PEER, timeout=5)
    assert r.status_code == 200
    assert r.content == b"1"


def test_cluster_stats_sum_every_node(cluster):
    per_node = {n.name: cluster.stats(n)["items"] for n in cluster.nodes}
    total = cluster.get(cluster.nodes[0], "/api/v1/stats?scope=cluster").json()
    assert total["items"] == sum(per_node.values())
    assert {name: s["items"] for name, s in total["nodes"].items()} == per_node
    assert total["failed"] == []


def test_registry_changes_reach_every_node_within_3_seconds(cluster):
    version = cluster.ring(cluster.nodes[0])["version"]
    started = time.monotonic()
    cluster.shell(
        "from nodes.models import Node; n = Node.objects.get(name='n2'); n.weight = 3; n.save()"
    )

    def all_see(weight_of_n2: int, status_of_n3: str):
        def check():
            for node in cluster.nodes:
                ring = cluster.ring(node)
                nodes = {n["name"]: n for n in ring["nodes"]}
                if nodes["n2"]["weight"] != weight_of_n2 or nodes["n3"]["status"] != status_of_n3:
                    return False
            return True

        return check

    wait_for(all_see(3, "up"), timeout=3.0)
    assert time.monotonic() - started < 3.5
    assert cluster.ring(cluster.nodes[0])["version"] > version

    started = time.monotonic()
    cluster.shell(
        "from nodes.models import Node; Node.objects.filter(name='n3').set_status('disabled')"
    )
    wait_for(all_see(3, "disabled"), timeout=3.0)
    # With n3 out of the ring, its keys now belong to n1/n2: nothing routes to n3.
    ring = ring_of(cluster)
    assert {ring.primary(f"k{i}").name for i in range(200)} == {"n1", "n2"}

    cluster.shell(
        "from nodes.models import Node; Node.objects.filter(name='n3')"
        ".set_status('up'); n = Node.objects.get(name='n2'); n.weight = 1; n.save()"
    )
    wait_for(all_see(1, "up"), timeout=3.0)


def test_cluster_nodes_endpoint_lists_the_registry(cluster):
    body = cluster.get(cluster.nodes[1], "/api/v1/cluster/nodes").json()
    assert [n["name"] for n in body["nodes"]] == ["n1", "n2", "n3"]
    assert {n["url"] for n in body["nodes"]} == {n.url for n in cluster.nodes}
    assert body["version"] == cluster.ring(cluster.nodes[1])["version"]


@pytest.fixture
def small_cluster(tmp_path):
    cluster = Cluster(
        Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}"),
        tmp_path,
        3,
        CACHE_FORWARD_TIMEOUT="1",
        CACHE_REPLICAS="1",  # pins primary-only placement; replication: test_replication.py
    )
    with cluster:
        yield cluster


def _stored_batch(cluster, prefix: str, count: int = 300) -> list[str]:
    """``count`` keys stored through n1, each holding its own name."""
    keys = [f"{prefix}-{i}" for i in range(count)]
    r = cluster.post(
        cluster.nodes[0], "/api/v1/batch/set", {"items": [{"key": k, "value": k} for k in keys]}
    )
    assert r.json()["stored"] == count
    return keys


def test_a_dead_owner_fails_only_its_keys(small_cluster):
    cluster = small_cluster
    ring = ring_of(cluster)
    keys = _stored_batch(cluster, "d")
    dead = cluster.node("n3")
    dead.kill()
    dead_keys = [k for k in keys if ring.primary(k).name == "n3"]
    assert dead_keys

    started = time.monotonic()
    r = cluster.post(cluster.nodes[0], "/api/v1/batch/get", {"keys": keys})
    elapsed = time.monotonic() - started
    body = r.json()
    assert r.status_code == 200
    assert sorted(body["failed"]) == sorted(dead_keys)
    assert body["values"] == {k: k for k in keys if k not in set(dead_keys)}
    assert body["missing"] == []
    assert elapsed < 1.0 + 2.0  # the per-node timeout plus slack, not a hang

    r = cluster.post(
        cluster.nodes[1], "/api/v1/batch/set", {"items": [{"key": k, "value": 0} for k in keys]}
    )
    assert sorted(r.json()["failed"]) == sorted(dead_keys)
    assert r.json()["stored"] == 300 - len(dead_keys)
    # Cluster stats and flush ask every node at once: the dead one is listed, not waited on
    # one after another, and the live ones still answer.
    started = time.monotonic()
    stats = cluster.get(cluster.nodes[0], "/api/v1/stats?scope=cluster").json()
    assert stats["failed"] == ["n3"]
    assert set(stats["nodes"]) == {"n1", "n2"}
    assert time.monotonic() - started < 1.0 + 2.0
    flushed = cluster.post(cluster.nodes[1], "/api/v1/flush", {}).json()
    assert flushed["failed"] == ["n3"]
    assert sum(cluster.stats(n)["items"] for n in cluster.nodes[:2]) == 0
    # A single key owned by the dead node: 503 with the envelope, not a 500.
    r = cluster.get(cluster.nodes[0], f"/api/v1/keys/{dead_keys[0]}")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"


def test_a_hung_owner_fails_only_its_keys_even_when_read_first(small_cluster):
    """A batch reads its parts one after another; an owner that accepts the call and never
    answers (stopped, not dead) must cost only its own keys, also when it is read before a
    live owner whose answer is waiting meanwhile."""
    cluster = small_cluster
    ring = ring_of(cluster)
    keys = _stored_batch(cluster, "h")
    hung = cluster.node("n2")
    hung_keys = [k for k in keys if ring.primary(k).name == "n2"]
    live_keys = [k for k in keys if ring.primary(k).name == "n3"]
    assert hung_keys
    assert live_keys
    # The hung owner's part goes out (and is read) first: its key leads the batch.
    ordered = [hung_keys[0], *[k for k in keys if k != hung_keys[0]]]
    os.killpg(hung.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = cluster.post(cluster.nodes[0], "/api/v1/batch/get", {"keys": ordered})
        elapsed = time.monotonic() - started
    finally:
        os.killpg(hung.proc.pid, signal.SIGCONT)
    body = r.json()
    assert r.status_code == 200
    assert sorted(body["failed"]) == sorted(hung_keys)
    assert body["values"] == {k: k for k in keys if k not in set(hung_keys)}
    assert body["missing"] == []
    assert 1.0 <= elapsed < 1.0 + 2.0  # waited out the hung owner's timeout, once


def test_a_hung_owner_costs_one_timeout_then_fails_fast_until_it_answers(small_cluster):
    """A stopped owner keeps its connections open, so only a timeout tells. The first read
    waits it out; the next ones fail at once (503) instead of each waiting again, keys of
    other owners are unaffected, and the owner serves again once it answers."""
    cluster = small_cluster
    ring = ring_of(cluster)
    keys = _stored_batch(cluster, "s", 60)
    hung_key = next(k for k in keys if ring.primary(k).name == "n2")
    live_key = next(k for k in keys if ring.primary(k).name == "n3")
    entry, hung = cluster.node("n1"), cluster.node("n2")
    os.killpg(hung.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = cluster.get(entry, f"/api/v1/keys/{hung_key}")
        assert r.status_code == 503
        assert time.monotonic() - started >= 1.0  # FORWARD_TIMEOUT, once
        for _ in range(5):
            started = time.monotonic()
            r = cluster.get(entry, f"/api/v1/keys/{hung_key}")
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "unavailable"
            assert time.monotonic() - started < 0.5  # no second wait
        assert cluster.get(entry, f"/api/v1/keys/{live_key}").json()["value"] == live_key
    finally:
        os.killpg(hung.proc.pid, signal.SIGCONT)
    # After PEER_RETRY_SECONDS one call tries the owner again, and it answers.
    wait_for(lambda: cluster.get(entry, f"/api/v1/keys/{hung_key}").status_code == 200, 10)
