"""The coordinator's side of the peer protocol: calls from this node to the other nodes.

Every call is an internal request to the owner's ``cacheapi.peer.server``: it carries the
cluster secret, and the callee serves it from its own store and never calls another node
(docs/architecture.md, the request path). Calls ride streams (``cacheapi.peer.transport``)
where the owner serves them, else one ``POST /internal/v1/<op>`` each; every call has a timeout.

``send`` puts a call on the wire and returns a ``Pending`` at once; the single-key methods wait
for the answer, while a batch sends to every owner first and reads the answers after
(``Router._fan_out``). Failures come back as the cache's own errors (``cacheapi.errors``):
``PeerUnavailable`` (an ``Unavailable``) when the peer does not answer, ``BadGateway`` when it
answers as no node of this cluster should, and the peer's own error code otherwise.

A peer that timed out is *suspect* for ``retry_after`` seconds: calls to it fail at once
instead of each waiting out the timeout (a stopped process keeps its connections open, so
nothing else would tell), and the first call after that tries it again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson

from cacheapi import errors, values
from cacheapi.peer import frames
from cacheapi.peer.frames import PREFIX, STREAM_OP, STREAM_PROTOCOL
from cacheapi.peer.transport import Call, Response, StreamsRefused, Transport, timed_out
from cacheapi.peer.wire import (
    INTERNAL_HEADER,
    SECRET_HEADER,
    VERSION_HEADER,
    decode_value,
    decode_version,
    encode_value,
    encode_version,
    parse_hit,
)
from cacheapi.store import Hit, Version
from ratelimit import algorithms
from ratelimit.algorithms import Decision
from ratelimit.rates import Rate

log = logging.getLogger(__name__)

T = TypeVar("T")

# Answers that say the call itself was wrong (secret, path, method, framing), not the key or
# value: a coordinator reports them as a bad gateway, never as the client's own mistake.
_CALL_ERRORS = frozenset(
    {"forbidden", "unknown_operation", "method_not_allowed", "length_required", "bad_json"}
)


class PeerUnavailable(errors.Unavailable):
    """The peer did not answer in time (refused, reset, timed out, or suspect)."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} unavailable: {reason}")
        self.node = node


class _Suspects:
    """Peers that timed out lately, by name: calls to them fail fast until ``retry_after``
    has passed, then one call at a time goes through to try the peer again."""

    def __init__(self, retry_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, name: str) -> None:
        """Raise PeerUnavailable while ``name`` is suspect; past its time, let this one call
        through (and hold the others back for another period meanwhile)."""
        until = self._until.get(name)
        if until is None:
            return
        with self._lock:
            now = self._clock()
            until = self._until.get(name)
            if until is None:
                return
            if now < until:
                raise PeerUnavailable(name, "it timed out moments ago")
            self._until[name] = now + self.retry_after  # this call is the trial

    def timed_out(self, name: str) -> None:
        with self._lock:
            self._until[name] = self._clock() + self.retry_after

    def answered(self, name: str) -> None:
        if name in self._until:
            with self._lock:
                self._until.pop(name, None)


