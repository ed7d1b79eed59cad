"""The HTTP API against its contract (DESIGN.md, "API contract"), on a single node.

Every test looks at what came back (bodies, headers) and at what the store holds; TTLs are
checked by moving a fake clock, never by sleeping.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client, override_settings

from cacheapi import node
from cacheapi.settings import cluster_settings
from cacheapi.store import ENTRY_OVERHEAD, Entry
from cacheapi.store.versions import format_version, parse_version
from tests.clocks import FakeClock

JSON = "application/json"
OCTET = "application/octet-stream"
MIB = 2**20
ALL_BYTES = bytes(range(256))
VERSION_RE = re.compile(r"[0-9]+-[0-9]+-n1")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(node.current().store, "clock", fake)
    return fake


# Helpers ------------------------------------------------------------------------------------------


def url(key: str) -> str:
    return "/api/v1/keys/" + quote(key, safe="/")


def data(response: Any) -> Any:
    return json.loads(response.content)


def contents() -> dict[str, Entry]:
    """Every live entry of the node's store, by key."""
    return {key: entry for chunk in node.current().store.scan() for key, entry in chunk}


def snapshot() -> tuple[dict[str, Entry], dict[str, int]]:
    """What a failed write must leave alone: the entries and the write counters."""
    stats = node.current().store.stats()
    return contents(), {k: stats[k] for k in ("items", "bytes", "sets", "deletes")}


def seed(
    key: str, value: Any = None, *, raw: bytes | None = None, ttl: float | None = None
) -> Entry:
    """Put a value straight into the store (JSON-encoded unless ``raw`` bytes are given)."""
    store = node.current().store
    if raw is not None:
        store.set(key, raw, binary=True, ttl=ttl)
    else:
        store.set(key, json.dumps(value).encode(), ttl=ttl)
    entry = store.peek(key)
    assert entry is not None
    return entry


def stored(key: str) -> Any:
    """The JSON value the store holds for ``key`` (decoded), or a missing marker."""
    entry = node.current().store.peek(key)
    if entry is None:
        return MISSING
    assert not entry.binary
    return json.loads(entry.value)


MISSING = object()


