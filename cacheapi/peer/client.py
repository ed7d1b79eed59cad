"""Calls from a coordinating node to the other nodes of the ring.

Every call is an *internal request*: it carries the cluster secret, and the callee serves it
from its own store and never calls another node (docs/architecture.md, the request path). Store
operations go to the owner's internal app (``POST /internal/v1/<op>``, ``cacheapi.internal``);
calls that need the full view (cluster stats, flush) go to the public API with
``X-Forwarded-Hops: 1``, which tells the views to serve them locally. Connections are pooled and
kept alive per peer; every call has a timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson

from cacheapi import errors, values
from cacheapi.peer.server import INTERNAL_HEADER, STREAM_OP, STREAM_PROTOCOL, encode_value
from cacheapi.peer.server import PREFIX as INTERNAL_PREFIX
from cacheapi.peer.transport import Call, Response, StreamsRefused, Transport
from cacheapi.store import Entry
from cacheapi.store.versions import Version, format_version, parse_version

log = logging.getLogger(__name__)

HOPS_HEADER = "X-Forwarded-Hops"
SECRET_HEADER = "X-Cluster-Secret"
RING_HEADER = "X-Ring-Version"
T = TypeVar("T")

# Answers that say the call itself was wrong (secret, path, method, framing), not the key or
# value: a coordinator reports them as a bad gateway, never as the client's own mistake.
_CALL_ERRORS = frozenset(
    {"forbidden", "unknown_operation", "method_not_allowed", "length_required", "bad_json"}
)


class PeerUnavailable(Exception):
    """The peer did not answer in time (refused, reset, timed out)."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} unavailable: {reason}")
        self.node = node


