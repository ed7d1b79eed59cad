"""Node-to-node store calls: the owner's WSGI app (``cacheapi.internal``) called directly, and
the coordinator's ``PeerClient`` against that app served over real HTTP on a local port."""

from __future__ import annotations

import contextlib
import io
import json
import math
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheapi import errors
from cacheapi.peer import frames
from cacheapi.peer.client import PeerClient, PeerUnavailable
from cacheapi.peer.server import InternalApp
from cacheapi.peer.wire import INTERNAL_HEADER, decode_value, encode_value
from cacheapi.store import Store
from cacheapi.store.versions import format_version, parse_version
from nodes.ring import RingNode
from tests.clocks import FakeClock

SECRET = "peer-secret"
WAIT_S = 5.0  # joins of server threads that should end at once


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return Store(max_bytes=1 << 20, max_items=10_000, node="owner", clock=clock)


@pytest.fixture
def observed() -> list[tuple[str, bool]]:
    return []


@pytest.fixture
def app(store: Store, observed: list[tuple[str, bool]]) -> InternalApp:
    return InternalApp(
        lambda: store,
        lambda: SECRET,
        max_body=lambda: 10_000,
        ring_version=lambda: 7,
        observe=lambda op, seconds, error: observed.append((op, error)),
    )


def call(
    app: InternalApp,
    op: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    method: str = "POST",
    secret: str | None = SECRET,
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": f"/internal/v1/{op}",
        "wsgi.input": io.BytesIO(data),
    }
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(len(data))
    if secret is not None:
        environ["HTTP_X_CLUSTER_SECRET"] = secret
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(headers)

    out = b"".join(app(environ, start_response))
    assert seen["headers"][INTERNAL_HEADER] == "1"  # every answer, errors included
    assert seen["headers"]["Content-Length"] == str(len(out))
    return seen["status"], seen["headers"], out


def error_code(body: bytes) -> str:
    return orjson.loads(body)["error"]["code"]


# --------------------------------------------------------------------------- the owner's app


@pytest.mark.parametrize("secret", [None, "", "wrong", "peer-secret-but-longer", "péer"])
def test_a_call_without_the_right_secret_is_forbidden_and_changes_nothing(app, store, secret):
    status, _, body = call(app, "set", {"key": "k", "value": "1", "binary": False}, secret=secret)
    assert status == 403
    assert error_code(body) == "forbidden"
    assert store.peek("k") is None


WRITES = {  # every operation that changes something, in the form replication and migration use
    "set": {"key": "k", "value": "1", "binary": False, "ttl": None, "version": "9-0-n2"},
    "delete": {"key": "old", "version": "9-0-n2"},
    "touch": {"key": "old", "ttl": 5},
    "incr": {"key": "n", "delta": 1},
    "set_many": {"items": [["k", "1", False, None]], "version": "9-0-n2"},
    "delete_many": {"keys": ["old"], "version": "9-0-n2"},
    "sync": {"items": [["k", "1", False, None, "9-0-n2"]]},
    "clear": {},
    "ratelimit": {"key": "rl", "limit": 1, "period": 60},
    "scan": {"owner": "n1", "ring_version": 0, "cursor": 0, "limit": 10},
}


@pytest.mark.parametrize("op", sorted(WRITES))
def test_every_write_path_needs_the_secret_and_changes_nothing_without_it(app, store, op):
    store.set("old", b"1")
    store.set("n", b"1")
    for secret in (None, "wrong"):
        status, _, body = call(app, op, WRITES[op], secret=secret)
        assert (status, error_code(body)) == (403, "forbidden")
    assert store.peek("k") is None
    assert store.peek("old").value == b"1"
    assert store.peek("n").value == b"1"


def test_unknown_operation_is_404_and_other_methods_405(app):
    status, headers, body = call(app, "flushall", {})
    assert (status, error_code(body)) == (404, "unknown_operation")  # not "not_found": a miss
    assert headers["X-Ring-Version"] == "7"
    status, _, body = call(app, "get", {"key": "k"}, method="GET")
    assert (status, error_code(body)) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "bad_json"),
        (b"[1, 2]", "invalid_request"),
        (b'{"key": "k"} trailing', "bad_json"),
        (b"NaN", "bad_json"),
        (b"\xff\xfe", "bad_json"),
    ],
)
def test_a_malformed_body_is_a_400(app, raw, code):
    status, _, body = call(app, "get", raw=raw)
    assert (status, error_code(body)) == (400, code)


