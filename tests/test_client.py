"""The Python client against a real 3-node cluster: routing, batches, errors, ring refresh."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

import pytest

from cacheapi.client import (
    AuthenticationError,
    CacheClient,
    InvalidRequest,
    NotAnInteger,
    PermissionDenied,
    Unavailable,
    batch_plan,
)
from tests.cluster import Cluster
from tests.processes import Registry, manage, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("client")
    cluster = Cluster(
        Registry(f"sqlite:///{log_dir / 'registry.sqlite3'}"),
        log_dir,
        3,
        CACHE_FORWARD_TIMEOUT="1",
        CACHE_REPLICAS="1",  # pins primary-only placement; replication: test_replication.py
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


def test_single_keys_go_straight_to_their_owners(cluster, client):
    before = forwards(cluster)
    keys = [f"route-{i}" for i in range(60)]
    for i, key in enumerate(keys):
        client.set(key, i)
    assert [client.get(k) for k in keys] == list(range(60))
    assert client.delete(keys[0]) is True
    assert forwards(cluster) == before
    # And every key sits on its ring primary.
    ring = client.ring
    items = {n.name: cluster.stats(n)["items"] for n in cluster.nodes}
    assert sum(items.values()) >= 59
    assert all(count > 0 for count in items.values())
    assert ring.primary("route-1").name in items


BATCH_OPS = ("get_many", "set_many", "delete_many")
COUNTED = (*BATCH_OPS, *(f"internal_{op}" for op in BATCH_OPS))


def batch_ops(cluster: Cluster, names: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Per node (all, or those named), how many batch calls it served: from clients, and from
    peers (internal_)."""
    out = {}
    for n in cluster.nodes:
        if names is None or n.name in names:
            ops = cluster.stats(n)["ops"]
            # A call served on a client stream counts as the same call (stream_<op>).
            out[n.name] = {op: ops.get(op, 0) + ops.get(f"stream_{op}", 0) for op in COUNTED}
    return out