class PeerError(errors.CacheError):
    """A peer answered with an error envelope; it is relayed with the same status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PeerClient:
    def __init__(
        self,
        *,
        secret: str,
        timeout: float,
        clock_now: Any,
        ring_version: Any = lambda: 0,
        ca_certs: str | None = None,
    ) -> None:
        self._transport = Transport(timeout=timeout, ca_certs=ca_certs)
        self._secret = secret
        self._now = clock_now  # the store's clock, to turn a remaining TTL into expires_at
        self._ring_version = ring_version
        self.timeout = timeout
        self._internal_headers = {SECRET_HEADER: secret, "Content-Type": "application/json"}
        self._upgrade = (INTERNAL_PREFIX + STREAM_OP, {SECRET_HEADER: secret}, STREAM_PROTOCOL)

    def call(self, node: Any, method: str, path: str) -> Any:
        """A call to the public API, served by the peer itself (hops): the parsed JSON answer
        on a 200, else the relayed error. Raises PeerUnavailable if the node does not answer."""
        headers = {
            SECRET_HEADER: self._secret,
            HOPS_HEADER: "1",
            RING_HEADER: str(self._ring_version()),
        }
        try:
            response = self._transport.send(node.url.rstrip("/"), method, path, headers).response()
        except OSError as exc:
            log.warning("call to %s %s failed: %s", node.name, path, exc)
            raise PeerUnavailable(node.name, str(exc)) from exc
        if response.status != 200:
            raise _relay(node, response)
        try:
            return values.loads(response.data) if response.data else None
        except values.DecodeError as exc:
            raise _malformed(node, path) from exc

    # The store operations, as internal calls (``cacheapi.internal``). ``send`` puts a call on
    # the wire and returns at once; the single-key methods wait for the answer, and a batch
    # sends to every owner first and then reads the answers (``Router._fan_out``).
    def send(
        self, node: Any, op: str, body: dict[str, Any], parse: Callable[[Any, Response], T]
    ) -> Pending[T]:
        """Send ``op`` to the owner's internal app: as a frame on a stream (an upgraded
        connection, kept and reused) where the owner serves streams, else as
        ``POST /internal/v1/<op>``. Raises PeerUnavailable if it cannot be sent.

        ``parse(node, response)`` turns the answer into the result; it may raise KeyError,
        TypeError or ValueError on a malformed answer, which the caller gets as a 502."""
        url = node.url.rstrip("/")
        payload = values.dumps(body)
        try:
            try:
                call = self._transport.send_frame(url, self._upgrade, op, payload)
            except StreamsRefused:  # a node that serves HTTP only (gthread), or refused
                call = self._transport.send(
                    url, "POST", INTERNAL_PREFIX + op, self._internal_headers, payload
                )
        except OSError as exc:
            log.warning("internal %s to %s failed: %s", op, node.name, exc)
            raise PeerUnavailable(node.name, str(exc)) from exc
        return Pending(node, op, call, parse)

    def get(self, node: Any, key: str) -> Entry | None:
        return self.send(node, "get", {"key": key}, self._parse_get).result()

    def _parse_get(self, node: Any, response: Response) -> Entry | None:
        if _is_miss(response):
            return None
        _expect_ok(node, response)
        kind = response.headers.get("X-Value-Type")
        ttl = response.headers.get("X-TTL", "none")
        if kind not in ("json", "binary"):
            raise ValueError(f"X-Value-Type {kind!r}")
        return Entry(
            value=response.data,
            binary=kind == "binary",
            expires_at=None if ttl == "none" else self._now() + float(ttl),
            version=_version(response.headers.get("X-Version")),
        )

    def set(
        self,
        node: Any,
        key: str,
        value: bytes,
        binary: bool,
        ttl: float | None,
        *,
        if_absent: bool = False,
        if_version: Version | None = None,
    ) -> Version | None:
        """Set (or add with ``if_absent``, compare-and-set with ``if_version``); None when
        the condition does not hold."""
        body: dict[str, Any] = {
            "key": key,
            "value": encode_value(value, binary),
            "binary": binary,
            "ttl": ttl,
        }
        if if_absent:
            body["if_absent"] = True
        if if_version is not None:
            body["if_version"] = format_version(if_version)
        return self.send(node, "set", body, _parse_set).result()

    def delete(self, node: Any, key: str) -> bool:
        return self.send(node, "delete", {"key": key}, _field("deleted", bool)).result()

    def touch(self, node: Any, key: str, ttl: float | None) -> bool:
        body = {"key": key, "ttl": ttl}
        return self.send(node, "touch", body, _field("touched", bool)).result()

    def incr(self, node: Any, key: str, delta: int) -> tuple[int, Version] | None:
        return self.send(node, "incr", {"key": key, "delta": delta}, _parse_incr).result()

    def start_get_many(self, node: Any, keys: list[str]) -> Pending[dict[str, Any]]:
        """The found keys' wire values (as ``values.to_wire`` makes them), never re-parsed: the
        stored JSON text goes out as an ``orjson.Fragment``."""
        return self.send(node, "get_many", {"keys": keys}, _parse_get_many)

    def start_set_many(
        self, node: Any, items: list[tuple[str, bytes, bool, float | None]]
    ) -> Pending[int]:
        body = {"items": [[k, encode_value(v, b), b, ttl] for k, v, b, ttl in items]}
        return self.send(node, "set_many", body, _field("stored", int))

    def start_delete_many(self, node: Any, keys: list[str]) -> Pending[int]:
        return self.send(node, "delete_many", {"keys": keys}, _field("deleted", int))


class Pending(Generic[T]):
    """An internal call on the wire. ``result()`` waits for the answer (within the call's
    timeout) and parses it; ``close()`` drops a call whose answer is no longer wanted."""

    __slots__ = ("_call", "_parse", "node", "op")

    def __init__(self, node: Any, op: str, call: Call, parse: Callable[[Any, Response], T]) -> None:
        self.node = node
        self.op = op
        self._call = call
        self._parse = parse

    def result(self) -> T:
        try:
            response = self._call.response()
        except OSError as exc:
            log.warning("internal %s to %s failed: %s", self.op, self.node.name, exc)
            raise PeerUnavailable(self.node.name, str(exc)) from exc
        if response.headers.get(INTERNAL_HEADER) != "1":
            raise PeerError(
                502,
                "bad_gateway",
                f"{self.node.name} answered {response.status} to an internal call without "
                f"{INTERNAL_HEADER}: not its internal app (an older version, or a server error)",
            )
        try:
            return self._parse(self.node, response)
        except (KeyError, TypeError, ValueError) as exc:  # orjson.JSONDecodeError included
            raise _malformed(self.node, self.op) from exc

    def close(self) -> None:
        self._call.close()


def _error_code(response: Response) -> str | None:
    try:
        code = orjson.loads(response.data)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def _is_miss(response: Response) -> bool:
    """A 404 for the key, as opposed to a 404 for the path or the operation."""
    return response.status == 404 and _error_code(response) == "not_found"


def _expect_ok(node: Any, response: Response) -> None:
    if response.status != 200:
        raise _relay(node, response)


def _parse_json(node: Any, response: Response) -> dict[str, Any]:
    _expect_ok(node, response)
    answer = orjson.loads(response.data)
    if not isinstance(answer, dict):
        raise TypeError("the answer is not a JSON object")
    return answer


def _field(name: str, kind: type[T]) -> Callable[[Any, Response], T]:
    """A parser for answers of one member of exactly type ``kind`` (``{"deleted": 3}``)."""

    def parse(node: Any, response: Response) -> T:
        value = _parse_json(node, response)[name]
        if type(value) is not kind:
            raise TypeError(f"{name!r} is not a {kind.__name__}")
        return value

    return parse


def _parse_set(node: Any, response: Response) -> Version | None:
    if response.status == 412:
        return None
    _expect_ok(node, response)
    return _version(response.headers.get("X-Version"))


def _parse_incr(node: Any, response: Response) -> tuple[int, Version] | None:
    if _is_miss(response):
        return None
    answer = _parse_json(node, response)
    value = answer["value"]
    if type(value) is not int:
        raise TypeError("'value' is not an int")
    return value, _version(answer["version"])


def _parse_get_many(node: Any, response: Response) -> dict[str, Any]:
    answer = _parse_json(node, response)
    texts, blobs = answer["values"], answer["binary"]
    if not (isinstance(texts, dict) and isinstance(blobs, dict)):
        raise TypeError("'values' and 'binary' must be objects")
    if not all(type(t) is str for t in texts.values()) or not all(
        type(t) is str for t in blobs.values()
    ):
        raise TypeError("every value must be a string")
    found: dict[str, Any] = {k: orjson.Fragment(text) for k, text in texts.items()}
    found.update((k, {"b64": text}) for k, text in blobs.items())
    return found


def _version(text: Any) -> Version:
    if not isinstance(text, str):
        raise TypeError("the write version is missing")
    return parse_version(text)  # ValueError if malformed


def _malformed(node: Any, what: str) -> PeerError:
    return PeerError(502, "bad_gateway", f"{node.name} sent a malformed answer to {what}")


def _relay(node: Any, response: Response) -> errors.CacheError:
    """The peer's error, with its status and code; one that says the call itself was wrong
    (secret, path, framing) is a bad gateway for the client, not the client's mistake."""
    try:
        error = values.loads(response.data)["error"]
        code, message = error["code"], error["message"]
    except (values.DecodeError, KeyError, TypeError):
        return PeerError(502, "bad_gateway", f"{node.name} answered {response.status}")
    if code in _CALL_ERRORS or (response.status == 413 and code == "request_too_large"):
        return PeerError(502, "bad_gateway", f"{node.name} refused an internal call: {message}")
    if response.status >= 500 and response.status != 503:  # its own failure, not the client's
        return PeerError(502, "bad_gateway", f"{node.name} failed: {message}")
    return PeerError(response.status, code, f"{node.name}: {message}")