def test_bodies_over_the_limit_are_refused_unread(app, store):
    big = orjson.dumps({"key": "k", "value": "x" * 20_000, "binary": False, "ttl": None})
    status, _, body = call(app, "set", raw=big)
    assert (status, error_code(body)) == (413, "request_too_large")
    status, _, body = call(app, "set", raw=big, chunked=True)
    assert (status, error_code(body)) == (413, "request_too_large")
    assert store.peek("k") is None


def test_a_body_needs_a_length(app):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/internal/v1/get",
        "wsgi.input": io.BytesIO(b'{"key":"k"}'),
        "HTTP_X_CLUSTER_SECRET": SECRET,
    }
    seen = {}
    body = b"".join(app(environ, lambda status, headers: seen.update(status=status)))
    assert seen["status"].startswith("411")
    assert error_code(body) == "length_required"
    environ["CONTENT_LENGTH"] = "12x"
    environ["wsgi.input"] = io.BytesIO(b"")
    body = b"".join(app(environ, lambda status, headers: seen.update(status=status)))
    assert seen["status"].startswith("400")


def test_get_answers_the_stored_bytes_with_type_ttl_and_version(app, store, clock):
    version = store.set("k", b'{"a":[1,2]}', ttl=30)
    clock.advance(10)
    status, headers, body = call(app, "get", {"key": "k"})
    assert status == 200
    assert body == b'{"a":[1,2]}'
    assert headers["X-Value-Type"] == "json"
    assert float(headers["X-TTL"]) == pytest.approx(20)
    assert parse_version(headers["X-Version"]) == version

    store.set("b", b"\x00\xff", binary=True)
    status, headers, body = call(app, "get", {"key": "b"})
    assert (status, body, headers["X-Value-Type"], headers["X-TTL"]) == (
        200,
        b"\x00\xff",
        "binary",
        "none",
    )


def test_get_of_a_missing_or_expired_key_is_404(app, store, clock):
    store.set("k", b"1", ttl=5)
    clock.advance(5)
    for key in ("k", "never"):
        status, _, body = call(app, "get", {"key": key})
        assert (status, error_code(body)) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"value": "1", "binary": False}, 400, "invalid_key"),
        ({"key": "", "value": "1", "binary": False}, 400, "invalid_key"),
        ({"key": "a b", "value": "1", "binary": False}, 400, "invalid_key"),
        ({"key": 5, "value": "1", "binary": False}, 400, "invalid_key"),
        ({"key": "k", "binary": False}, 400, "invalid_value"),
        ({"key": "k", "value": 1, "binary": False}, 400, "invalid_value"),
        ({"key": "k", "value": "1", "binary": "no"}, 400, "invalid_value"),
        ({"key": "k", "value": "***", "binary": True}, 400, "invalid_value"),
        ({"key": "k", "value": "1", "binary": False, "ttl": -1}, 400, "invalid_ttl"),
        ({"key": "k", "value": "1", "binary": False, "ttl": "5"}, 400, "invalid_ttl"),
        ({"key": "k", "value": "1", "binary": False, "if_absent": 1}, 400, "invalid_request"),
        (
            {"key": "k", "value": "1", "binary": False, "if_absent": True, "if_version": "1-0-n"},
            400,
            "invalid_request",
        ),
        ({"key": "k", "value": "1", "binary": False, "if_version": "v7"}, 400, "invalid_request"),
        ({"key": "k", "value": "x" * 9_000, "binary": False}, 413, "value_too_large"),
        ({"key": "k", "value": "not json {", "binary": False}, 400, "invalid_value"),
        ({"key": "k", "value": "NaN", "binary": False}, 400, "invalid_value"),
        ({"key": "k", "value": "1 2", "binary": False}, 400, "invalid_value"),
        ({"key": "k", "value": "", "binary": False}, 400, "invalid_value"),
    ],
)
def test_a_bad_set_is_a_4xx_and_stores_nothing(app, store, settings, body, status, code):
    settings.CACHE_CLUSTER = {"MAX_VALUE_BYTES": 8_000}
    got_status, _, got = call(app, "set", body)
    assert (got_status, error_code(got)) == (status, code)
    assert store.peek("k") is None


def test_set_stores_the_text_as_is_and_answers_the_version(app, store, clock):
    status, headers, body = call(
        app, "set", {"key": "k", "value": '{"n":123456789012345678901234567890}', "binary": False}
    )
    assert status == 200
    entry = store.peek("k")
    assert entry.value == b'{"n":123456789012345678901234567890}'  # exact, never re-encoded
    assert entry.expires_at is None  # no ttl: the coordinator already applied the default
    assert orjson.loads(body)["version"] == headers["X-Version"] == format_version(entry.version)

    blob = bytes(range(256))
    call(app, "set", {"key": "b", "value": encode_value(blob, True), "binary": True, "ttl": 9})
    assert (store.peek("b").value, store.peek("b").binary) == (blob, True)
    assert store.peek("b").expires_at == clock.now + 9