def assert_error(response: Any, status: int, code: str) -> str:
    """The response is the JSON error envelope with this status and code; returns the message."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith(JSON)
    body = data(response)
    assert list(body) == ["error"]
    assert sorted(body["error"]) == ["code", "message"]
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]["message"]


def put(client: Client, key: str, body: Any, **extra: Any) -> Any:
    return client.put(url(key), body, content_type=JSON, **extra)


def etag_of(response: Any) -> str:
    return response["ETag"].strip('"')


# Single keys: GET / HEAD / PUT / PATCH / DELETE ---------------------------------------------------


def test_put_returns_key_and_version_and_get_returns_value(api: Client, clock: FakeClock) -> None:
    r = put(api, "greeting", {"value": {"text": "hi", "n": [1, 2]}, "ttl": 60})
    assert r.status_code == 200
    body = data(r)
    assert sorted(body) == ["copies", "key", "version"]
    assert body["copies"] == 1
    assert r["X-Copies"] == "1"
    assert body["key"] == "greeting"
    assert VERSION_RE.fullmatch(body["version"])
    assert r["ETag"] == f'"{body["version"]}"'
    entry = node.current().store.peek("greeting")
    assert entry is not None
    assert json.loads(entry.value) == {"text": "hi", "n": [1, 2]}
    assert not entry.binary
    assert format_version(entry.version) == body["version"]

    r = api.get(url("greeting"))
    assert r.status_code == 200
    assert r["Content-Type"] == JSON
    assert data(r) == {"key": "greeting", "value": {"text": "hi", "n": [1, 2]}, "ttl": 60.0}
    assert r["ETag"] == f'"{body["version"]}"'
    assert r["X-TTL"] == "60.000"
    assert r["X-Value-Type"] == "json"
    assert r["X-Ring-Version"] == "0"


def test_get_without_ttl_reports_null(api: Client) -> None:
    put(api, "k", {"value": 1})
    r = api.get(url("k"))
    assert data(r) == {"key": "k", "value": 1, "ttl": None}
    assert r["X-TTL"] == "none"
    assert node.current().store.peek("k").expires_at is None


def test_get_missing_is_404_not_found(api: Client) -> None:
    message = assert_error(api.get(url("nope")), 404, "not_found")
    assert "nope" in message
    assert contents() == {}
    assert node.current().store.stats()["misses"] == 1


def test_put_replaces_value_with_a_newer_version(api: Client) -> None:
    first = data(put(api, "k", {"value": "one"}))["version"]
    second = data(put(api, "k", {"value": "two"}))["version"]
    assert parse_version(second) > parse_version(first)
    r = api.get(url("k"))
    assert data(r)["value"] == "two"
    assert etag_of(r) == second
    assert node.current().store.stats()["items"] == 1


def test_head_answers_headers_without_body(api: Client, clock: FakeClock) -> None:
    version = data(put(api, "k", {"value": [1, 2, 3], "ttl": 5}))["version"]
    r = api.head(url("k"))
    assert r.status_code == 200
    assert r.content == b""
    assert r["ETag"] == f'"{version}"'
    assert r["X-TTL"] == "5.000"
    assert r["X-Value-Type"] == "json"
    r = api.head(url("missing"))
    assert r.status_code == 404
    assert r.content == b""
    assert "missing" not in contents()


def test_patch_touches_ttl(api: Client, clock: FakeClock) -> None:
    put(api, "k", {"value": "v", "ttl": 10})
    before = node.current().store.peek("k")
    r = api.patch(url("k"), {"ttl": 100}, content_type=JSON)
    assert r.status_code == 200
    assert data(r) == {"key": "k", "ttl": 100.0, "copies": 1}
    assert data(api.get(url("k")))["ttl"] == 100.0
    after = node.current().store.peek("k")
    assert after.value == before.value
    assert after.expires_at == clock.now + 100

    r = api.patch(url("k"), {"ttl": None}, content_type=JSON)
    assert data(r) == {"key": "k", "ttl": None, "copies": 1}
    clock.advance(10_000)
    assert data(api.get(url("k"))) == {"key": "k", "value": "v", "ttl": None}


def test_patch_missing_key_is_404(api: Client) -> None:
    assert_error(api.patch(url("nope"), {"ttl": 5}, content_type=JSON), 404, "not_found")
    assert contents() == {}


def test_delete_then_delete_again(api: Client) -> None:
    put(api, "k", {"value": 1})
    put(api, "other", {"value": 2})
    r = api.delete(url("k"))
    assert r.status_code == 204
    assert r.content == b""
    assert list(contents()) == ["other"]
    assert_error(api.delete(url("k")), 404, "not_found")
    assert list(contents()) == ["other"]
    assert_error(api.get(url("k")), 404, "not_found")


# TTL ----------------------------------------------------------------------------------------------


def test_ttl_counts_down_and_expires(api: Client, clock: FakeClock) -> None:
    put(api, "k", {"value": "v", "ttl": 10})
    clock.advance(4)
    r = api.get(url("k"))
    assert data(r)["ttl"] == 6.0
    assert r["X-TTL"] == "6.000"
    clock.advance(2.5)
    assert data(api.get(url("k")))["ttl"] == 3.5
    clock.advance(3.5)
    assert_error(api.get(url("k")), 404, "not_found")
    assert contents() == {}
    assert node.current().store.stats()["expirations"] == 1


def test_fractional_and_maximum_ttl_accepted(api: Client, clock: FakeClock) -> None:
    put(api, "half", {"value": 1, "ttl": 0.25})
    put(api, "max", {"value": 1, "ttl": cluster_settings.MAX_TTL})
    assert data(api.get(url("half")))["ttl"] == 0.25
    assert data(api.get(url("max")))["ttl"] == float(cluster_settings.MAX_TTL)


def test_default_ttl_from_settings(make_client: Callable[..., Client], clock: FakeClock) -> None:
    api = make_client()
    with override_settings(CACHE_CLUSTER={"DEFAULT_TTL": 30}):
        put(api, "default", {"value": 1})
        put(api, "forever", {"value": 1, "ttl": None})
        put(api, "own", {"value": 1, "ttl": 5})
        api.put(url("raw"), b"xy", content_type=OCTET)
        api.post("/set", {"key": "seed", "value": 1}, content_type=JSON)
        api.post(
            "/api/v1/batch/set",
            {"items": [{"key": "b1", "value": 1}, {"key": "b2", "value": 2, "ttl": None}]},
            content_type=JSON,
        )
        ttls = {k: node.current().store.remaining(e) for k, e in contents().items()}
    assert ttls == {
        "default": 30.0,
        "forever": None,
        "own": 5.0,
        "raw": 30.0,
        "seed": 30.0,
        "b1": 30.0,
        "b2": None,
    }
    # Back to the project default (never expires) once the override ends.
    put(api, "after", {"value": 1})
    assert data(api.get(url("after")))["ttl"] is None


# incr ---------------------------------------------------------------------------------------------


def test_incr_default_delta_and_negative(api: Client) -> None:
    put(api, "n", {"value": 10})
    r = api.post(url("n") + "/incr", "", content_type=JSON)  # no body at all: delta 1
    assert r.status_code == 200
    assert data(r) == {"key": "n", "value": 11, "copies": 1}
    r = api.post(url("n") + "/incr", {}, content_type=JSON)
    assert data(r) == {"key": "n", "value": 12, "copies": 1}
    r = api.post(url("n") + "/incr", {"delta": 8}, content_type=JSON)
    assert data(r) == {"key": "n", "value": 20, "copies": 1}
    r = api.post(url("n") + "/incr", {"delta": -25}, content_type=JSON)
    assert data(r) == {"key": "n", "value": -5, "copies": 1}
    assert stored("n") == -5
    get = api.get(url("n"))
    assert data(get)["value"] == -5
    assert get["ETag"] == r["ETag"]
    assert VERSION_RE.fullmatch(etag_of(r))


def test_incr_keeps_ttl(api: Client, clock: FakeClock) -> None:
    put(api, "n", {"value": 0, "ttl": 10})
    clock.advance(3)
    assert data(api.post(url("n") + "/incr", {"delta": 2}, content_type=JSON))["value"] == 2
    assert data(api.get(url("n"))) == {"key": "n", "value": 2, "ttl": 7.0}
    clock.advance(7)
    assert_error(api.post(url("n") + "/incr", {}, content_type=JSON), 404, "not_found")


def test_incr_missing_is_404_and_creates_nothing(api: Client) -> None:
    message = assert_error(
        api.post(url("ghost") + "/incr", {}, content_type=JSON), 404, "not_found"
    )
    assert "ghost" in message
    assert contents() == {}


@pytest.mark.parametrize(
    "value",
    ["12", "abc", 1.5, 2.0, True, None, [1], {"a": 1}],
    ids=["numeric-string", "string", "float", "whole-float", "bool", "null", "list", "object"],
)
def test_incr_non_integer_is_409(api: Client, value: Any) -> None:
    entry = seed("v", value)
    assert_error(api.post(url("v") + "/incr", {}, content_type=JSON), 409, "not_integer")
    assert node.current().store.peek("v") == entry


def test_incr_binary_value_is_409(api: Client) -> None:
    entry = seed("b", raw=b"12")
    assert_error(api.post(url("b") + "/incr", {}, content_type=JSON), 409, "not_integer")
    assert node.current().store.peek("b") == entry


@pytest.mark.parametrize(
    ("start", "delta"),
    [(2**63 - 1, 1), (-(2**63), -1), (1, 2**63 - 1), (2**64, 1)],
    ids=["max+1", "min-1", "1+max", "stored-beyond-64-bits"],
)
def test_incr_overflow_is_409_and_unchanged(api: Client, start: int, delta: int) -> None:
    entry = seed("n", start)
    r = api.post(url("n") + "/incr", {"delta": delta}, content_type=JSON)
    assert_error(r, 409, "not_integer")
    assert node.current().store.peek("n") == entry
    assert stored("n") == start


def test_incr_reaches_64_bit_bounds(api: Client) -> None:
    seed("hi", 0)
    seed("lo", 0)
    r = api.post(url("hi") + "/incr", {"delta": 2**63 - 1}, content_type=JSON)
    assert data(r)["value"] == 2**63 - 1
    r = api.post(url("lo") + "/incr", {"delta": -(2**63)}, content_type=JSON)
    assert data(r)["value"] == -(2**63)
    assert (stored("hi"), stored("lo")) == (2**63 - 1, -(2**63))


# Conditional writes -------------------------------------------------------------------------------


def test_if_none_match_star_adds_only_when_absent(api: Client) -> None:
    r = put(api, "k", {"value": "first"}, headers={"If-None-Match": "*"})
    assert r.status_code == 200
    assert data(r)["key"] == "k"
    assert stored("k") == "first"
    before = snapshot()
    r = put(api, "k", {"value": "second"}, headers={"If-None-Match": "*"})
    assert "exists" in assert_error(r, 412, "precondition_failed")
    assert snapshot() == before
    assert stored("k") == "first"


def test_if_none_match_star_adds_over_an_expired_key(api: Client, clock: FakeClock) -> None:
    put(api, "k", {"value": "old", "ttl": 1})
    clock.advance(1)
    r = put(api, "k", {"value": "new"}, headers={"If-None-Match": "*"})
    assert r.status_code == 200
    assert data(api.get(url("k")))["value"] == "new"


def test_etag_on_get_equals_version_from_put(api: Client) -> None:
    version = data(put(api, "k", {"value": 1}))["version"]
    assert api.get(url("k"))["ETag"] == f'"{version}"'
    assert api.head(url("k"))["ETag"] == f'"{version}"'


def test_if_match_compare_and_set(api: Client) -> None:
    v1 = data(put(api, "k", {"value": "one"}))["version"]
    r = put(api, "k", {"value": "two"}, headers={"If-Match": f'"{v1}"'})
    assert r.status_code == 200
    v2 = data(r)["version"]
    assert parse_version(v2) > parse_version(v1)
    assert stored("k") == "two"
    assert etag_of(api.get(url("k"))) == v2

    # The first version is stale now: nothing changes.
    before = snapshot()
    r = put(api, "k", {"value": "three"}, headers={"If-Match": f'"{v1}"'})
    assert_error(r, 412, "precondition_failed")
    assert snapshot() == before
    assert stored("k") == "two"

    # A weak tag of the current version matches.
    r = put(api, "k", {"value": "four"}, headers={"If-Match": f'W/"{v2}"'})
    assert r.status_code == 200
    assert stored("k") == "four"


def test_if_match_on_missing_key_is_412(api: Client) -> None:
    version = data(put(api, "other", {"value": 1}))["version"]
    before = snapshot()
    r = put(api, "k", {"value": 1}, headers={"If-Match": f'"{version}"'})
    assert_error(r, 412, "precondition_failed")
    r = put(api, "k", {"value": 1}, headers={"If-Match": "*"})
    assert_error(r, 412, "precondition_failed")
    assert snapshot() == before
    assert "k" not in contents()


def test_if_match_star_replaces_an_existing_key(api: Client) -> None:
    v1 = data(put(api, "k", {"value": 1}))["version"]
    r = put(api, "k", {"value": 2, "ttl": None}, headers={"If-Match": "*"})
    assert r.status_code == 200
    assert parse_version(data(r)["version"]) > parse_version(v1)
    assert stored("k") == 2


@pytest.mark.parametrize("tag", ['"garbage"', "nonsense", '"1-2"', '"01-0-n1"', '""'])
def test_bad_if_match_etag_is_refused(api: Client, tag: str) -> None:
    put(api, "k", {"value": 1})
    before = snapshot()
    assert_error(put(api, "k", {"value": 2}, headers={"If-Match": tag}), 412, "precondition_failed")
    assert snapshot() == before
    assert stored("k") == 1


# Keys as they travel in URLs ----------------------------------------------------------------------


def test_key_with_slash(api: Client) -> None:
    r = api.put("/api/v1/keys/a/b", {"value": "ab"}, content_type=JSON)
    assert data(r)["key"] == "a/b"
    assert stored("a/b") == "ab"
    assert data(api.get("/api/v1/keys/a/b"))["value"] == "ab"
    assert data(api.get("/api/v1/keys/a%2Fb"))["key"] == "a/b"
    seed("a/b/c", 1)
    assert data(api.post("/api/v1/keys/a/b/c/incr", {}, content_type=JSON)) == {
        "key": "a/b/c",
        "value": 2,
        "copies": 1,
    }
    assert api.delete("/api/v1/keys/a/b").status_code == 204
    assert set(contents()) == {"a/b/c"}


def test_key_ending_in_incr(api: Client, clock: FakeClock) -> None:
    r = api.put("/api/v1/keys/x/incr", {"value": "suffix", "ttl": 9}, content_type=JSON)
    assert data(r)["key"] == "x/incr"
    assert stored("x/incr") == "suffix"
    assert "x" not in contents()
    assert data(api.get("/api/v1/keys/x/incr")) == {"key": "x/incr", "value": "suffix", "ttl": 9.0}
    assert api.head("/api/v1/keys/x/incr").status_code == 200

    put(api, "x", {"value": 41})
    assert data(api.post("/api/v1/keys/x/incr", {}, content_type=JSON)) == {
        "key": "x",
        "value": 42,
        "copies": 1,
    }
    assert stored("x") == 42
    assert stored("x/incr") == "suffix"

    r = api.patch("/api/v1/keys/x/incr", {"ttl": 50}, content_type=JSON)
    assert data(r) == {"key": "x/incr", "ttl": 50.0, "copies": 1}
    assert node.current().store.remaining(node.current().store.peek("x/incr")) == 50.0
    assert node.current().store.peek("x").expires_at is None

    assert api.delete("/api/v1/keys/x/incr").status_code == 204
    assert set(contents()) == {"x"}
    # "incr" itself is an ordinary key.
    put(api, "incr", {"value": 1})
    assert data(api.get("/api/v1/keys/incr"))["key"] == "incr"


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("100%25", "100%"),
        ("q%3Fx%23y", "q?x#y"),
        ("sp%2Bplus", "sp+plus"),
        ("%E2%9C%93", "✓"),
        ("%D0%BA%D0%BB%D1%8E%D1%87", "ключ"),
        ("ключ", "ключ"),
        ("日本語/キー", "日本語/キー"),
        ("emoji-🎉", "emoji-🎉"),
        ("é" * 125, "é" * 125),  # 250 bytes of UTF-8: the longest key
    ],
)
def test_percent_encoded_and_unicode_keys(api: Client, path: str, key: str) -> None:
    r = api.put("/api/v1/keys/" + path, {"value": key}, content_type=JSON)
    assert r.status_code == 200, r.content
    assert data(r)["key"] == key
    assert stored(key) == key
    r = api.get(url(key))
    assert data(r) == {"key": key, "value": key, "ttl": None}
    assert data(api.get("/get", {"key": key}))["value"] == key
    assert api.delete(url(key)).status_code == 204
    assert contents() == {}


# Binary values ------------------------------------------------------------------------------------


def test_binary_put_and_get_all_byte_values(api: Client) -> None:
    r = api.put(url("bin"), ALL_BYTES, content_type=OCTET)
    assert r.status_code == 200
    assert data(r)["key"] == "bin"
    entry = node.current().store.peek("bin")
    assert entry.value == ALL_BYTES
    assert entry.binary

    r = api.get(url("bin"), headers={"Accept": OCTET})
    assert r.status_code == 200
    assert r.content == ALL_BYTES
    assert r["Content-Type"] == OCTET
    assert r["X-Value-Type"] == "binary"
    assert etag_of(r) == format_version(entry.version)

    r = api.get(url("bin"))
    assert data(r) == {
        "key": "bin",
        "value": {"b64": base64.b64encode(ALL_BYTES).decode()},
        "ttl": None,
    }


def test_binary_put_with_ttl_in_query(api: Client, clock: FakeClock) -> None:
    api.put(url("bin") + "?ttl=45", b"\x00\xff", content_type=OCTET)
    r = api.get(url("bin"), headers={"Accept": OCTET})
    assert r.content == b"\x00\xff"
    assert r["X-TTL"] == "45.000"
    api.put(url("forever") + "?ttl=null", b"\x01", content_type=OCTET)
    assert node.current().store.peek("forever").expires_at is None


def test_binary_empty_value(api: Client) -> None:
    # Django's test client drops the Content-Type of an empty body; a real client sends it.
    r = api.put(url("empty"), b"", content_type=OCTET, CONTENT_TYPE=OCTET)
    assert r.status_code == 200, r.content
    assert node.current().store.peek("empty") == Entry(
        b"", True, None, parse_version(data(r)["version"])
    )
    r = api.get(url("empty"), headers={"Accept": OCTET})
    assert r.status_code == 200
    assert r.content == b""
    assert data(api.get(url("empty")))["value"] == {"b64": ""}


def test_binary_value_can_be_conditionally_written(api: Client) -> None:
    version = data(api.put(url("b"), b"one", content_type=OCTET))["version"]
    r = api.put(url("b"), b"two", content_type=OCTET, headers={"If-Match": f'"{version}"'})
    assert r.status_code == 200
    r = api.put(url("b"), b"three", content_type=OCTET, headers={"If-None-Match": "*"})
    assert_error(r, 412, "precondition_failed")
    assert node.current().store.peek("b").value == b"two"


def test_binary_in_batches(api: Client) -> None:
    blobs = {"b0": ALL_BYTES, "b1": b"", "b2": b"\x00" * 10}
    items = [{"key": k, "value": {"b64": base64.b64encode(v).decode()}} for k, v in blobs.items()]
    items.append({"key": "j", "value": {"b64": "AA==", "other": 1}})  # not a binary wrapper
    r = api.post("/api/v1/batch/set", {"items": items}, content_type=JSON)
    assert data(r) == {"stored": 4, "failed": []}
    held = contents()
    assert {k: (held[k].value, held[k].binary) for k in blobs} == {
        k: (v, True) for k, v in blobs.items()
    }
    assert not held["j"].binary
    r = api.post("/api/v1/batch/get", {"keys": [*blobs, "j"]}, content_type=JSON)
    assert data(r) == {
        "values": {
            **{k: {"b64": base64.b64encode(v).decode()} for k, v in blobs.items()},
            "j": {"b64": "AA==", "other": 1},
        },
        "missing": [],
        "failed": [],
    }
    r = api.get(url("b0"), headers={"Accept": OCTET})
    assert r.content == ALL_BYTES


# JSON values round-trip exactly -------------------------------------------------------------------


ROUND_TRIP = [
    "héllo ✓ 日本語 🎉",
    'quote " backslash \\ newline \n tab \t nul \u0000',
    "",
    0,
    -1,
    2**64 + 1,
    -(2**80) - 7,
    10**40,
    3.141592653589793,
    0.1 + 0.2,
    1e-300,
    -1.5e300,
    1.0,
    -0.0,
    True,
    False,
    None,
    [],
    {},
    [1, [2, [3, [4]]], "x", None, 2.5],
    {"a": {"b": [{"c": None, "d": True}]}, "z": 2**70, "u": "ü"},
    {"json": {"b64": "not-a-wrapper"}},
    {"b64": "AA==", "extra": 1},
]


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON types all the way down (1 and 1.0 and True differ)."""
    return json.dumps(a) == json.dumps(b)


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: json.dumps(v)[:30])
def test_json_values_round_trip(api: Client, value: Any) -> None:
    r = put(api, "k", {"value": value})
    assert r.status_code == 200, r.content
    got = data(api.get(url("k")))["value"]
    assert _same(got, value)
    assert not node.current().store.peek("k").binary
    # The same through the batch calls.
    api.post("/api/v1/batch/set", {"items": [{"key": "b", "value": value}]}, content_type=JSON)
    got = data(api.post("/api/v1/batch/get", {"keys": ["b"]}, content_type=JSON))["values"]["b"]
    assert _same(got, value)