class PeerClient:
    def __init__(
        self,
        *,
        secret: str,
        timeout: float,
        ca_certs: str | None = None,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = Transport(timeout=timeout, ca_certs=ca_certs)
        self.timeout = timeout
        self.suspects = _Suspects(retry_after, clock)
        self._headers = {SECRET_HEADER: secret, "Content-Type": "application/json"}
        self._upgrade = (PREFIX + STREAM_OP, {SECRET_HEADER: secret}, STREAM_PROTOCOL)

    def send(
        self,
        node: Any,
        op: str,
        body: dict[str, Any] | bytes,
        parse: Callable[[Any, Response], T],
        timeout: float | None = None,
    ) -> Pending[T]:
        """Send ``op`` (its JSON body, or the bytes of a binary one) to the owner: as a frame
        on a stream (an upgraded connection, kept and reused) where the owner serves streams,
        else as ``POST /internal/v1/<op>``. Raises PeerUnavailable if it cannot be sent.

        ``parse(node, response)`` turns the answer into the result; it may raise KeyError,
        TypeError or ValueError on a malformed answer, which the caller gets as BadGateway."""
        self.suspects.check(node.name)
        url = node.url.rstrip("/")
        payload = body if isinstance(body, bytes) else values.dumps(body)
        try:
            try:
                call = self._transport.send_frame(url, self._upgrade, op, payload, timeout)
            except StreamsRefused:  # a node that serves HTTP only (gthread), or refused
                call = self._transport.send(
                    url, "POST", PREFIX + op, self._headers, payload, timeout
                )
        except OSError as exc:
            log.warning("internal %s to %s failed: %s", op, node.name, exc)
            raise PeerUnavailable(node.name, str(exc)) from exc
        return Pending(self, node, op, call, parse)

    # Single keys.
    def get(self, node: Any, key: str, timeout: float | None = None) -> Hit | None:
        return self.start_get(node, key, timeout).result()

    def start_get(self, node: Any, key: str, timeout: float | None = None) -> Pending[Hit | None]:
        return self.send(node, "get", {"key": key}, _parse_get, timeout)

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
            body["if_version"] = encode_version(if_version)
        return self.send(node, "set", body, _parse_set).result()

    def start_put(
        self, node: Any, key: str, value: bytes, binary: bool, ttl: float | None, version: Version
    ) -> Pending[Version | None]:
        """A replicated write with the coordinator's version (last write wins on the owner):
        the compact ``put`` (``frames.encode_put``: the value raw, no JSON either way), or a
        versioned ``set`` for what that layout cannot carry (a node name over 255 bytes)."""
        try:
            payload = frames.encode_put(key, value, binary, ttl, version)
        except ValueError:  # a node name the layout cannot carry
            pass
        else:
            return self.send(node, "put", payload, functools.partial(_parse_put, version))
        body = {
            "key": key,
            "value": encode_value(value, binary),
            "binary": binary,
            "ttl": ttl,
            "version": encode_version(version),
        }
        return self.send(node, "set", body, _parse_set)

    def start_delete(self, node: Any, key: str, version: Version | None = None) -> Pending[bool]:
        body: dict[str, Any] = {"key": key}
        if version is not None:
            body["version"] = encode_version(version)
        return self.send(node, "delete", body, _field("deleted", bool))

    def delete(self, node: Any, key: str) -> bool:
        return self.start_delete(node, key).result()

    def start_touch(self, node: Any, key: str, ttl: float | None) -> Pending[bool]:
        return self.send(node, "touch", {"key": key, "ttl": ttl}, _field("touched", bool))

    def touch(self, node: Any, key: str, ttl: float | None) -> bool:
        return self.start_touch(node, key, ttl).result()

    def incr(self, node: Any, key: str, delta: int) -> tuple[int, Version, float | None] | None:
        """The new value, its version and the TTL it has left; None if the key is absent."""
        return self.send(node, "incr", {"key": key, "delta": delta}, _parse_incr).result()

    # Batches and cluster-wide calls: sent now, read later.
    def start_get_many(
        self, node: Any, keys: list[str], timeout: float | None = None
    ) -> Pending[dict[str, Any]]:
        """The found keys' wire values (as ``values.to_wire`` makes them), never re-parsed: the
        stored JSON text goes out as an ``orjson.Fragment``."""
        return self.send(node, "get_many", {"keys": keys}, _parse_get_many, timeout)

    def start_set_many(
        self,
        node: Any,
        items: list[tuple[str, bytes, bool, float | None]],
        version: Version | None = None,
    ) -> Pending[int]:
        body: dict[str, Any] = {
            "items": [[k, encode_value(v, b), b, ttl] for k, v, b, ttl in items]
        }
        if version is not None:
            body["version"] = encode_version(version)
        return self.send(node, "set_many", body, _field("stored", int))

    def start_delete_many(
        self, node: Any, keys: list[str], version: Version | None = None
    ) -> Pending[list[str]]:
        """The keys whose live entry the owner removed."""
        body: dict[str, Any] = {"keys": keys}
        if version is not None:
            body["version"] = encode_version(version)
        return self.send(node, "delete_many", body, _parse_removed)

    def start_scan(
        self, node: Any, owner: str, ring_version: int, cursor: int, limit: int
    ) -> Pending[tuple[list[Any], int | None, int]]:
        """Entries in ``limit`` of the node's store slots from ``cursor`` that ``owner`` owns:
        (items as ``sync`` takes them, the next cursor or None, the store's layout number)."""
        body = {"owner": owner, "ring_version": ring_version, "cursor": cursor, "limit": limit}
        return self.send(node, "scan", body, _parse_scan)

    def start_sync(
        self, node: Any, items: list[tuple[str, bytes, bool, float | None, Version]]
    ) -> Pending[int]:
        body = {
            "items": [
                [k, encode_value(v, b), b, ttl, encode_version(version)]
                for k, v, b, ttl, version in items
            ]
        }
        return self.send(node, "sync", body, _field("stored", int))

    def ratelimit(
        self,
        node: Any,
        key: str,
        algorithm: str,
        rate: Rate,
        cost: int,
        burst: int | None,
        timeout: float | None = None,
        reset: bool = False,
    ) -> Decision:
        body = {
            "key": key,
            "algorithm": algorithm,
            "limit": rate.limit,
            "period": rate.period,
            "cost": cost,
            "burst": burst,
            "reset": reset,
        }
        return self.send(node, "ratelimit", body, _parse_decision, timeout).result()

    def start_stats(self, node: Any) -> Pending[dict[str, Any]]:
        return self.send(node, "stats", {}, _parse_json)

    def start_clear(self, node: Any) -> Pending[int]:
        return self.send(node, "clear", {}, _field("flushed", int))

    def close(self) -> None:
        self._transport.close()


class Pending(Generic[T]):
    """An internal call on the wire. ``result()`` waits for the answer (within the call's
    timeout) and parses it; ``close()`` drops a call whose answer is no longer wanted."""

    __slots__ = ("_call", "_client", "_parse", "node", "op")

    def __init__(
        self,
        client: PeerClient,
        node: Any,
        op: str,
        call: Call,
        parse: Callable[[Any, Response], T],
    ) -> None:
        self._client = client
        self.node = node
        self.op = op
        self._call = call
        self._parse = parse

    def result(self) -> T:
        name = self.node.name
        try:
            response = self._call.response()
        except OSError as exc:
            log.warning("internal %s to %s failed: %s", self.op, name, exc)
            if timed_out(exc):
                self._client.suspects.timed_out(name)
            raise PeerUnavailable(name, str(exc)) from exc
        self._client.suspects.answered(name)
        if response.headers.get(INTERNAL_HEADER) != "1":
            raise errors.BadGateway(
                f"{name} answered {response.status} to an internal call without "
                f"{INTERNAL_HEADER}: not its internal app (an older version, or a server error)"
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


def _parse_get(node: Any, response: Response) -> Hit | None:
    if _is_miss(response):
        return None
    _expect_ok(node, response)
    return parse_hit(response.headers, response.data)


def _parse_put(version: Version, node: Any, response: Response) -> Version:
    """A ``put`` answers only its status: the version is the one the coordinator sent."""
    _expect_ok(node, response)
    return version


def _parse_set(node: Any, response: Response) -> Version | None:
    if response.status == 412:
        return None
    _expect_ok(node, response)
    return _version(response.headers.get(VERSION_HEADER, ""))


def _parse_incr(node: Any, response: Response) -> tuple[int, Version, float | None] | None:
    if _is_miss(response):
        return None
    answer = _parse_json(node, response)
    value, ttl = answer["value"], answer.get("ttl")
    if type(value) is not int:
        raise TypeError("'value' is not an int")
    if ttl is not None and type(ttl) not in (int, float):
        raise TypeError("'ttl' is not a number")
    return value, _version(answer["version"]), ttl


def _parse_decision(node: Any, response: Response) -> Decision:
    return algorithms.from_wire(_parse_json(node, response))


def _parse_removed(node: Any, response: Response) -> list[str]:
    removed = _parse_json(node, response)["removed"]
    if not isinstance(removed, list) or not all(type(k) is str for k in removed):
        raise TypeError("'removed' is not a list of keys")
    return removed


def _parse_scan(node: Any, response: Response) -> tuple[list[Any], int | None, int]:
    answer = _parse_json(node, response)
    items, cursor, layout = answer["items"], answer["cursor"], answer["layout"]
    if not isinstance(items, list) or type(layout) is not int:
        raise TypeError("'items' must be a list and 'layout' a number")
    if cursor is not None and type(cursor) is not int:
        raise TypeError("'cursor' must be a number or null")
    parsed = []
    for key, text, binary, ttl, version in items:
        value, binary = decode_value(text, binary)
        if ttl is not None and type(ttl) not in (int, float):
            raise TypeError("'ttl' is not a number")
        parsed.append((key, value, binary, ttl, _version(version)))
    return parsed, cursor, layout


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
    try:
        return decode_version(text)
    except errors.InvalidRequest as exc:
        raise ValueError(str(exc)) from exc


def _malformed(node: Any, what: str) -> errors.BadGateway:
    return errors.BadGateway(f"{node.name} sent a malformed answer to {what}")


def _relay(node: Any, response: Response) -> errors.CacheError:
    """The peer's error, with its code; one that says the call itself was wrong (secret, path,
    framing), or the peer's own failure, is a bad gateway for the client, not its mistake."""
    try:
        error = values.loads(response.data)["error"]
        code, message = error["code"], error["message"]
    except (values.DecodeError, KeyError, TypeError):
        return errors.BadGateway(f"{node.name} answered {response.status}")
    if not isinstance(code, str) or code not in errors.STATUS:
        return errors.BadGateway(f"{node.name} answered {response.status} ({code!r})")
    if code in _CALL_ERRORS or (response.status == 413 and code == "request_too_large"):
        return errors.BadGateway(f"{node.name} refused an internal call: {message}")
    if response.status >= 500 and response.status != 503:  # its own failure, not the client's
        return errors.BadGateway(f"{node.name} failed: {message}")
    if code == errors.Joining.code:
        return errors.Joining(f"{node.name}: {message}")
    return errors.Relayed(code, f"{node.name}: {message}")