def test_set_conditions_add_and_compare_and_set(app, store):
    body = {"key": "k", "value": "1", "binary": False}
    assert call(app, "set", {**body, "if_absent": True})[0] == 200
    status, _, answer = call(app, "set", {**body, "value": "2", "if_absent": True})
    assert (status, error_code(answer)) == (412, "precondition_failed")
    current = format_version(store.peek("k").version)
    status, _, _ = call(app, "set", {**body, "value": "3", "if_version": current})
    assert status == 200
    assert store.peek("k").value == b"3"
    status, _, _ = call(app, "set", {**body, "value": "4", "if_version": current})
    assert status == 412
    assert store.peek("k").value == b"3"


def test_delete_touch_and_incr(app, store, clock):
    store.set("n", b"41", ttl=100)
    assert orjson.loads(call(app, "incr", {"key": "n", "delta": 1})[2])["value"] == 42
    assert store.peek("n").value == b"42"
    status, _, body = call(app, "incr", {"key": "n", "delta": 2**63})
    assert (status, error_code(body)) == (400, "invalid_request")
    status, _, body = call(app, "incr", {"key": "missing"})
    assert (status, error_code(body)) == (404, "not_found")
    store.set("text", b'"abc"')
    status, _, body = call(app, "incr", {"key": "text"})
    assert (status, error_code(body)) == (409, "not_integer")

    assert orjson.loads(call(app, "touch", {"key": "n", "ttl": 5})[2]) == {"touched": True}
    assert store.peek("n").expires_at == clock.now + 5
    assert orjson.loads(call(app, "touch", {"key": "nope", "ttl": 5})[2]) == {"touched": False}
    status, _, body = call(app, "touch", {"key": "n"})
    assert (status, error_code(body)) == (400, "invalid_ttl")

    assert orjson.loads(call(app, "delete", {"key": "n"})[2]) == {"deleted": True}
    assert orjson.loads(call(app, "delete", {"key": "n"})[2]) == {"deleted": False}


def test_batches(app, store):
    items = [
        ["a", "1", False, None],
        ["b", encode_value(b"\x01", True), True, 60],
        ["c", "[]", False, None],
    ]
    assert orjson.loads(call(app, "set_many", {"items": items})[2]) == {"stored": 3}
    answer = orjson.loads(call(app, "get_many", {"keys": ["a", "b", "c", "zz", "a"]})[2])
    assert answer == {"values": {"a": "1", "c": "[]"}, "binary": {"b": "AQ=="}}
    assert orjson.loads(call(app, "delete_many", {"keys": ["a", "zz"]})[2]) == {
        "deleted": 1,
        "removed": ["a"],
    }
    assert store.peek("a") is None
    assert store.peek("c") is not None


@pytest.mark.parametrize(
    ("op", "body", "status", "code"),
    [
        ("set_many", {"items": "x"}, 400, "invalid_request"),
        (
            "set_many",
            {"items": [["a", "1", False, None], ["b", "1", False]]},
            400,
            "invalid_request",
        ),
        ("set_many", {"items": [["a", "1", False, None], {"key": "b"}]}, 400, "invalid_request"),
        (
            "set_many",
            {"items": [["a", "1", False, None], ["b c", "1", False, None]]},
            400,
            "invalid_key",
        ),
        (
            "set_many",
            {"items": [["a", "1", False, None], ["b", "1", False, 0]]},
            400,
            "invalid_ttl",
        ),
        ("set_many", {"items": [["a", "1", False, None]] * 6}, 413, "batch_too_large"),
        ("get_many", {"keys": "a"}, 400, "invalid_request"),
        ("get_many", {"keys": ["a", 1]}, 400, "invalid_key"),
        ("delete_many", {"keys": ["a"] * 6}, 413, "batch_too_large"),
    ],
)
def test_a_bad_batch_is_a_4xx_and_changes_nothing(app, store, settings, op, body, status, code):
    settings.CACHE_CLUSTER = {"MAX_BATCH_KEYS": 5}
    store.set("a", b"0")
    got_status, _, got = call(app, op, body)
    assert (got_status, error_code(got)) == (status, code)
    assert store.peek("a").value == b"0"
    assert store.peek("b") is None


# ---------------------------------------------------------------------- put: a replicated write


