"""The Python client against a real 3-node cluster: routing, batches, errors, ring refresh."""

from __future__ import annotations

import pytest

from cacheapi.client import (
    AuthenticationError,
    CacheClient,
    InvalidRequest,
    NotAnInteger,
    PermissionDenied,
    Unavailable,
)
from tests.cluster import Cluster
from tests.processes import Registry, manage, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("client")
    cluster = Cluster(
        Registry(f"sqlite:///{log_dir / 'registry.sqlite3'}"), log_dir, 3, CACHE_FORWARD_TIMEOUT="1"
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def client(cluster):
    c = CacheClient([cluster.nodes[0].url], api_key=cluster.registry.api_key, timeout=2)
    yield c
    c.close()


def forwards(cluster: Cluster) -> int:
    return sum(cluster.stats(n)["forwards"] for n in cluster.nodes)


def test_single_key_calls_round_trip_values_exactly(client):
    values = {
        "dict": {"a": 1, "nested": [1, 2.5, None, True, "é"]},
        "big": 2**80,
        "str": "",
        "zero": 0,
        "bytes": bytes(range(256)),
        "reserved": {"b64": "not binary"},
        "wrapped": {"json": [1]},
        "null": None,
    }
    for key, value in values.items():
        client.set(f"c:{key}", value)
    for key, value in values.items():
        assert client.get(f"c:{key}") == value, key
    assert client.get("c:absent") is None
    assert client.get("c:absent", default="d") == "d"


def test_add_cas_touch_incr_delete(client):
    assert client.add("c:add", 1) is True
    assert client.add("c:add", 2) is False
    assert client.get("c:add") == 1

    _, version = client.gets("c:add")
    assert client.cas("c:add", 5, version) is True
    assert client.cas("c:add", 6, version) is False
    assert client.get("c:add") == 5

    assert client.incr("c:add", 10) == 15
    assert client.decr("c:add", 3) == 12
    assert client.incr("c:nothing") is None

    assert client.touch("c:add", 100) is True
    assert 99 < client.get_with_ttl("c:add")[1] <= 100
    assert client.touch("c:nothing", 5) is False

    assert client.delete("c:add") is True
    assert client.delete("c:add") is False


def test_ttl_none_means_forever_and_default_applies_when_omitted(client):
    client.set("c:forever", 1, ttl=None)
    assert client.get_with_ttl("c:forever") == (1, None)
    client.set("c:short", 1, ttl=30)
    assert 29 < client.get_with_ttl("c:short")[1] <= 30


def test_client_routes_straight_to_owners(cluster, client):
    before = forwards(cluster)
    keys = [f"route-{i}" for i in range(60)]
    for i, key in enumerate(keys):
        client.set(key, i)
    assert [client.get(k) for k in keys] == list(range(60))
    assert client.set_many({f"many-{i}": i for i in range(300)}) == 300
    assert client.get_many([f"many-{i}" for i in range(300)] + ["many-x"]) == {
        f"many-{i}": i for i in range(300)
    }
    assert client.delete_many([f"many-{i}" for i in range(100)]) == 100
    assert forwards(cluster) == before
    # And every key sits on its ring primary.
    ring = client.ring
    per_node = {n.name: cluster.stats(n)["items"] for n in cluster.nodes}
    assert all(count > 0 for count in per_node.values())
    assert ring.primary("route-0").name in per_node


def test_typed_errors(cluster, client):
    client.set("c:text", "abc")
    with pytest.raises(NotAnInteger) as info:
        client.incr("c:text")
    assert info.value.status == 409
    assert info.value.code == "not_integer"
    with pytest.raises(InvalidRequest):
        client.set("has space", 1)
    with pytest.raises(InvalidRequest):
        client.set("c:ttl", 1, ttl=-5)
    with pytest.raises(AuthenticationError):
        CacheClient([cluster.nodes[0].url], api_key="nope.nope").get("x")
    read_only = manage(
        cluster.registry.env, "createapikey", "--name", "ro", "--scopes", "read", "--quiet"
    ).strip()
    ro = CacheClient([cluster.nodes[1].url], api_key=read_only)
    assert ro.get("c:text") == "abc"
    with pytest.raises(PermissionDenied):
        ro.set("c:text", "x")
    ro.close()


def test_client_follows_a_ring_change(cluster, client):
    old = client.ring.version
    cluster.shell(
        "from nodes.models import Node; n = Node.objects.get(name='n1'); n.weight = 2; n.save()"
    )
    try:

        def refreshed() -> bool:
            client.set("c:poke", 1)  # any answer carries X-Ring-Version
            return client.ring.version > old

        wait_for(refreshed, timeout=5)
        assert client.ring.node("n1").weight == 2
    finally:
        cluster.shell(
            "from nodes.models import Node; n = Node.objects.get(name='n1'); n.weight = 1; n.save()"
        )


def test_seed_list_may_name_any_node_and_dead_seeds_are_skipped(cluster):
    c = CacheClient(f"http://127.0.0.1:1;{cluster.nodes[2].url}", api_key=cluster.registry.api_key)
    assert [n.name for n in c.ring.nodes] == ["n1", "n2", "n3"]
    c.close()
    with pytest.raises(Unavailable):
        CacheClient(["http://127.0.0.1:1"], api_key="x").get("k")