def test_deeply_nested_value_round_trips(api: Client) -> None:
    value: Any = "leaf"
    for _ in range(300):  # deeper than orjson's limit of 255
        value = [value]
    assert put(api, "deep", {"value": value}).status_code == 200
    assert data(api.get(url("deep")))["value"] == value


def test_value_of_exactly_the_limit_is_stored(api: Client) -> None:
    text = "x" * (MIB - 2)  # plus its two quotes: exactly 1 MiB encoded
    assert put(api, "big", {"value": text}).status_code == 200
    assert len(node.current().store.peek("big").value) == MIB
    r = api.put(url("raw"), b"\x01" * MIB, content_type=OCTET)
    assert r.status_code == 200
    assert node.current().store.peek("raw").value == b"\x01" * MIB


# Batches ------------------------------------------------------------------------------------------


def test_batch_set_get_delete(api: Client, clock: FakeClock) -> None:
    items = [
        {"key": "a", "value": 1},
        {"key": "b", "value": "two", "ttl": 10},
        {"key": "c/d", "value": {"x": [None]}},
    ]
    r = api.post("/api/v1/batch/set", {"items": items}, content_type=JSON)
    assert r.status_code == 200
    assert data(r) == {"stored": 3, "failed": []}
    assert {k: json.loads(e.value) for k, e in contents().items()} == {
        "a": 1,
        "b": "two",
        "c/d": {"x": [None]},
    }
    assert node.current().store.remaining(node.current().store.peek("b")) == 10.0

    r = api.post("/api/v1/batch/get", {"keys": ["a", "zz", "b", "a", "c/d"]}, content_type=JSON)
    assert r.status_code == 200
    body = data(r)
    assert body == {
        "values": {"a": 1, "b": "two", "c/d": {"x": [None]}},
        "missing": ["zz"],
        "failed": [],
    }
    assert list(body["values"]) == ["a", "b", "c/d"]

    r = api.post("/api/v1/batch/delete", {"keys": ["a", "zz", "c/d"]}, content_type=JSON)
    assert r.status_code == 200
    assert data(r) == {"deleted": 2, "failed": []}
    assert set(contents()) == {"b"}