def put_body(
    key: str = "k",
    value: bytes = b'"v"',
    binary: bool = False,
    ttl: float | None = None,
    version: tuple[int, int, str] = (9, 0, "n2"),
) -> bytes:
    return frames.encode_put(key, value, binary, ttl, version)


def test_put_stores_a_replicated_write_with_its_version(app, store, observed):
    status, _, body = call(app, "put", raw=put_body(value=b'{"a":1}', ttl=30.0))
    assert (status, body) == (200, b"")  # the coordinator knows the version it sent
    entry = store.peek("k")
    assert (entry.value, entry.binary, entry.version) == (b'{"a":1}', False, (9, 0, "n2"))
    assert store.remaining(entry) == pytest.approx(30)
    # Binary values travel raw, whatever their bytes; no TTL is no expiry.
    assert call(app, "put", raw=put_body("b", b"\x00\xff{", True, None, (10, 0, "n2")))[0] == 200
    assert (store.peek("b").value, store.peek("b").binary) == (b"\x00\xff{", True)
    assert store.remaining(store.peek("b")) is None
    # An older version loses (last write wins): answered, and nothing changes.
    assert call(app, "put", raw=put_body(value=b"2", version=(8, 5, "n3")))[0] == 200
    assert store.peek("k").value == b'{"a":1}'
    assert observed == [("internal_put", False)] * 3


def test_put_needs_the_secret_and_a_post(app, store):
    for secret in (None, "wrong"):
        status, _, body = call(app, "put", raw=put_body(), secret=secret)
        assert (status, error_code(body)) == (403, "forbidden")
    status, _, body = call(app, "put", raw=put_body(), method="GET")
    assert (status, error_code(body)) == (405, "method_not_allowed")
    assert store.peek("k") is None


_HEAD = frames.PUT_HEAD.pack(0, math.nan, 9, 0, 2) + b"n2"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"", 400, "invalid_request"),
        (put_body()[:10], 400, "invalid_request"),  # shorter than its head
        (_HEAD, 400, "invalid_request"),  # no key length
        (_HEAD + frames.KEY_LENGTH.pack(100) + b"k", 400, "invalid_request"),  # a key cut short
        (_HEAD + frames.KEY_LENGTH.pack(2) + b"\xff\xfe" + b"1", 400, "invalid_request"),  # UTF-8
        (
            frames.PUT_HEAD.pack(0, math.nan, 9, 0, 2) + b"n\xff" + b"\x01\x00k1",
            400,
            "invalid_request",
        ),
        (b"\x02" + put_body()[1:], 400, "invalid_request"),  # an unknown flag
        (put_body(key="with space"), 400, "invalid_key"),
        (put_body(key=""), 400, "invalid_key"),
        (put_body(key="x" * 251), 400, "invalid_key"),
        (put_body(ttl=-1.0), 400, "invalid_ttl"),
        (put_body(ttl=0.0), 400, "invalid_ttl"),
        (put_body(ttl=math.inf), 400, "invalid_ttl"),
        (put_body(value=b"{nope"), 400, "invalid_value"),
        (put_body(value=b"NaN"), 400, "invalid_value"),
        (put_body(value=b""), 400, "invalid_value"),
        (put_body(value=b'"\xff"'), 400, "invalid_value"),
        (put_body(value=b"1" * 9_000), 413, "value_too_large"),
        (put_body(value=b"\x00" * 9_000, binary=True), 413, "value_too_large"),
        (put_body(version=(9, 0, "n 2")), 400, "invalid_request"),
        (put_body(version=(-1, 0, "n2")), 400, "invalid_request"),
    ],
)
def test_a_bad_put_is_a_4xx_and_stores_nothing(app, store, settings, raw, status, code):
    settings.CACHE_CLUSTER = {"MAX_VALUE_BYTES": 8_000}
    got_status, _, got = call(app, "put", raw=raw)
    assert (got_status, error_code(got)) == (status, code)
    assert len(store) == 0


@settings(max_examples=200, deadline=None)
@given(
    key=st.text(min_size=1, max_size=60),
    value=st.binary(max_size=300),
    binary=st.booleans(),
    ttl=st.none() | st.floats(min_value=0.001, max_value=1e9),
    version=st.tuples(
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**32 - 1),
        st.from_regex(r"[!-~]{1,40}", fullmatch=True),
    ),
)
def test_a_put_body_decodes_to_what_was_encoded(key, value, binary, ttl, version):
    try:
        body = frames.encode_put(key, value, binary, ttl, version)
    except ValueError:  # a lone surrogate in the key: not UTF-8
        return
    assert frames.decode_put(body) == (key, value, binary, ttl, version)
    for cut in range(len(body) - len(value)):  # cut anywhere before the value: refused
        with pytest.raises(frames.FrameError):
            frames.decode_put(body[:cut])


