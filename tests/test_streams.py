"""Client streams (``POST /api/v1/stream``, ``Upgrade: cache/1``) against live nodes: every
operation, the REST API's error codes, scopes, revocation on an open stream, oversized and
malformed frames, a client that goes away mid-frame, keys owned by other nodes, and a gthread
node that has no streams."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from cacheapi.api.streams import encode_body
from cacheapi.client import CacheClient
from cacheapi.peer import frames
from tests.cluster import Cluster
from tests.processes import NodeProcess, Registry, manage, running_node, wait_for

pytestmark = pytest.mark.integration

MIB = 2**20


class Stream:
    """A raw client stream: the upgrade, then one frame after another."""

    def __init__(self, port: int, key: str | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        head = ["POST /api/v1/stream HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        if key is not None:
            head.append(f"X-API-Key: {key}")
        head += ["Upgrade: cache/1", "Connection: Upgrade", "Content-Length: 0"]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        status_line = self.reader.readline()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if self.status != 101:
            self.body = self.reader.read(int(self.headers.get("content-length", "0")))

    def send(self, op: str, data: Any = None, raw: bytes = b"") -> None:
        body = encode_body(data if data is not None else {}, raw)
        self.sock.sendall(frames.encode_request(op, body))

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = self.reader.read(frames.ANSWER_HEAD.size)
        if len(head) < frames.ANSWER_HEAD.size:
            raise ConnectionError("the node closed the stream")
        length, status, meta_length = frames.answer_sizes(head)
        meta, body = frames.decode_answer_rest(self.reader.read(length - 4), meta_length)
        return status, meta, body

    def call(self, op: str, data: Any = None, raw: bytes = b"") -> tuple[int, Any]:
        self.send(op, data, raw)
        status, meta, body = self.answer()
        if meta.get("content-type") == "application/json":
            return status, orjson.loads(body)
        return status, (meta, body)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    directory = tmp_path_factory.mktemp("streams")
    return Registry(f"sqlite:///{directory / 'registry.sqlite3'}")


@pytest.fixture(scope="module")
def node(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    log_dir = tmp_path_factory.mktemp("stream-node")
    env = {
        "CACHE_AUTH_CACHE_SECONDS": "1",
        "CACHE_MAX_REQUEST_BYTES": str(2 * MIB),
        "CACHE_STREAM_IDLE_SECONDS": "2",
    }
    with running_node(registry, "s1", log_dir, **env) as proc:
        yield proc


@pytest.fixture
def stream(node: NodeProcess, registry: Registry) -> Iterator[Stream]:
    s = Stream(node.port, registry.api_key)
    assert s.status == 101, s.body
    yield s
    s.close()


def error_code(answer: tuple[int, Any]) -> tuple[int, str]:
    status, body = answer
    return status, body["error"]["code"]


def test_every_operation(stream: Stream) -> None:
    status, written = stream.call("set", {"key": "j", "value": {"a": [1, 2]}, "ttl": 60})
    assert status == 200
    assert written["copies"] == 1
    version = written["version"]
    status, (meta, body) = stream.call("get", {"key": "j"})
    assert (status, orjson.loads(body), meta["x-value-type"]) == (200, {"a": [1, 2]}, "json")
    assert 59 < float(meta["x-ttl"]) <= 60
    assert meta["x-version"] == version
    raw = bytes(range(256)) * 4
    assert stream.call("set", {"key": "b", "binary": True}, raw)[0] == 200
    status, (meta, body) = stream.call("get", {"key": "b"})
    assert (body, meta["x-value-type"], meta["x-ttl"]) == (raw, "binary", "none")
    assert stream.call("has", {"key": "b"})[0] == 200
    assert stream.call("set", {"key": "j", "value": 1, "add": True})[0] == 412
    assert stream.call("set", {"key": "new", "value": 1, "add": True})[0] == 200
    assert stream.call("set", {"key": "j", "value": 2, "if_version": version})[0] == 200
    assert stream.call("set", {"key": "j", "value": 3, "if_version": version})[0] == 412
    assert stream.call("incr", {"key": "new", "delta": 41})[1]["value"] == 42
    assert stream.call("incr", {"key": "new"})[1]["value"] == 43
    assert stream.call("touch", {"key": "new", "ttl": None})[1]["ttl"] is None
    items = [{"key": f"m{i}", "value": i} for i in range(10)]
    items.append({"key": "mb", "value": {"b64": "AA=="}})
    assert stream.call("set_many", {"items": items})[1] == {"stored": 11, "failed": []}
    got = stream.call("get_many", {"keys": ["m1", "mb", "zz"]})[1]
    assert got == {"values": {"m1": 1, "mb": {"b64": "AA=="}}, "missing": ["zz"], "failed": []}
    assert stream.call("delete_many", {"keys": ["m1", "m2", "zz"]})[1]["deleted"] == 2
    assert stream.call("delete", {"key": "new"})[1]["copies"] == 1
    assert stream.call("delete", {"key": "new"})[0] == 404
    assert stream.call("has", {"key": "new"})[0] == 404
    hits = [stream.call("ratelimit", {"key": "rl", "rate": "2/m"})[1] for _ in range(3)]
    assert [h["allowed"] for h in hits] == [True, True, False]


@pytest.mark.parametrize(
    ("op", "data", "raw", "status", "code"),
    [
        ("get", {"key": "missing"}, b"", 404, "not_found"),
        ("get", {"key": "with space"}, b"", 400, "invalid_key"),
        ("get", {"key": "x" * 251}, b"", 400, "invalid_key"),
        ("get", {}, b"", 400, "invalid_key"),
        ("set", {"key": "k"}, b"", 400, "invalid_value"),
        ("set", {"key": "k", "value": 1, "ttl": 0}, b"", 400, "invalid_ttl"),
        ("set", {"key": "k", "value": 1, "ttl": "soon"}, b"", 400, "invalid_ttl"),
        ("set", {"key": "k", "value": 1, "binary": "yes"}, b"", 400, "invalid_value"),
        ("set", {"key": "k", "binary": True, "value": 1}, b"", 400, "invalid_value"),
        ("set", {"key": "k", "binary": True}, b"x" * (MIB + 1), 413, "value_too_large"),
        ("set", {"key": "k", "value": 1}, b"tail", 400, "invalid_request"),
        ("set", {"key": "k", "value": 1, "if_version": "nope"}, b"", 412, "precondition_failed"),
        ("incr", {"key": "missing"}, b"", 404, "not_found"),
        ("incr", {"key": "k", "delta": 2**64}, b"", 400, "invalid_request"),
        ("touch", {"key": "k"}, b"", 400, "invalid_ttl"),
        ("get_many", {"keys": "k"}, b"", 400, "invalid_request"),
        ("get_many", {"keys": [f"k{i}" for i in range(1001)]}, b"", 413, "batch_too_large"),
        ("nope", {}, b"", 404, "unknown_operation"),
    ],
)
def test_errors_are_the_rest_api_s_and_the_stream_goes_on(
    stream: Stream, op: str, data: Any, raw: bytes, status: int, code: str
) -> None:
    answer = stream.call(op, data, raw)
    assert error_code(answer) == (status, code), answer
    assert stream.call("set", {"key": "after", "value": 1})[0] == 200


def test_an_integer_that_is_not_one_is_409(stream: Stream) -> None:
    stream.call("set", {"key": "text", "value": "abc"})
    assert error_code(stream.call("incr", {"key": "text"})) == (409, "not_integer")


def test_malformed_frames_get_400_and_the_stream_goes_on(stream: Stream) -> None:
    stream.sock.sendall(frames.LENGTH.pack(3) + b"\x09ab")  # operation longer than the frame
    assert error_code(_json(stream.answer())) == (400, "invalid_request")
    stream.sock.sendall(frames.encode_request("get", b"\x00\x00"))  # no JSON length
    assert error_code(_json(stream.answer())) == (400, "invalid_request")
    stream.sock.sendall(frames.encode_request("get", struct.pack(">I", 3) + b"{no"))
    assert error_code(_json(stream.answer())) == (400, "bad_json")
    stream.sock.sendall(frames.encode_request("get", encode_body([1])))  # not an object
    assert error_code(_json(stream.answer())) == (400, "invalid_request")
    assert stream.call("set", {"key": "k", "value": 1})[0] == 200


def _json(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, Any]:
    return answer[0], orjson.loads(answer[2])


def test_an_oversized_frame_is_answered_413_and_the_stream_goes_on(stream: Stream) -> None:
    big = frames.encode_request("set", encode_body({"key": "k", "binary": True}, b"x" * 3 * MIB))
    stream.sock.sendall(big)
    assert error_code(_json(stream.answer())) == (413, "request_too_large")
    assert stream.call("set", {"key": "k", "value": "small"})[0] == 200


def test_a_client_gone_mid_frame_does_not_hurt_the_node(node: NodeProcess, registry: Registry):
    half = Stream(node.port, registry.api_key)
    half.sock.sendall(frames.encode_request("set", encode_body({"key": "k", "value": 1}))[:9])
    half.close()
    fresh = Stream(node.port, registry.api_key)
    try:
        assert fresh.call("set", {"key": "k", "value": 2})[0] == 200
    finally:
        fresh.close()


def test_an_idle_stream_is_closed_by_the_node(stream: Stream) -> None:
    assert stream.call("get", {"key": "missing"})[0] == 404
    opened = time.monotonic()
    stream.sock.settimeout(15)
    assert stream.reader.read(1) == b""  # blocks until the node closes it (idle 2 s here)
    assert 1.5 < time.monotonic() - opened < 10


def test_upgrades_that_are_refused(node: NodeProcess, registry: Registry) -> None:
    no_key = Stream(node.port, None)
    assert no_key.status == 401
    assert orjson.loads(no_key.body)["error"]["code"] == "unauthorized"
    bad = Stream(node.port, "nope.nope")
    assert bad.status == 401
    for s in (no_key, bad):
        s.close()
    r = requests.post(f"{node.url}/api/v1/stream", headers={"X-API-Key": registry.api_key})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"


def test_a_read_only_key_cannot_write(node: NodeProcess, registry: Registry) -> None:
    key = manage(registry.env, "createapikey", "--name", "ro", "--scopes", "read", "--quiet")
    s = Stream(node.port, key.strip())
    try:
        assert s.status == 101
        assert error_code(s.call("set", {"key": "k", "value": 1})) == (403, "forbidden")
        assert s.call("get", {"key": "missing"})[0] == 404  # reads still work
    finally:
        s.close()


def test_a_revoked_key_stops_working_on_an_open_stream(node: NodeProcess, registry: Registry):
    raw = manage(registry.env, "createapikey", "--name", "soon-gone", "--quiet").strip()
    s = Stream(node.port, raw)
    try:
        assert s.call("set", {"key": "k", "value": 1})[0] == 200
        revoke = "from cacheapi.models import ApiKey; ApiKey.objects.get(name='soon-gone').revoke()"
        manage(registry.env, "shell", "-c", revoke)

        def refused() -> bool:
            status, _ = s.call("get", {"key": "k"})
            return status == 401

        wait_for(refused, timeout=10, interval=0.2)  # AUTH_CACHE_SECONDS is 1 here
        with pytest.raises(ConnectionError):
            s.call("get", {"key": "k"})  # and the stream is closed
    finally:
        s.close()


def test_keys_owned_by_other_nodes_go_through_the_router(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    with Cluster(registry, tmp_path, 3) as cluster:
        n1 = cluster.nodes[0]
        s = Stream(n1.port, registry.api_key)
        try:
            for i in range(30):
                assert s.call("set", {"key": f"k{i}", "value": i})[1]["copies"] == 2
            stats = [cluster.stats(n)["items"] for n in cluster.nodes]
            assert sum(stats) == 60
            assert all(count > 0 for count in stats)
            for node in cluster.nodes[1:]:
                assert cluster.get(node, "/api/v1/keys/k7").json()["value"] == 7
        finally:
            s.close()


def test_a_gthread_node_answers_501_and_the_client_uses_http(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    proc = NodeProcess(registry, "g1", tmp_path)
    try:
        proc.start("--worker-class", "gthread").wait_ready()
        s = Stream(proc.port, registry.api_key)
        assert s.status == 501
        assert orjson.loads(s.body)["error"]["code"] == "streams_unavailable"
        s.close()
        client = CacheClient([proc.url], api_key=registry.api_key)
        try:
            client.set("k", b"\x01")
            assert client.get("k") == b"\x01"
            assert client.get_many(["k", "zz"]) == {"k": b"\x01"}
            # The refused upgrade's connection is closed, not parked where nothing uses it.
            assert client._frames is not None
            assert client._frames.pool(proc.url)._idle == []
        finally:
            client.close()
        ops = requests.get(
            f"{proc.url}/api/v1/stats", headers={"X-API-Key": registry.api_key}, timeout=5
        ).json()["ops"]
        assert ops.get("update") == 1  # the set went as an HTTP PUT
        assert not any(op.startswith("stream_") and op != "stream_open" for op in ops)
    finally:
        proc.stop()