def test_batch_set_same_key_last_wins(api: Client) -> None:
    items = [{"key": "k", "value": 1}, {"key": "k", "value": 2}]
    assert data(api.post("/api/v1/batch/set", {"items": items}, content_type=JSON)) == {
        "stored": 1,
        "failed": [],
    }
    assert stored("k") == 2


def test_empty_batches(api: Client) -> None:
    assert data(api.post("/api/v1/batch/get", {"keys": []}, content_type=JSON)) == {
        "values": {},
        "missing": [],
        "failed": [],
    }
    assert data(api.post("/api/v1/batch/set", {"items": []}, content_type=JSON)) == {
        "stored": 0,
        "failed": [],
    }
    assert data(api.post("/api/v1/batch/delete", {"keys": []}, content_type=JSON)) == {
        "deleted": 0,
        "failed": [],
    }
    assert contents() == {}


def test_batch_of_exactly_the_limit(api: Client) -> None:
    keys = [f"k{i}" for i in range(cluster_settings.MAX_BATCH_KEYS)]
    items = [{"key": k, "value": i} for i, k in enumerate(keys)]
    r = api.post("/api/v1/batch/set", {"items": items}, content_type=JSON)
    assert data(r) == {"stored": 1000, "failed": []}
    r = api.post("/api/v1/batch/get", {"keys": keys}, content_type=JSON)
    assert data(r)["values"] == {k: i for i, k in enumerate(keys)}
    r = api.post("/api/v1/batch/delete", {"keys": keys}, content_type=JSON)
    assert data(r) == {"deleted": 1000, "failed": []}
    assert contents() == {}


# Stats, flush, health, metrics, schema, ring ------------------------------------------------------


def test_stats_fields(api: Client, clock: FakeClock) -> None:
    put(api, "a", {"value": "xyz"})  # 1 + 5 bytes and the entry's bookkeeping
    put(api, "gone", {"value": 1, "ttl": 1})
    api.get(url("a"))
    api.get(url("nope"))
    clock.advance(1)
    api.get(url("gone"))  # expires it: a miss and an expiration
    r = api.get("/api/v1/stats")
    assert r.status_code == 200
    stats = data(r)
    assert stats["hits"] == 1
    assert stats["misses"] == 2
    assert stats["hit_ratio"] == round(1 / 3, 4)
    assert stats["items"] == 1
    assert stats["bytes"] == len("a") + len('"xyz"') + ENTRY_OVERHEAD
    assert stats["max_bytes"] == cluster_settings.MAX_BYTES
    assert stats["evictions"] == 0
    assert stats["expirations"] == 1
    assert stats["ops"] == {"retrieve": 3, "update": 2}
    assert set(stats["latency"]) == {"retrieve", "update"}
    for op in ("retrieve", "update"):
        lat = stats["latency"][op]
        assert set(lat) == {"mean_ms", "p50_ms", "p99_ms"}
        assert lat["mean_ms"] > 0
    assert stats["node"] == "n1"
    assert stats["ring_version"] == 0
    # The node scope is the default; a bad scope is refused.
    assert data(api.get("/api/v1/stats", {"scope": "node"}))["hits"] == 1
    assert_error(api.get("/api/v1/stats", {"scope": "galaxy"}), 400, "invalid_request")


def test_stats_count_evictions(make_client: Callable[..., Client]) -> None:
    api = make_client()
    entry = 2 + 32 + ENTRY_OVERHEAD  # key, value and bookkeeping
    with override_settings(CACHE_CLUSTER={"MAX_BYTES": 2 * entry + 10}):
        node.reset()  # rebuild the store with the small budget
        for i in range(5):
            put(api, f"k{i}", {"value": "x" * 30})
        stats = data(api.get("/api/v1/stats"))
        assert stats["max_bytes"] == 2 * entry + 10
        assert stats["items"] == 2
        assert stats["evictions"] == 3
        assert stats["bytes"] == 2 * entry
        assert set(contents()) == {"k3", "k4"}
    node.reset()


def test_cluster_stats_sums_this_node(api: Client) -> None:
    put(api, "a", {"value": 1})
    api.get(url("a"))
    stats = data(api.get("/api/v1/stats", {"scope": "cluster"}))
    assert stats["scope"] == "cluster"
    assert stats["items"] == 1
    assert stats["hits"] == 1
    assert stats["failed"] == []
    assert list(stats["nodes"]) == ["n1"]


def test_flush_empties_the_store(api: Client) -> None:
    put(api, "a", {"value": 1})
    put(api, "b", {"value": 2})
    r = api.post("/api/v1/flush")
    assert r.status_code == 200
    assert data(r) == {"flushed": 2, "failed": []}
    assert contents() == {}
    assert node.current().store.stats()["bytes"] == 0


def test_health_is_open() -> None:
    r = Client().get("/health")
    assert r.status_code == 200
    assert data(r) == {"status": "ok", "node": "n1", "ring_version": 0, "member": "up"}
    # A bad key does not matter here.
    r = Client(headers={"X-API-Key": "bogus"}).get("/health")
    assert data(r)["status"] == "ok"


def test_health_while_draining_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.Node, "draining", property(lambda self: True))
    r = Client().get("/health")
    assert r.status_code == 503
    assert data(r) == {"status": "draining", "node": "n1", "ring_version": 0, "member": "draining"}


def test_metrics_are_open_prometheus_text(api: Client) -> None:
    put(api, "a", {"value": 1})
    put(api, "b", {"value": 2})
    api.get(url("a"))
    r = Client().get("/metrics")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/plain")
    text = r.content.decode()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples["cache_items"]) == 2
    assert float(samples["cache_hits_total"]) == 1
    assert float(samples["cache_sets_total"]) == 2
    assert float(samples["cache_bytes"]) == node.current().store.stats()["bytes"]
    assert float(samples["cache_hit_ratio"]) == 1.0
    assert float(samples["cache_node_up"]) == 1
    assert float(samples["cache_ring_version"]) == 0
    assert float(samples['cache_operation_seconds_count{op="update"}']) == 2
    assert "# TYPE cache_operation_seconds histogram" in text
    # Replication, hints, migration and rate-limit counters: present, and counting.
    assert float(samples["cache_replicated_writes_total"]) >= 2
    assert float(samples["cache_replica_copies_missed_total"]) == 0
    assert float(samples["cache_hints_pending"]) == 0
    for name in ("pushed", "pulled", "dropped", "passes", "failures"):
        assert f"cache_migration_{name}_total" in samples
    assert "cache_ratelimit_counters" in samples
    assert float(samples['cache_ring_node_status{node="n1",status="up"}']) == 1
    assert float(samples['cache_ring_share{node="n1"}']) == 1.0


def test_schema_documents_the_api() -> None:
    r = Client().get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert r.status_code == 200
    assert r["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = data(r)
    yaml = Client().get("/api/schema/")
    assert yaml.status_code == 200
    assert yaml.content.startswith(b"openapi: 3.")
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for expected in ("/api/v1/batch/get", "/api/v1/stats", "/api/v1/cluster/ring", "/health"):
        assert expected in paths
    assert any(p.startswith("/api/v1/keys/") for p in paths)


def test_ring(api: Client) -> None:
    r = api.get("/api/v1/cluster/ring")
    assert r.status_code == 200
    body = data(r)
    assert sorted(body) == ["nodes", "replicas", "version", "vnodes"]
    assert body["version"] == 0
    assert body["replicas"] == cluster_settings.REPLICAS
    assert body["vnodes"] == cluster_settings.VNODES
    assert len(body["nodes"]) == 1
    (me,) = body["nodes"]
    assert sorted(me) == ["name", "status", "url", "weight"]
    assert (me["name"], me["weight"], me["status"]) == ("n1", 1, "up")
    assert isinstance(me["url"], str)
    assert r["X-Ring-Version"] == "0"


# Unknown routes and wrong methods -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/nope", "/api/v1/keys/", "/api/v1/keys", "/nope", "/api/v2/keys/a"]
)
def test_unknown_route_is_404_json(api: Client, path: str) -> None:
    assert path in assert_error(api.get(path), 404, "not_found")
    assert_error(api.post(path, {}, content_type=JSON), 404, "not_found")
    assert contents() == {}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("post", "/api/v1/keys/k", {"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
        ("get", "/api/v1/batch/get", {"POST"}),
        ("put", "/api/v1/batch/set", {"POST"}),
        ("delete", "/api/v1/batch/delete", {"POST"}),
        ("post", "/api/v1/stats", {"GET"}),
        ("get", "/api/v1/flush", {"POST"}),
        ("delete", "/api/v1/cluster/ring", {"GET"}),
        ("get", "/set", {"POST"}),
        ("post", "/get", {"GET", "HEAD"}),
        ("post", "/delete", {"DELETE"}),
        ("get", "/batch_set", {"POST"}),
        ("get", "/sync", {"POST"}),
        ("post", "/health", {"GET", "HEAD"}),
    ],
)
def test_wrong_method_is_405_json(api: Client, method: str, path: str, allowed: set[str]) -> None:
    seed("k", 1)
    before = snapshot()
    r = getattr(api, method)(path, {"key": "k", "value": 2}, content_type=JSON)
    assert_error(r, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in r["Allow"].split(",")}
    assert snapshot() == before