def test_each_call_is_recorded_under_its_internal_name(app, store, observed):
    store.set("k", b"1")
    call(app, "get", {"key": "k"})
    call(app, "get", {"key": "nope"})
    call(app, "get_many", {"keys": ["k"]})
    call(app, "nope", {})
    assert observed == [
        ("internal_get", False),
        ("internal_get", False),
        ("internal_get_many", False),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64).map(lambda b: (b, True)),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
            max_leaves=8,
        ).map(lambda v: (json.dumps(v, ensure_ascii=False).encode(), False)),
    )
)
def test_values_cross_as_they_are_stored(pair):
    value, binary = pair
    assert decode_value(encode_value(value, binary), binary) == (value, binary)


# --------------------------------------------------------------------------- PeerClient over HTTP


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(wsgi_app, name: str = "odd") -> Iterator[RingNode]:
    """``wsgi_app`` on a real local port (wsgiref, one thread), as a ring node."""
    server = make_server("127.0.0.1", 0, wsgi_app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield RingNode(name=name, url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def served(app: InternalApp) -> Iterator[RingNode]:
    """The owner's app on a real local port."""
    with _serving(app, "owner") as node:
        yield node


@pytest.fixture
def peers(clock: FakeClock) -> PeerClient:
    return PeerClient(secret=SECRET, timeout=2.0)


def test_peer_client_single_key_calls_round_trip(served, peers, store, clock):
    big = b'{"n":123456789012345678901234567890}'
    version = peers.set(served, "k", big, False, 30.0)
    assert store.peek("k").value == big
    assert store.peek("k").version == version
    hit = peers.get(served, "k")
    assert (hit.value, hit.binary, hit.version) == (big, False, version)
    assert hit.ttl == pytest.approx(30)
    assert peers.get(served, "missing") is None

    assert peers.set(served, "k", b"2", False, None, if_absent=True) is None
    assert peers.set(served, "new", b"\x00", True, None, if_absent=True) is not None
    assert store.peek("new").binary
    assert peers.set(served, "k", b"3", False, None, if_version=version) is not None
    assert peers.set(served, "k", b"4", False, None, if_version=version) is None
    assert store.peek("k").value == b"3"

    store.set("n", b"1")
    value, _, ttl = peers.incr(served, "n", 5)
    assert (value, ttl) == (6, None)
    assert store.peek("n").value == b"6"
    assert peers.incr(served, "missing", 1) is None


def test_peer_client_puts_replicated_writes_compactly(served, peers, store, observed):
    version = (10**15, 3, "n2")
    assert peers.start_put(served, "p", b"\x00raw", True, 60.0, version).result() == version
    assert (store.peek("p").value, store.peek("p").version) == (b"\x00raw", version)
    assert peers.start_put(served, "j", b"[1]", False, None, version).result() == version
    assert store.peek("j").value == b"[1]"
    # A version the compact layout cannot carry (a node name past 255 bytes) goes as a set.
    long_name = (10**15, 4, "n" * 300)
    assert peers.start_put(served, "l", b"1", False, None, long_name).result() == long_name
    assert store.peek("l").version == long_name
    assert [op for op, _ in observed] == ["internal_put", "internal_put", "internal_set"]
    with pytest.raises(errors.CacheError) as info:  # the owner's refusal, relayed
        peers.start_put(served, "bad key", b"1", False, None, version).result()
    assert info.value.status == 400


def test_peer_client_relays_errors_with_their_status(served, peers, store):
    store.set("text", b'"abc"')
    with pytest.raises(errors.CacheError) as info:
        peers.incr(served, "text", 1)
    assert (info.value.status, info.value.code) == (409, "not_integer")
    assert isinstance(info.value, errors.CacheError)
    assert peers.touch(served, "text", 5.0) is True
    assert peers.delete(served, "text") is True
    assert peers.delete(served, "text") is False
    assert peers.touch(served, "text", 5.0) is False


def test_peer_client_batches_send_first_and_read_later(served, peers, store):
    store.set("old", b"0")
    items = [("a", b"1", False, None), ("b", b"\x02", True, 10.0), ("c", b'{"x":[]}', False, None)]
    # Both calls are on the wire before either answer is read (two pooled connections).
    writing = peers.start_set_many(served, items)
    deleting = peers.start_delete_many(served, ["old", "zz"])
    assert (writing.result(), deleting.result()) == (3, ["old"])
    found = peers.start_get_many(served, ["a", "b", "c", "zz"]).result()
    assert set(found) == {"a", "b", "c"}
    assert orjson.loads(orjson.dumps(found)) == {"a": 1, "b": {"b64": "Ag=="}, "c": {"x": []}}
    assert isinstance(found["a"], orjson.Fragment)  # stored text, embedded without a parse
    assert store.peek("b").expires_at is not None


def test_an_unread_call_can_be_dropped(served, peers, store):
    pending = peers.start_get_many(served, ["a"])
    pending.close()
    pending.close()  # twice is harmless
    with pytest.raises(RuntimeError):
        pending.result()
    assert peers.start_get_many(served, ["a"]).result() == {}  # the pool still works


def test_a_wrong_secret_is_a_bad_gateway_not_the_clients_fault(served, clock):
    wrong = PeerClient(secret="nope", timeout=2.0)
    with pytest.raises(errors.CacheError) as info:
        wrong.get(served, "k")
    assert (info.value.status, info.value.code) == (502, "bad_gateway")
    assert "wrong cluster secret" in str(info.value)


def test_an_answer_from_something_else_is_a_bad_gateway(peers):
    """A node that does not serve /internal/v1/ (an older version) answers 404 without the
    protocol header: that must not read as "key missing"."""

    def not_internal(environ, start_response):
        body = b'{"error":{"code":"not_found","message":"Not found."}}'
        start_response("404 Not Found", [("Content-Length", str(len(body)))])
        return [body]

    with _serving(not_internal, "old") as old, pytest.raises(errors.CacheError) as info:
        peers.get(old, "k")
    assert (info.value.status, info.value.code) == (502, "bad_gateway")
    assert "older version" in str(info.value)


def test_a_node_that_refuses_is_unavailable(peers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        dead = RingNode(name="dead", url=f"http://127.0.0.1:{port}")
        with pytest.raises(PeerUnavailable):
            peers.get(dead, "k")
        with pytest.raises(PeerUnavailable):
            peers.start_get_many(dead, ["k"])


@pytest.mark.parametrize(
    "path", ["/internal/v2/set", "/internal/zzzset", "/internal/", "/internal/v1/"]
)
def test_paths_outside_the_v1_operations_are_unknown_and_change_nothing(app, store, path):
    body = orjson.dumps({"key": "k", "value": "1", "binary": False, "ttl": None})
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_CLUSTER_SECRET": SECRET,
    }
    seen = {}
    answer = b"".join(app(environ, lambda status, headers: seen.update(status=status)))
    assert seen["status"].startswith("404")
    assert error_code(answer) == "unknown_operation"
    assert store.peek("k") is None


@pytest.mark.parametrize("length", ["²", "1e3", "-1", " 5"])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(app, length):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/internal/v1/get",
        "wsgi.input": io.BytesIO(b'{"key":"k"}'),
        "CONTENT_LENGTH": length,
        "HTTP_X_CLUSTER_SECRET": SECRET,
    }
    seen = {}
    answer = b"".join(app(environ, lambda status, headers: seen.update(status=status)))
    assert seen["status"].startswith("400")
    assert error_code(answer) == "invalid_request"


def test_an_empty_configured_secret_lets_nobody_in(store):
    app = InternalApp(lambda: store, lambda: "", max_body=lambda: 1000)
    for presented in ("", "x"):
        status, _, body = call(
            app, "set", {"key": "k", "value": "1", "binary": False}, secret=presented
        )
        assert (status, error_code(body)) == (403, "forbidden")
    assert store.peek("k") is None


def test_a_bug_is_a_500_with_the_protocol_header_and_is_logged(caplog):
    def broken_store():
        raise RuntimeError("boom")

    app = InternalApp(broken_store, lambda: SECRET, max_body=lambda: 1000)
    status, _, body = call(app, "get", {"key": "k"})  # call() checks the header
    assert (status, error_code(body)) == (500, "server_error")
    assert "internal call get failed" in caplog.text


# --------------------------------------------------------------------------- malformed answers


def _headed(status: str, body: bytes, *extra: tuple[str, str]):
    def app(environ, start_response):
        start_response(status, [("Content-Length", str(len(body))), (INTERNAL_HEADER, "1"), *extra])
        return [body]

    return app


@pytest.mark.parametrize(
    ("answer", "call_it"),
    [
        (_headed("200 OK", b'{"deleted":"false"}'), lambda p, n: p.delete(n, "k")),
        (_headed("200 OK", b"[]"), lambda p, n: p.touch(n, "k", 1.0)),
        (_headed("200 OK", b"{}"), lambda p, n: p.delete(n, "k")),
        (_headed("200 OK", b'{"value":"7","version":"1-0-n"}'), lambda p, n: p.incr(n, "k", 1)),
        (_headed("200 OK", b"not json"), lambda p, n: p.start_delete_many(n, ["k"]).result()),
        (
            _headed("200 OK", b'{"values":{"k":5},"binary":{}}'),
            lambda p, n: p.start_get_many(n, ["k"]).result(),
        ),
        (
            _headed("200 OK", b'{"values":{},"binary":[]}'),
            lambda p, n: p.start_get_many(n, ["k"]).result(),
        ),
        (_headed("200 OK", b"v", ("X-Value-Type", "json")), lambda p, n: p.get(n, "k")),
        (
            _headed("200 OK", b"v", ("X-Value-Type", "text"), ("X-Version", "1-0-n")),
            lambda p, n: p.get(n, "k"),
        ),
        (
            _headed("200 OK", b"{}", ("X-Version", "v9")),
            lambda p, n: p.set(n, "k", b"1", False, None),
        ),
        # A 404 for the path, not the key: never read as a miss.
        (
            _headed("404 Not Found", b'{"error":{"code":"unknown_operation","message":"?"}}'),
            lambda p, n: p.get(n, "k"),
        ),
        (
            _headed("404 Not Found", b'{"error":{"code":"unknown_operation","message":"?"}}'),
            lambda p, n: p.incr(n, "k", 1),
        ),
        (
            _headed(
                "500 Internal Server Error", b'{"error":{"code":"server_error","message":"x"}}'
            ),
            lambda p, n: p.delete(n, "k"),
        ),
    ],
)
def test_a_malformed_or_misdirected_answer_is_a_bad_gateway(peers, answer, call_it):
    with _serving(answer) as node, pytest.raises(errors.CacheError) as info:
        call_it(peers, node)
    assert (info.value.status, info.value.code) == (502, "bad_gateway")


def test_internal_bodies_may_exceed_the_client_limit_by_the_escaping(settings):
    """JSON text inside a JSON string gains a backslash per quote: a part of a batch that fit
    the client's limit must still fit the owner's."""
    from cacheapi import node

    settings.CACHE_CLUSTER = {"MAX_REQUEST_BYTES": 10_000, "MAX_VALUE_BYTES": 10_000}
    client_body = orjson.dumps({"items": [{"key": "k", "value": ['"'] * 1_500}]})
    assert len(client_body) < 10_000
    stored = orjson.dumps(['"'] * 1_500)
    internal_body = orjson.dumps({"items": [["k", stored.decode(), False, None]]})
    assert len(internal_body) > 10_000  # the same item, escaped once more
    app = node.internal_app()
    status, _, answer = call(app, "set_many", raw=internal_body, secret=node_secret())
    assert status == 200, answer
    assert node.current().store.peek("k").value == stored


def node_secret() -> str:
    from cacheapi.settings import cluster_settings

    return cluster_settings.SECRET


# --------------------------------------------------------------------------- streams


def _stream_environ(sock, secret=SECRET, upgrade="cache-internal/1"):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/internal/v1/stream",
        "wsgi.input": io.BytesIO(b""),
        "CONTENT_LENGTH": "0",
        "gunicorn.socket": sock,
        "HTTP_UPGRADE": upgrade,
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    if secret is not None:
        environ["HTTP_X_CLUSTER_SECRET"] = secret
    return environ


def _frame(op: str, body: bytes) -> bytes:
    name = op.encode()
    return struct.pack(">IB", 1 + len(name) + len(body), len(name)) + name + body


def _read_answer(f) -> tuple[int, dict, bytes]:
    length, status, meta = struct.unpack(">IHH", f.read(8))
    rest = f.read(length - 4)
    return status, orjson.loads(rest[:meta]), rest[meta:]


@pytest.fixture
def stream_app(store, observed):
    marker = object()
    app = InternalApp(
        lambda: store,
        lambda: SECRET,
        max_body=lambda: 10_000,
        observe=lambda op, seconds, error: observed.append((op, error)),
        already_handled=marker,
    )
    return app, marker


def test_a_stream_serves_framed_calls_until_the_peer_closes(stream_app, store, observed):
    app, marker = stream_app
    ours, theirs = socket.socketpair()
    result = {}
    server = threading.Thread(
        target=lambda: result.update(out=app(_stream_environ(theirs), None)), daemon=True
    )
    server.start()
    f = ours.makefile("rb")
    assert f.readline() == b"HTTP/1.1 101 Switching Protocols\r\n"
    while f.readline() != b"\r\n":
        pass
    ours.sendall(_frame("set", orjson.dumps({"key": "k", "value": "[1]", "binary": False})))
    status, headers, body = _read_answer(f)
    assert status == 200
    assert headers["X-Cache-Internal"] == "1"
    assert orjson.loads(body)["version"] == headers["X-Version"]
    ours.sendall(_frame("get", b'{"key":"k"}') + _frame("get", b'{"key":"nope"}'))  # pipelined
    assert _read_answer(f)[::2] == (200, b"[1]")
    status, _, body = _read_answer(f)
    assert (status, error_code(body)) == (404, "not_found")
    ours.sendall(_frame("flushall", b"{}") + _frame("get", b"{"))
    assert error_code(_read_answer(f)[2]) == "unknown_operation"
    assert error_code(_read_answer(f)[2]) == "bad_json"
    f.close()
    ours.close()  # the last reference: now the peer sees the end of the stream
    server.join(timeout=WAIT_S)
    assert result["out"] is marker  # the server is told the app kept the connection
    assert store.peek("k").value == b"[1]"
    assert ("internal_stream", False) in observed
    assert ("internal_set", False) in observed


def test_a_stream_answers_an_oversized_frame_413_then_closes(stream_app, store):
    """Refused, not silently dropped: the coordinator must see a refusal (a bad gateway for
    its client), not what looks like a dead node."""
    app, _ = stream_app
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=lambda: app(_stream_environ(theirs), None), daemon=True)
    server.start()
    f = ours.makefile("rb")
    while f.readline() != b"\r\n":
        pass
    ours.sendall(struct.pack(">IB", 50_000_000, 3) + b"set" + b"x" * 1000)
    status, headers, body = _read_answer(f)
    assert (status, error_code(body)) == (413, "request_too_large")
    assert headers["X-Cache-Internal"] == "1"
    assert f.read(1) == b""  # then closed
    server.join(timeout=WAIT_S)
    assert not server.is_alive()
    assert store.peek("k") is None


