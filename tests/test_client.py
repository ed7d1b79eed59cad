"""The Python client against a real 3-node cluster: routing, batches, errors, ring refresh."""

from __future__ import annotations

from typing import Any

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
    with cluster:
        yield cluster


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


# Failures a real node cannot be made to show on cue: a scripted node in a thread ---------------


class ScriptedNode:
    """Serves the ring (itself, with ``status``) and records every other call; ``answers``
    maps "METHOD path" to (status, body), and a call without an answer gets its connection
    closed after the request was read, as a node that dies mid-call."""

    def __init__(self, status: str = "up") -> None:
        import http.server
        import json
        import threading

        self.calls: list[str] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                call = f"{self.command} {self.path}"
                if self.path == "/api/v1/cluster/ring":
                    node = {"name": "s1", "url": scripted.url, "weight": 1, "status": status}
                    answer: tuple[int, Any] | None = (200, {"version": 1, "nodes": [node]})
                else:
                    scripted.calls.append(call)
                    answer = scripted.answers.get(call)
                if answer is None:
                    self.close_connection = True
                    return
                body = json.dumps(answer[1]).encode()
                self.send_response(answer[0])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made: list[ScriptedNode] = []

    def make(status: str = "up") -> ScriptedNode:
        made.append(ScriptedNode(status))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_call_that_may_have_been_applied_is_not_sent_twice(scripted):
    node = scripted()
    c = CacheClient([node.url], api_key="k", timeout=2)
    try:
        for call in (
            lambda: c.incr("hits"),
            lambda: c.add("lock", 1),
            lambda: c.cas("k", 2, "1-0-s1"),
            lambda: c.delete("k"),
        ):
            node.calls.clear()
            with pytest.raises(Unavailable):
                call()
            assert len(node.calls) == 1, node.calls  # never applied twice
        # A read is safe to repeat: it is retried once.
        node.calls.clear()
        with pytest.raises(Unavailable):
            c.get("k")
        assert node.calls == ["GET /api/v1/keys/k"] * 2
    finally:
        c.close()


def test_batch_failures_and_an_empty_ring_raise(scripted):
    node = scripted()
    node.answers["POST /api/v1/batch/delete"] = (200, {"deleted": 0, "failed": ["a"]})
    c = CacheClient([node.url], api_key="k", timeout=2)
    try:
        with pytest.raises(Unavailable):
            c.delete_many(["a"])
    finally:
        c.close()

    drained = scripted(status="draining")
    c = CacheClient([drained.url], api_key="k", timeout=2)
    try:
        # Nobody owns a key: an error, never a silent {} or 0 (a write that went nowhere).
        with pytest.raises(Unavailable):
            c.set_many({"a": 1})
        with pytest.raises(Unavailable):
            c.get_many(["a"])
        with pytest.raises(Unavailable):
            c.flush()
        assert c.get_many([]) == {}
        assert drained.calls == []
    finally:
        c.close()