# Seed-compatible routes ---------------------------------------------------------------------------


class Rest:
    """The REST spelling of the calls the seed routes also offer."""

    batch_get = "/api/v1/batch/get"
    batch_set = "/api/v1/batch/set"

    @staticmethod
    def set(client: Client, key: str, body: dict[str, Any], **extra: Any) -> Any:
        return client.put(url(key), body, content_type=JSON, **extra)

    @staticmethod
    def get(client: Client, key: str) -> Any:
        return client.get(url(key))

    @staticmethod
    def delete(client: Client, key: str) -> Any:
        return client.delete(url(key))


class Seed:
    """The Go seed's spelling."""

    batch_get = "/batch_get"
    batch_set = "/batch_set"

    @staticmethod
    def set(client: Client, key: str, body: dict[str, Any], **extra: Any) -> Any:
        return client.post("/set", {"key": key, **body}, content_type=JSON, **extra)

    @staticmethod
    def get(client: Client, key: str) -> Any:
        return client.get("/get", {"key": key})

    @staticmethod
    def delete(client: Client, key: str) -> Any:
        return client.delete("/delete?key=" + quote(key, safe=""))


@pytest.mark.parametrize("spelling", [Rest, Seed], ids=["rest", "seed"])
def test_seed_and_rest_routes_answer_alike(api: Client, clock: FakeClock, spelling: Any) -> None:
    r = spelling.set(api, "a/b", {"value": {"v": [1, "ü"]}, "ttl": 10})
    assert r.status_code == 200
    version = data(r)["version"]
    assert data(r) == {"key": "a/b", "version": version, "copies": 1}
    assert r["ETag"] == f'"{version}"'

    r = spelling.get(api, "a/b")
    assert r.status_code == 200
    assert data(r) == {"key": "a/b", "value": {"v": [1, "ü"]}, "ttl": 10.0}
    assert r["ETag"] == f'"{version}"'
    assert r["X-TTL"] == "10.000"

    assert data(spelling.get(api, "missing")) == {
        "error": {"code": "not_found", "message": "no key 'missing'"}
    }
    before = snapshot()
    r = spelling.set(api, "a/b", {"value": 2}, headers={"If-None-Match": "*"})
    assert_error(r, 412, "precondition_failed")
    assert_error(spelling.set(api, "a/b", {"value": 2, "ttl": 0}), 400, "invalid_ttl")
    assert_error(spelling.set(api, "a/b", {"ttl": 5}), 400, "invalid_value")
    assert_error(spelling.set(api, "é" * 126, {"value": 1}), 400, "invalid_key")
    assert_error(spelling.set(api, "k", {"value": "x" * MIB}), 413, "value_too_large")
    assert snapshot() == before

    r = spelling.set(api, "a/b", {"value": 3}, headers={"If-Match": f'"{version}"'})
    assert r.status_code == 200
    assert stored("a/b") == 3

    items = [{"key": "x", "value": 1}, {"key": "y", "value": {"b64": "AAE="}}]
    r = api.post(spelling.batch_set, {"items": items}, content_type=JSON)
    assert data(r) == {"stored": 2, "failed": []}
    r = api.post(spelling.batch_get, {"keys": ["x", "y", "z"]}, content_type=JSON)
    assert data(r) == {"values": {"x": 1, "y": {"b64": "AAE="}}, "missing": ["z"], "failed": []}
    assert_error(
        api.post(spelling.batch_get, {"keys": "x"}, content_type=JSON), 400, "invalid_request"
    )

    r = spelling.delete(api, "a/b")
    assert r.status_code == 204
    assert r.content == b""
    assert data(spelling.delete(api, "a/b")) == {
        "error": {"code": "not_found", "message": "no key 'a/b'"}
    }
    assert set(contents()) == {"x", "y"}


def test_seed_routes_need_the_key(api: Client) -> None:
    seed("k", 1)
    before = snapshot()
    assert_error(api.get("/get"), 400, "invalid_key")
    assert_error(api.get("/get", {"key": ""}), 400, "invalid_key")
    assert_error(api.delete("/delete"), 400, "invalid_key")
    assert_error(api.post("/set", {"value": 1}, content_type=JSON), 400, "invalid_key")
    assert_error(api.post("/set", {"key": 5, "value": 1}, content_type=JSON), 400, "invalid_key")
    assert_error(api.post("/set", [1], content_type=JSON), 400, "invalid_request")
    assert snapshot() == before


def test_seed_health_matches_rest_health() -> None:
    expected = {"status": "ok", "node": "n1", "ring_version": 0, "member": "up"}
    assert data(Client().get("/health")) == expected


# /sync: versioned writes from other nodes ---------------------------------------------------------


@pytest.fixture
def peer() -> Client:
    return Client(headers={"X-Cluster-Secret": cluster_settings.SECRET})


def test_sync_stores_versioned_items_and_newer_wins(peer: Client, clock: FakeClock) -> None:
    items = [
        {"key": "k", "value": "new", "ttl": 30, "version": "2000-0-n2"},
        {"key": "bin", "value": {"b64": "AP8="}, "ttl": None, "version": "2000-1-n2"},
    ]
    r = peer.post("/sync", {"items": items}, content_type=JSON)
    assert r.status_code == 200
    assert data(r) == {"stored": 2, "skipped": 0}
    assert node.current().store.peek("k") == Entry(b'"new"', False, clock.now + 30, (2000, 0, "n2"))
    assert node.current().store.peek("bin") == Entry(b"\x00\xff", True, None, (2000, 1, "n2"))

    older = [{"key": "k", "value": "old", "version": "1999-5-n3"}]
    same = [{"key": "bin", "value": "replay", "version": "2000-1-n2"}]
    r = peer.post("/sync", {"items": older + same}, content_type=JSON)
    assert data(r) == {"stored": 0, "skipped": 2}
    assert json.loads(node.current().store.peek("k").value) == "new"
    assert node.current().store.peek("bin").value == b"\x00\xff"

    newer = [{"key": "k", "value": "newest", "version": "2000-0-n9"}]
    assert data(peer.post("/sync", {"items": newer}, content_type=JSON)) == {
        "stored": 1,
        "skipped": 0,
    }
    r = peer.get(url("k"))
    assert data(r)["value"] == "newest"
    assert r["ETag"] == '"2000-0-n9"'


def test_sync_older_than_a_local_write_is_skipped(api: Client, peer: Client) -> None:
    version = data(put(api, "k", {"value": "local"}))["version"]
    ms, counter, _ = parse_version(version)
    stale = [{"key": "k", "value": "stale", "version": f"{ms}-{counter}-a"}]
    assert data(peer.post("/sync", {"items": stale}, content_type=JSON)) == {
        "stored": 0,
        "skipped": 1,
    }
    assert stored("k") == "local"


@pytest.mark.parametrize(
    "items",
    [
        [{"key": "a", "value": 1, "version": "1-0-n2"}, {"key": "b", "value": 2}],
        [{"key": "a", "value": 1, "version": "1-0-n2"}, {"key": "b", "value": 2, "version": "x"}],
        [{"key": "a", "value": 1, "version": "1-0-n2"}, {"key": "b", "value": 2, "version": 7}],
        [
            {"key": "a", "value": 1, "version": "1-0-n2"},
            {"key": "", "value": 2, "version": "1-0-n"},
        ],
    ],
    ids=["missing-version", "bad-version", "number-version", "bad-key"],
)
def test_sync_with_a_bad_item_stores_nothing(peer: Client, items: list[Any]) -> None:
    seed("keep", 1)
    before = snapshot()
    r = peer.post("/sync", {"items": items}, content_type=JSON)
    assert r.status_code == 400
    assert data(r)["error"]["code"] in {"invalid_request", "invalid_key"}
    assert snapshot() == before