def served_since(cluster: Cluster, before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The batch calls each node of ``before`` served since, zeros left out."""
    now = batch_ops(cluster, before)
    return {
        name: {op: n - before[name][op] for op, n in ops.items() if n != before[name][op]}
        for name, ops in now.items()
    }


def keys_owned(ring: Any, prefix: str, counts: dict[str, int]) -> list[str]:
    """Keys named ``prefix:<i>``: ``counts[node]`` of them owned by each node."""
    keys: list[str] = []
    left = dict(counts)
    i = 0
    while any(left.values()):
        key = f"{prefix}:{i}"
        owner = ring.primary(key).name
        if left.get(owner, 0) > 0:
            left[owner] -= 1
            keys.append(key)
        i += 1
    return keys


def _batches_go(cluster: Cluster, client: CacheClient, expected: dict[str, dict[str, int]]) -> None:
    """set_many, get_many and delete_many of 60 keys (40 on n2, 10 each on n1 and n3) are
    served as ``expected`` (the set_many calls; the others by the same shape)."""
    keys = keys_owned(client.ring, "most", {"n2": 40, "n1": 10, "n3": 10})
    before = batch_ops(cluster)
    assert client.set_many({k: k.upper() for k in keys}) == 60
    assert served_since(cluster, before) == expected

    before = batch_ops(cluster)
    assert client.get_many([*keys, "most:absent"]) == {k: k.upper() for k in keys}
    assert served_since(cluster, before) == {
        name: {op.replace("set_many", "get_many"): n for op, n in ops.items()}
        for name, ops in expected.items()
    }

    before = batch_ops(cluster)
    assert client.delete_many(keys) == 60
    assert served_since(cluster, before) == {
        name: {op.replace("set_many", "delete_many"): n for op, n in ops.items()}
        for name, ops in expected.items()
    }
    assert client.get_many(keys) == {}

    # A batch on one owner only: that owner, and no peer call at all.
    only_n3 = keys_owned(client.ring, "one", {"n3": 20})
    before = batch_ops(cluster)
    assert client.set_many(dict.fromkeys(only_n3, 1)) == 20
    assert served_since(cluster, before) == {"n1": {}, "n2": {}, "n3": {"set_many": 1}}


def test_a_batch_on_streams_goes_to_every_owner_at_once(cluster, client):
    """On client streams each owner gets its own keys as one frame, all sent before any
    answer is read: no node calls another (no internal_ ops), and no thread per part."""
    expected = {"n1": {"set_many": 1}, "n2": {"set_many": 1}, "n3": {"set_many": 1}}
    _batches_go(cluster, client, expected)


def test_a_batch_over_http_goes_as_one_request_to_the_node_owning_most_of_it(cluster):
    """Over HTTP the other owners are called by that node over the peer protocol (internal_
    ops), never by the client: one HTTP request for the batch instead of one per owner."""
    http = CacheClient(
        [cluster.nodes[0].url], api_key=cluster.registry.api_key, timeout=2, streams=False
    )
    expected = {
        "n2": {"set_many": 1},
        "n1": {"internal_set_many": 1},
        "n3": {"internal_set_many": 1},
    }
    try:
        _batches_go(cluster, http, expected)
    finally:
        http.close()


def test_a_stream_batch_part_whose_node_hangs_goes_to_another_node(tmp_path):
    """A part whose node does not answer goes the general way: to another node, which asks
    the keys' owners itself. Here the one owner is frozen, so its keys are reported failed
    and the other owner's keys are served; nothing waits past the client's timeout twice."""
    cluster = Cluster(
        Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}"),
        tmp_path,
        2,
        CACHE_FORWARD_TIMEOUT="0.5",
        CACHE_REPLICAS="1",
    )
    with cluster:
        c = CacheClient([cluster.nodes[0].url], api_key=cluster.registry.api_key, timeout=1)
        try:
            keys = keys_owned(c.ring, "part", {"n1": 5, "n2": 5})
            assert c.set_many(dict.fromkeys(keys, "v")) == 10
            n2_keys = [k for k in keys if c.ring.primary(k).name == "n2"]
            frozen = cluster.node("n2")
            os.killpg(frozen.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(Unavailable) as info:
                    c.get_many(keys)
            finally:
                os.killpg(frozen.proc.pid, signal.SIGCONT)
            assert sorted(info.value.failed) == sorted(n2_keys)
            assert info.value.found == {k: "v" for k in keys if k not in n2_keys}
            # n1 coordinated the retried part: it called n2 (and timed out) itself.
            assert cluster.stats(cluster.node("n1"))["ops"].get("stream_get_many", 0) == 2
        finally:
            c.close()


def test_batches_of_any_size_are_cut_at_the_nodes_limit(cluster, client):
    items = {f"big:{i}": i for i in range(3000)}
    before = batch_ops(cluster)
    assert client.set_many(items) == 3000
    assert client.get_many(items) == items
    assert client.delete_many(items) == 3000
    assert client.get_many(items) == {}
    served = served_since(cluster, before)
    # At most 1,000 keys a frame: each owner's share cut at the limit.
    shares = client.ring.group_by_owner(items)
    parts = sum(-(-len(share) // 1000) for share in shares.values())
    for op, batches in (("set_many", 1), ("get_many", 2), ("delete_many", 1)):
        assert sum(ops.get(op, 0) for ops in served.values()) == parts * batches, (op, served)
    assert all(not ops.get(f"internal_{op}") for ops in served.values() for op in BATCH_OPS)

    small = CacheClient(
        [cluster.nodes[0].url], api_key=cluster.registry.api_key, timeout=2, max_batch_keys=7
    )
    try:
        keys = [f"small:{i}" for i in range(20)]
        before = batch_ops(cluster)
        assert small.set_many(dict.fromkeys(keys, "v")) == 20
        served = served_since(cluster, before)
        shares = small.ring.group_by_owner(keys)
        assert sum(ops.get("set_many", 0) for ops in served.values()) == sum(
            -(-len(share) // 7) for share in shares.values()
        )
        assert small.get_many(keys) == dict.fromkeys(keys, "v")
        assert small.delete_many(keys) == 20
    finally:
        small.close()


def test_a_client_limit_above_the_nodes_one_is_refused_as_invalid(cluster):
    big = CacheClient(
        [cluster.nodes[0].url], api_key=cluster.registry.api_key, timeout=2, max_batch_keys=5000
    )
    try:
        with pytest.raises(InvalidRequest) as info:  # 1,001 keys of one owner: one frame
            big.get_many(keys_owned(big.ring, "over", {"n1": 1001}))
        assert (info.value.status, info.value.code) == (413, "batch_too_large")
    finally:
        big.close()
    with pytest.raises(ValueError, match="max_batch_keys"):
        CacheClient(["http://127.0.0.1:1"], api_key="x", max_batch_keys=0)


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
    """Serves the ring (itself, with ``status``, or ``ring`` when set) and records every other
    call; ``answers`` maps "METHOD path" to (status, body), and a call without an answer gets
    its connection closed after the request was read, as a node that dies mid-call."""

    def __init__(self, status: str = "up", name: str = "s1") -> None:
        import http.server
        import json
        import threading

        self.calls: list[str] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        self.name = name
        self.ring: list[dict[str, Any]] | None = None
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                call = f"{self.command} {self.path}"
                if self.path == "/api/v1/cluster/ring":
                    node = {"name": name, "url": scripted.url, "weight": 1, "status": status}
                    nodes = scripted.ring or [node]
                    answer: tuple[int, Any] | None = (200, {"version": 1, "nodes": nodes})
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

    def make(status: str = "up", name: str = "s1") -> ScriptedNode:
        made.append(ScriptedNode(status, name))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_call_that_may_have_been_applied_is_not_sent_twice(scripted):
    node = scripted()
    c = CacheClient([node.url], api_key="k", timeout=2, streams=False)
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
    c = CacheClient([node.url], api_key="k", timeout=2, streams=False)
    try:
        with pytest.raises(Unavailable):
            c.delete_many(["a"])
    finally:
        c.close()

    drained = scripted(status="draining")
    c = CacheClient([drained.url], api_key="k", timeout=2, streams=False)
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


def test_a_batch_part_is_retried_on_another_node_only_when_that_is_safe(scripted):
    """Two nodes that both die mid-call: a read or a plain set is asked of the other node
    once; a delete that may have been applied is not sent again."""
    nodes = [scripted(name="s1"), scripted(name="s2")]
    ring = [{"name": n.name, "url": n.url, "weight": 1, "status": "up"} for n in nodes]
    for n in nodes:
        n.ring = ring
    c = CacheClient([nodes[0].url], api_key="k", timeout=2, streams=False)
    keys = [f"k{i}" for i in range(20)]
    try:
        for call, path, sends in (
            (lambda: c.get_many(keys), "POST /api/v1/batch/get", 2),
            (lambda: c.set_many(dict.fromkeys(keys, 1)), "POST /api/v1/batch/set", 2),
            (lambda: c.delete_many(keys), "POST /api/v1/batch/delete", 1),
        ):
            for n in nodes:
                n.calls.clear()
            with pytest.raises(Unavailable) as info:
                call()
            assert info.value.failed == keys  # no node answered: every key failed
            calls = [call for n in nodes for call in n.calls]
            assert calls == [path] * sends
            if sends == 2:  # first the node owning most of the keys, then the other one
                assert [len(n.calls) for n in nodes] == [1, 1]
    finally:
        c.close()


def test_batch_plan_names_the_nodes_the_client_sends_to(scripted):
    """``batch_plan`` (what bench/cluster.py sends as the smart client) is the client's own
    choice: as many parts, each to the node owning most of it."""
    nodes = [scripted(name=f"s{i}") for i in (1, 2, 3)]
    ring = [{"name": n.name, "url": n.url, "weight": 1, "status": "up"} for n in nodes]
    for n in nodes:
        n.ring = ring
        n.answers["POST /api/v1/batch/get"] = (200, {"values": {}, "missing": [], "failed": []})
    keys = [f"k{i}" for i in range(40)]
    for limit in (1000, 7):
        c = CacheClient([nodes[0].url], api_key="k", timeout=2, max_batch_keys=limit, streams=False)
        try:
            for n in nodes:
                n.calls.clear()
            assert c.get_many(keys) == {}
            plan = batch_plan(c.ring, keys, limit)
        finally:
            c.close()
        assert sorted(k for _, part in plan for k in part) == sorted(keys)
        assert len(plan) == -(-len(keys) // limit)
        for node, part in plan:
            counts = c.ring.group_by_owner(part)
            assert len(counts[node.name]) == max(len(g) for g in counts.values())
        assert [len(n.calls) for n in nodes] == [
            sum(node.name == n.name for node, _ in plan) for n in nodes
        ]