@pytest.mark.parametrize(
    "extra",
    [
        {"CONTENT_LENGTH": "5"},
        {"HTTP_TRANSFER_ENCODING": "chunked"},
        {"REQUEST_METHOD": "GET"},
        {"SERVER_PROTOCOL": "HTTP/1.0"},
    ],
)
def test_an_upgrade_must_be_an_empty_http11_post(stream_app, extra):
    app, marker = stream_app
    ours, theirs = socket.socketpair()
    seen = {}
    out = app({**_stream_environ(theirs), **extra}, lambda s, h: seen.update(status=s))
    assert out is not marker
    assert seen["status"].startswith("400")
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    ("environ_args", "status", "code"),
    [
        ({"secret": None}, 403, "forbidden"),
        ({"secret": "wrong"}, 403, "forbidden"),
        ({"upgrade": "websocket"}, 404, "unknown_operation"),
    ],
)
def test_an_upgrade_needs_the_secret_and_the_protocol(stream_app, environ_args, status, code):
    app, marker = stream_app
    ours, theirs = socket.socketpair()
    seen = {}
    out = app(_stream_environ(theirs, **environ_args), lambda s, h: seen.update(status=s))
    assert out is not marker
    assert seen["status"].startswith(str(status))
    assert error_code(b"".join(out)) == code
    ours.close()
    theirs.close()


def test_a_node_without_streams_answers_501(app):
    """Without the server's marker (not a gevent worker) the upgrade is refused, and a
    coordinator falls back to one HTTP request per call."""
    ours, theirs = socket.socketpair()
    seen = {}
    out = app(_stream_environ(theirs), lambda s, h: seen.update(status=s))
    assert seen["status"].startswith("501")
    assert error_code(b"".join(out)) == "streams_unavailable"
    ours.close()
    theirs.close()


def test_a_peer_that_timed_out_fails_fast_then_gets_one_trial_call():
    from cacheapi.peer.client import _Suspects

    clock = FakeClock()
    suspects = _Suspects(retry_after=1.0, clock=clock)
    suspects.check("n2")  # nothing known: goes through
    suspects.timed_out("n2")
    with pytest.raises(PeerUnavailable):
        suspects.check("n2")
    suspects.check("n3")  # others are not affected
    clock.advance(1.0)
    suspects.check("n2")  # the trial call goes through...
    with pytest.raises(PeerUnavailable):
        suspects.check("n2")  # ...while the others still fail fast
    suspects.answered("n2")  # the trial answered: the peer is trusted again
    suspects.check("n2")
    suspects.check("n2")