# Bad input: the error envelope, and nothing changes -----------------------------------------------

LONG_MULTIBYTE = "€" * 84  # 84 characters, 252 bytes of UTF-8
TOO_MANY = 1001


def _keys(n: int) -> list[str]:
    return [f"k{i}" for i in range(n)]


# (method, path, raw body, content type, status, code)
BAD_REQUESTS = [
    # Not JSON, or not a JSON object.
    ("put", "/api/v1/keys/k", b"{not json", JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": 1} {}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": "\xff"}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": NaN}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": Infinity}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": [-Infinity]}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": 1e999}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": NaN}', JSON, 400, "bad_json"),
    ("put", "/api/v1/keys/k", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "bad_json"),
    ("post", "/api/v1/batch/set", b"", JSON, 400, "invalid_request"),
    ("put", "/api/v1/keys/k", b"[1, 2]", JSON, 400, "invalid_request"),
    ("put", "/api/v1/keys/k", b'"value"', JSON, 400, "invalid_request"),
    ("put", "/api/v1/keys/k", b"null", JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/get", b"[]", JSON, 400, "invalid_request"),
    ("post", "/api/v1/keys/n/incr", b"[]", JSON, 400, "invalid_request"),
    ("post", "/api/v1/keys/n/incr", b"0", JSON, 400, "invalid_request"),
    ("patch", "/api/v1/keys/k", b"[]", JSON, 400, "invalid_request"),
    # Wrong types and missing members.
    ("put", "/api/v1/keys/k", b'{"ttl": 5}', JSON, 400, "invalid_value"),
    ("put", "/api/v1/keys/k", b'{"value": {"b64": "!!!"}}', JSON, 400, "invalid_value"),
    ("put", "/api/v1/keys/k", b'{"value": {"b64": "AAE"}}', JSON, 400, "invalid_value"),
    ("put", "/api/v1/keys/k", b'{"value": {"b64": 12}}', JSON, 400, "invalid_value"),
    ("put", "/api/v1/keys/k", b'{"value": "\\ud800"}', JSON, 400, "bad_json"),
    ("post", "/api/v1/keys/n/incr", b'{"delta": "1"}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/keys/n/incr", b'{"delta": 1.5}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/keys/n/incr", b'{"delta": 1.0}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/keys/n/incr", b'{"delta": true}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/keys/n/incr", b'{"delta": null}', JSON, 400, "invalid_request"),
    (
        "post",
        "/api/v1/keys/n/incr",
        b'{"delta": 9223372036854775808}',
        JSON,
        400,
        "invalid_request",
    ),
    ("post", "/api/v1/batch/get", b'{"keys": "k"}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/get", b"{}", JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/get", b'{"keys": {"k": 1}}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/delete", b'{"keys": null}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/set", b'{"items": {"key": "a"}}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/set", b'{"items": [["a", 1]]}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/set", b'{"items": ["a"]}', JSON, 400, "invalid_request"),
    ("post", "/api/v1/batch/set", b'{"keys": []}', JSON, 400, "invalid_request"),
    # Bad keys.
    ("get", "/api/v1/keys/a%20b", b"", JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/a%20b", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/tab%09", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/nul%00", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/c%01", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/del%7F", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/nel%C2%85", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/nbsp%C2%A0", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/ideo%E3%80%80", b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/" + "a" * 251, b'{"value": 1}', JSON, 400, "invalid_key"),
    ("put", "/api/v1/keys/" + quote(LONG_MULTIBYTE), b'{"value": 1}', JSON, 400, "invalid_key"),
    ("post", "/api/v1/keys/" + "a" * 251 + "/incr", b"{}", JSON, 400, "invalid_key"),
    ("delete", "/api/v1/keys/a%20b", b"", JSON, 400, "invalid_key"),
    ("patch", "/api/v1/keys/a%20b", b'{"ttl": 5}', JSON, 400, "invalid_key"),
    ("post", "/api/v1/batch/get", b'{"keys": ["k", ""]}', JSON, 400, "invalid_key"),
    ("post", "/api/v1/batch/get", b'{"keys": [1]}', JSON, 400, "invalid_key"),
    ("post", "/api/v1/batch/get", b'{"keys": ["\\ud800"]}', JSON, 400, "bad_json"),
    ("post", "/api/v1/batch/delete", b'{"keys": ["k", "a b"]}', JSON, 400, "invalid_key"),
    ("post", "/api/v1/batch/get", b'{"keys": ["a\\nb"]}', JSON, 400, "invalid_key"),
    ("post", "/set", b'{"key": "nl\\n", "value": 1}', JSON, 400, "invalid_key"),
    (
        "post",
        "/api/v1/batch/set",
        json.dumps({"items": [{"key": "new", "value": 1}, {"key": LONG_MULTIBYTE, "value": 1}]}),
        JSON,
        400,
        "invalid_key",
    ),
    ("post", "/set", b'{"key": "a\\u2028b", "value": 1}', JSON, 400, "invalid_key"),
    # Bad TTLs.
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": 0}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": 0.0}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": -5}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": "5"}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": true}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": false}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": [5]}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k", b'{"value": 1, "ttl": 315360001}', JSON, 400, "invalid_ttl"),
    (
        "put",
        "/api/v1/keys/k",
        b'{"value": 1, "ttl": 1' + b"0" * 400 + b"}",
        JSON,
        400,
        "invalid_ttl",
    ),
    ("patch", "/api/v1/keys/k", b"{}", JSON, 400, "invalid_ttl"),
    ("patch", "/api/v1/keys/k", b'{"ttl": 0}', JSON, 400, "invalid_ttl"),
    ("patch", "/api/v1/keys/k", b'{"ttl": "soon"}', JSON, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k?ttl=abc", b"\x00", OCTET, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k?ttl=0", b"\x00", OCTET, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k?ttl=-1", b"\x00", OCTET, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k?ttl=nan", b"\x00", OCTET, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k?ttl=inf", b"\x00", OCTET, 400, "invalid_ttl"),
    ("put", "/api/v1/keys/k?ttl=1e12", b"\x00", OCTET, 400, "invalid_ttl"),
    (
        "post",
        "/api/v1/batch/set",
        b'{"items": [{"key": "new", "value": 1}, {"key": "b", "value": 1, "ttl": -1}]}',
        JSON,
        400,
        "invalid_ttl",
    ),
    # Other bad members of a batch set: nothing of it is stored.
    (
        "post",
        "/api/v1/batch/set",
        b'{"items": [{"key": "new", "value": 1}, {"key": "b"}]}',
        JSON,
        400,
        "invalid_value",
    ),
    (
        "post",
        "/api/v1/batch/set",
        b'{"items": [{"key": "new", "value": 1}, {"key": "b", "value": {"b64": "*"}}]}',
        JSON,
        400,
        "invalid_value",
    ),
    (
        "post",
        "/api/v1/batch/set",
        b'{"items": [{"key": "new", "value": 1}, 7]}',
        JSON,
        400,
        "invalid_request",
    ),
    # Too large.
    ("put", "/api/v1/keys/k", json.dumps({"value": "x" * (MIB - 1)}), JSON, 413, "value_too_large"),
    ("put", "/api/v1/keys/k", b"\x00" * (MIB + 1), OCTET, 413, "value_too_large"),
    (
        "post",
        "/api/v1/batch/set",
        json.dumps({"items": [{"key": "new", "value": 1}, {"key": "b", "value": "x" * MIB}]}),
        JSON,
        413,
        "value_too_large",
    ),
    (
        "post",
        "/api/v1/batch/get",
        json.dumps({"keys": _keys(TOO_MANY)}),
        JSON,
        413,
        "batch_too_large",
    ),
    (
        "post",
        "/api/v1/batch/delete",
        json.dumps({"keys": ["k", *_keys(TOO_MANY)]}),
        JSON,
        413,
        "batch_too_large",
    ),
    (
        "post",
        "/api/v1/batch/set",
        json.dumps({"items": [{"key": k, "value": 1} for k in _keys(TOO_MANY)]}),
        JSON,
        413,
        "batch_too_large",
    ),
    # Media types.
    ("put", "/api/v1/keys/k", b"value=1", "text/plain", 415, "unsupported_media_type"),
    (
        "put",
        "/api/v1/keys/k",
        b"value=1",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
    ),
    ("post", "/api/v1/batch/set", b"\x00\x01", OCTET, 415, "unsupported_media_type"),
    ("post", "/api/v1/batch/get", b"<keys/>", "application/xml", 415, "unsupported_media_type"),
    ("post", "/api/v1/keys/n/incr", b"\x01", OCTET, 400, "invalid_request"),
    ("post", "/set", b'{"key": "k"}', "text/json", 415, "unsupported_media_type"),
    # Other headers.
    ("put", "/api/v1/keys/k", b'{"value": 2}', JSON, 412, "precondition_failed"),  # If-Match below
]


