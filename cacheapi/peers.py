"""Calls from a coordinating node to the other nodes of the ring.

Every call is an *internal request*: it carries the cluster secret and ``X-Forwarded-Hops: 1``,
so the callee serves it from its own store and never forwards it again (DESIGN.md, Data path).
Connections are pooled and kept alive per peer; every call has a timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson

from cacheapi import errors, values
from cacheapi.internal import INTERNAL_HEADER, encode_value
from cacheapi.internal import PREFIX as INTERNAL_PREFIX
from cacheapi.store import Entry
from cacheapi.transport import Call, Response, Transport
from cacheapi.versions import Version, format_version, parse_version

log = logging.getLogger(__name__)

HOPS_HEADER = "X-Forwarded-Hops"
SECRET_HEADER = "X-Cluster-Secret"
RING_HEADER = "X-Ring-Version"
T = TypeVar("T")


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

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {
            SECRET_HEADER: self._secret,
            HOPS_HEADER: "1",
            RING_HEADER: str(self._ring_version()),
            "Content-Type": "application/json",
        }
        if extra:
            headers.update(extra)
        return headers

    def request(
        self,
        node: Any,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One internal call; raises PeerUnavailable if the node does not answer."""
        payload = values.dumps(body) if body is not None else None
        try:
            return self._transport.request(
                node.url.rstrip("/"), method, path, self._headers(headers), payload
            )
        except OSError as exc:
            log.warning("call to %s %s failed: %s", node.name, path, exc)
            raise PeerUnavailable(node.name, str(exc)) from exc

    def call(self, node: Any, method: str, path: str, body: Any = None, ok: tuple = (200,)) -> Any:
        """A JSON call: the parsed body on an expected status, else the relayed error."""
        response = self.request(node, method, path, body)
        if response.status in ok:
            return values.loads(response.data) if response.data else None
        raise _relay(node, response)

    # The store operations, as internal calls (``cacheapi.internal``). ``send`` puts a call on
    # the wire and returns at once; the single-key methods wait for the answer, and a batch
    # sends to every owner first and then reads the answers (``Router._fan_out``).
    def send(
        self, node: Any, op: str, body: dict[str, Any], parse: Callable[[Any, Response], T]
    ) -> Pending[T]:
        """Send ``POST /internal/v1/<op>``; raises PeerUnavailable if it cannot be sent."""
        try:
            call = self._transport.send(
                node.url.rstrip("/"),
                "POST",
                INTERNAL_PREFIX + op,
                self._headers(),
                values.dumps(body),
            )
        except OSError as exc:
            log.warning("internal %s to %s failed: %s", op, node.name, exc)
            raise PeerUnavailable(node.name, str(exc)) from exc
        return Pending(node, op, call, parse)

    def get(self, node: Any, key: str) -> Entry | None:
        return self.send(node, "get", {"key": key}, self._parse_get).result()

    def _parse_get(self, node: Any, response: Response) -> Entry | None:
        if response.status == 404:
            return None
        if response.status != 200:
            raise _relay(node, response)
        ttl = response.headers.get("X-TTL", "none")
        return Entry(
            value=response.data,
            binary=response.headers.get("X-Value-Type") == "binary",
            expires_at=None if ttl == "none" else self._now() + float(ttl),
            version=_version(node, response.headers.get("X-Version")),
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
        return bool(self.send(node, "delete", {"key": key}, _parse_json).result()["deleted"])

    def touch(self, node: Any, key: str, ttl: float | None) -> bool:
        answer = self.send(node, "touch", {"key": key, "ttl": ttl}, _parse_json).result()
        return bool(answer["touched"])

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
        return self.send(node, "set_many", body, lambda n, r: int(_parse_json(n, r)["stored"]))

    def start_delete_many(self, node: Any, keys: list[str]) -> Pending[int]:
        body = {"keys": keys}
        return self.send(node, "delete_many", body, lambda n, r: int(_parse_json(n, r)["deleted"]))


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
                f"{INTERNAL_HEADER}: does it run an older version?",
            )
        try:
            return self._parse(self.node, response)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PeerError(
                502, "bad_gateway", f"{self.node.name} sent a malformed answer to {self.op}"
            ) from exc

    def close(self) -> None:
        self._call.close()


def _parse_json(node: Any, response: Response) -> Any:
    if response.status != 200:
        raise _relay(node, response)
    return orjson.loads(response.data)


def _parse_set(node: Any, response: Response) -> Version | None:
    if response.status == 412:
        return None
    if response.status != 200:
        raise _relay(node, response)
    return _version(node, response.headers.get("X-Version"))


def _parse_incr(node: Any, response: Response) -> tuple[int, Version] | None:
    if response.status == 404:
        return None
    answer = _parse_json(node, response)
    return int(answer["value"]), _version(node, answer["version"])


def _parse_get_many(node: Any, response: Response) -> dict[str, Any]:
    answer = _parse_json(node, response)
    found: dict[str, Any] = {k: orjson.Fragment(text) for k, text in answer["values"].items()}
    found.update((k, {"b64": text}) for k, text in answer["binary"].items())
    return found


def _version(node: Any, text: Any) -> Version:
    try:
        return parse_version(str(text))
    except ValueError as exc:
        raise PeerError(502, "bad_gateway", f"{node.name} sent a bad write version") from exc


def _relay(node: Any, response: Response) -> errors.CacheError:
    try:
        error = values.loads(response.data)["error"]
        return PeerError(response.status, error["code"], f"{node.name}: {error['message']}")
    except (values.DecodeError, KeyError, TypeError):
        return PeerError(502, "bad_gateway", f"{node.name} answered {response.status}")