def _request_id(case: tuple[Any, ...]) -> str:
    method, path, body, _content_type, status, _code = case
    text = body if isinstance(body, str) else body[:40].decode("latin-1")
    return f"{status}-{method}-{path[:40]}-{text[:40]}"


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "code"),
    BAD_REQUESTS,
    ids=[_request_id(c) for c in BAD_REQUESTS],
)
def test_bad_input_answers_the_envelope_and_changes_nothing(
    api: Client, method: str, path: str, body: Any, content_type: str, status: int, code: str
) -> None:
    seed("k", "original", ttl=100)
    seed("n", 5)
    before = snapshot()
    headers = {"If-Match": '"not-a-version"'} if status == 412 else {}
    r = api.generic(method.upper(), path, body, content_type=content_type, headers=headers)
    assert_error(r, status, code)
    assert snapshot() == before
    assert set(contents()) == {"k", "n"}


def test_bad_input_on_an_octet_stream_get_is_still_json(api: Client) -> None:
    r = api.get(url("missing"), headers={"Accept": OCTET})
    assert_error(r, 404, "not_found")


def test_an_accept_that_admits_nothing_we_produce_is_406(api: Client) -> None:
    seed("k", 1)
    assert_error(api.get(url("k"), headers={"Accept": "text/html"}), 406, "not_acceptable")
    assert_error(api.get("/health", headers={"Accept": "text/html"}), 406, "not_acceptable")
    assert node.current().store.get("k") is not None
    # A browser's Accept ends with */*: it gets JSON.
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = api.get(url("k"), headers={"Accept": browser})
    assert r.status_code == 200
    assert r["Content-Type"] == "application/json"
    assert r.json()["value"] == 1
    assert api.get("/health", headers={"Accept": browser}).json()["status"] == "ok"


def test_format_query_parameter_is_honoured_for_the_schema(api: Client) -> None:
    r = api.get("/api/schema/?format=json")
    assert r.status_code == 200
    assert r.json()["openapi"].startswith("3.")


def test_hops_header_means_nothing_on_the_public_api(api: Client) -> None:
    # Node-to-node calls use the peer protocol (/internal/v1/), never the API with hops.
    seed("k", 1)
    for hops in ("many", "1", "5"):
        r = api.get(url("k"), headers={"X-Forwarded-Hops": hops})
        assert r.status_code == 200
        assert r.json()["value"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("put", "/api/v1/keys/k", json.dumps({"value": "x" * 100}), JSON),
        ("put", "/api/v1/keys/k", b"\x00" * 101, OCTET),
        (
            "post",
            "/api/v1/batch/set",
            json.dumps({"items": [{"key": "k", "value": "x" * 90}]}),
            JSON,
        ),
        ("post", "/set", json.dumps({"key": "k", "value": "x" * 100}), JSON),
        ("post", "/api/v1/batch/get", json.dumps({"keys": _keys(30)}), JSON),
    ],
)
def test_request_body_over_the_limit_is_413(
    api: Client, method: str, path: str, body: Any, content_type: str
) -> None:
    seed("k", "original")
    before = snapshot()
    with override_settings(CACHE_CLUSTER={"MAX_REQUEST_BYTES": 100}):
        r = api.generic(method.upper(), path, body, content_type=content_type)
    assert_error(r, 413, "request_too_large")
    assert snapshot() == before
    # Under the limit, the same kind of call works.
    with override_settings(CACHE_CLUSTER={"MAX_REQUEST_BYTES": 100}):
        r = api.put(url("k"), b"\x00" * 100, content_type=OCTET)
    assert r.status_code == 200
    assert node.current().store.peek("k").value == b"\x00" * 100


def test_if_none_match_other_than_star_is_refused_and_changes_nothing(api: Client) -> None:
    seed("k", 1)
    r = api.put(url("k"), {"value": 2}, content_type=JSON, headers={"If-None-Match": '"abc"'})
    assert_error(r, 400, "invalid_request")
    r = api.put(
        url("k"), {"value": 2}, content_type=JSON, headers={"If-None-Match": "*", "If-Match": "*"}
    )
    assert_error(r, 400, "invalid_request")
    assert api.get(url("k")).json()["value"] == 1


# No live owner, registry down -------------------------------------------------------------------


@pytest.fixture
def no_live_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ring names this node, but it is draining: nobody owns any key."""
    from nodes.ring import Ring, RingNode

    ring = Ring([RingNode("n1", "http://127.0.0.1:1", status="draining")], version=7)
    monkeypatch.setattr(node.current().membership, "_ring", ring)


def test_batches_with_no_live_owner_fail_every_key(api: Client, no_live_node: None) -> None:
    # Not "stored": 0 with nothing failed, which a client would take as done.
    r = api.post(
        "/api/v1/batch/set",
        {"items": [{"key": "a", "value": 1}, {"key": "b", "value": 2}]},
        content_type=JSON,
    )
    assert r.status_code == 200
    assert data(r) == {"stored": 0, "failed": ["a", "b"]}
    assert contents() == {}
    r = api.post("/api/v1/batch/get", {"keys": ["a", "b"]}, content_type=JSON)
    assert data(r) == {"values": {}, "missing": [], "failed": ["a", "b"]}
    r = api.post("/api/v1/batch/delete", {"keys": ["a"]}, content_type=JSON)
    assert data(r) == {"deleted": 0, "failed": ["a"]}
    assert_error(api.get(url("a")), 503, "unavailable")


def test_cluster_nodes_with_the_registry_down_is_503(api: Client) -> None:
    from django.db import OperationalError, connection

    assert api.get("/api/v1/cluster/nodes").status_code == 200  # caches the key's verdict

    def down(*args: Any) -> Any:
        raise OperationalError("could not connect to server")

    with connection.execute_wrapper(down):
        r = api.get("/api/v1/cluster/nodes")
    message = assert_error(r, 503, "unavailable")
    assert "could not connect" not in message


# -- the GET fast path ---------------------------------------------------------------------------


@pytest.fixture
def drf_dispatches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths that went through DRF's full dispatch."""
    from rest_framework.views import APIView

    seen: list[str] = []
    real = APIView.dispatch

    def counting(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(request.path)
        return real(self, request, *args, **kwargs)

    monkeypatch.setattr(APIView, "dispatch", counting)
    return seen


ANSWER_HEADERS = ("Content-Type", "ETag", "X-TTL", "X-Value-Type", "X-Version", "Vary")


@pytest.mark.parametrize("key", ["plain", "bin", "a/b:c", "missing", "ключ"])
def test_the_get_fast_path_answers_exactly_as_drf_does(make_key, drf_dispatches, key) -> None:
    seed("plain", {"n": 12345678901234567890123, "s": "x"})
    seed("bin", raw=b"\x00\xffraw")
    seed("a/b:c", [1, 2])
    seed("ключ", "значение")
    client = Client(HTTP_X_API_KEY=make_key("read"))
    fast = client.get(url(key))  # no Accept: the fast path
    assert drf_dispatches == []
    slow = client.get(url(key), HTTP_ACCEPT="application/json;q=1")  # DRF's dispatch
    assert len(drf_dispatches) == 1
    assert fast.status_code == slow.status_code
    assert fast.content == slow.content
    for name in ANSWER_HEADERS:
        assert fast.get(name) == slow.get(name), name
    assert fast["X-Ring-Version"] == slow["X-Ring-Version"]
    hits = node.current().store.stats()["hits"]
    assert hits == (0 if key == "missing" else 2)  # one store read per request


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"HTTP_X_API_KEY": ""}, 401),  # no API key
        ({"HTTP_X_API_KEY": "nope.nope"}, 401),  # unknown key
        ({"HTTP_ACCEPT": "text/html"}, 406),
        ({"HTTP_ACCEPT": "application/octet-stream"}, 200),
        ({"QUERY_STRING": "format=json"}, 200),
    ],
)
def test_other_gets_go_through_drf(make_key, drf_dispatches, headers, status) -> None:
    seed("k", 1)
    extra = {"HTTP_X_API_KEY": make_key("read"), **headers}
    r = Client().get(url("k"), **extra)
    assert r.status_code == status
    assert drf_dispatches == ["/api/v1/keys/k"]


def test_a_key_without_the_read_scope_goes_through_drf_and_is_refused(
    make_key, drf_dispatches
) -> None:
    seed("k", 1)
    r = Client(HTTP_X_API_KEY=make_key("write")).get(url("k"))
    assert r.status_code == 403
    assert data(r)["error"]["code"] == "forbidden"
    assert drf_dispatches == ["/api/v1/keys/k"]
    assert node.current().store.stats()["hits"] == 0  # the refused read touched nothing


def test_a_bad_key_goes_through_drf_and_is_refused(make_key, drf_dispatches) -> None:
    r = Client(HTTP_X_API_KEY=make_key("read")).get("/api/v1/keys/a%20b")
    assert r.status_code == 400
    assert data(r)["error"]["code"] == "invalid_key"
    assert len(drf_dispatches) == 1


# -- the batch get fast path ---------------------------------------------------------------------


BATCH_BODIES = [
    {"keys": ["plain", "bin", "missing", "ключ", "plain"]},  # a hit, binary, a miss, a repeat
    {"keys": []},
    {"keys": "plain"},  # not a list
    {"keys": ["a b"]},  # a bad key
    {"keys": [f"k{i}" for i in range(1001)]},  # over MAX_BATCH_KEYS
    ["plain"],  # not an object
    "{not json",
    '{"keys": ["x"], "n": ' + "9" * 5000 + "}",  # an integer too long for Python
]


@pytest.mark.parametrize("body", BATCH_BODIES)
def test_the_batch_get_fast_path_answers_exactly_as_drf_does(
    make_key, drf_dispatches, body
) -> None:
    seed("plain", {"n": 12345678901234567890123, "s": "x"})
    seed("bin", raw=b"\x00\xffraw")
    seed("ключ", "значение")
    text = body if isinstance(body, str) else json.dumps(body)
    client = Client(HTTP_X_API_KEY=make_key("read"))
    fast = client.post("/api/v1/batch/get", text, content_type=JSON)
    assert drf_dispatches == []
    slow = client.post(
        "/api/v1/batch/get", text, content_type=JSON, HTTP_ACCEPT="application/json;q=1"
    )
    assert len(drf_dispatches) == 1
    assert fast.status_code == slow.status_code
    assert fast.content == slow.content
    assert fast["Content-Type"] == slow["Content-Type"]
    assert fast["X-Ring-Version"] == slow["X-Ring-Version"]


@pytest.mark.parametrize(
    ("headers", "content_type", "status"),
    [
        ({"HTTP_X_API_KEY": ""}, JSON, 401),
        ({"HTTP_ACCEPT": "text/html"}, JSON, 406),
        ({}, "text/plain", 415),
        ({"QUERY_STRING": "format=json"}, JSON, 200),
    ],
)
def test_other_batch_gets_go_through_drf(
    make_key, drf_dispatches, headers, content_type, status
) -> None:
    extra = {"HTTP_X_API_KEY": make_key("read"), **headers}
    r = Client().post("/api/v1/batch/get", '{"keys": ["k"]}', content_type=content_type, **extra)
    assert r.status_code == status
    assert drf_dispatches == ["/api/v1/batch/get"]


def test_a_batch_get_without_the_read_scope_is_refused_by_drf(make_key, drf_dispatches) -> None:
    seed("k", 1)
    r = Client(HTTP_X_API_KEY=make_key("write")).post(
        "/api/v1/batch/get", '{"keys": ["k"]}', content_type=JSON
    )
    assert_error(r, 403, "forbidden")
    assert drf_dispatches == ["/api/v1/batch/get"]
    assert node.current().store.stats()["hits"] == 0


def test_the_seed_batch_get_takes_the_fast_path_and_batch_set_does_not(
    api: Client, drf_dispatches
) -> None:
    seed("k", 1)
    r = api.post("/batch_get", '{"keys": ["k"]}', content_type=JSON)
    assert data(r)["values"] == {"k": 1}
    assert drf_dispatches == []
    api.post("/api/v1/batch/set", '{"items": [{"key": "j", "value": 2}]}', content_type=JSON)
    assert drf_dispatches == ["/api/v1/batch/set"]


def test_a_batch_get_answers_in_the_order_asked(api: Client) -> None:
    for key in ("a", "b", "c"):
        seed(key, key)
    seed("bin", raw=b"\x00")
    keys = ["c", "nope", "bin", "a"]
    body = data(api.post("/api/v1/batch/get", {"keys": keys}, content_type=JSON))
    assert list(body["values"]) == ["c", "bin", "a"]  # not the order they were written
    assert body["values"]["bin"] == {"b64": "AA=="}
    assert body["missing"] == ["nope"]


# ratelimit/hit --------------------------------------------------------------------------------


def test_ratelimit_hit_counts_atomically_and_resets(api: Client) -> None:
    hit = "/api/v1/ratelimit/hit"
    answers = [
        data(api.post(hit, {"key": "rl:a", "rate": "2/m"}, content_type=JSON)) for _ in range(3)
    ]
    assert [a["allowed"] for a in answers] == [True, True, False]
    assert answers[0] == {
        "allowed": True,
        "limit": 2,
        "remaining": 1,
        "reset_after": answers[0]["reset_after"],
        "retry_after": 0.0,
    }
    assert 0 < answers[2]["retry_after"] <= 60
    bucket = {"key": "rl:b", "rate": "1/h", "algorithm": "token_bucket", "burst": 3}
    assert [data(api.post(hit, bucket, content_type=JSON))["allowed"] for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    reset = data(api.post(hit, {"key": "rl:a", "rate": "2/m", "reset": True}, content_type=JSON))
    assert reset["remaining"] == 2
    assert data(api.post(hit, {"key": "rl:a", "rate": "2/m"}, content_type=JSON))["allowed"]
    assert api.get(url("rl:a")).status_code == 404  # counters are not user keys


@pytest.mark.parametrize(
    "body",
    [
        {"rate": "2/m"},
        {"key": "a b", "rate": "2/m"},
        {"key": "k"},
        {"key": "k", "rate": "lots"},
        {"key": "k", "rate": "2/m", "algorithm": "leaky"},
        {"key": "k", "rate": "2/m", "cost": -1},
        {"key": "k", "rate": "2/m", "cost": True},
        {"key": "k", "rate": "2/m", "burst": 0},
        {"key": "k", "rate": "2/m", "reset": "yes"},
        {"key": "k", "limit": 5, "period": "soon"},
    ],
)
def test_ratelimit_hit_refuses_bad_input(api: Client, body: dict[str, Any]) -> None:
    response = api.post("/api/v1/ratelimit/hit", body, content_type=JSON)
    assert response.status_code == 400, response.content
    assert data(response)["error"]["code"] in ("invalid_key", "invalid_request")


def test_ratelimit_hit_needs_the_write_scope(make_client: Any) -> None:
    reader = make_client("read")
    response = reader.post("/api/v1/ratelimit/hit", {"key": "k", "rate": "2/m"}, content_type=JSON)
    assert_error(response, 403, "forbidden")


def test_metrics_count_admin_requests_and_database_queries(make_key: Any) -> None:
    make_key("read")  # a query through the monitored database engine
    Client().get("/admin/login/")
    text = Client().get("/metrics").content.decode()
    assert "django_http_requests_total_by_method_total" in text  # the admin's stack
    assert 'django_db_execute_total{alias="default"' in text


def test_metrics_give_each_node_s_heartbeat_age(db: None) -> None:
    import datetime as dt

    from django.utils import timezone

    from nodes.models import Node

    Node.objects.create(
        name="hb", url="http://127.0.0.1:1", last_heartbeat=timezone.now() - dt.timedelta(seconds=5)
    )
    Node.objects.create(name="never", url="http://127.0.0.1:2")
    text = Client().get("/metrics").content.decode()
    [line] = [
        x for x in text.splitlines() if x.startswith('cache_node_heartbeat_age_seconds{node="hb"}')
    ]
    assert 5 <= float(line.rsplit(" ", 1)[1]) < 60
    assert 'cache_node_heartbeat_age_seconds{node="never"}' not in text


def test_metrics_parse_as_prometheus_text_and_move_with_traffic(api: Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = Client().get("/metrics").content.decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = samples()
    put(api, "m1", {"value": 1})
    api.get(url("m1"))
    api.get(url("nope"))
    after = samples()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("cache_sets_total") == 1
    assert delta("cache_hits_total") == 1
    assert delta("cache_misses_total") == 1
    assert delta("cache_replicated_writes_total") == 1
    assert delta("cache_operation_seconds_count", op="retrieve") == 2
    assert after[("cache_items", ())] >= 1
    assert ("cache_ring_share", (("node", "n1"),)) in after
