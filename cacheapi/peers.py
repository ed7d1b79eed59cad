"""Calls from a coordinating node to the other nodes of the ring.

Every call is an *internal request*: it carries the cluster secret and ``X-Forwarded-Hops: 1``,
so the callee serves it from its own store and never forwards it again (DESIGN.md, Data path).
Connections are pooled and kept alive per peer; every call has a timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from cacheapi import errors, values
from cacheapi.store import Entry
from cacheapi.transport import Response, Transport
from cacheapi.versions import Version, parse_version

log = logging.getLogger(__name__)

HOPS_HEADER = "X-Forwarded-Hops"
SECRET_HEADER = "X-Cluster-Secret"
RING_HEADER = "X-Ring-Version"


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

    # Single-key operations. Each returns what the local store method would.
    def get(self, node: Any, key: str) -> Entry | None:
        response = self.request(
            node, "GET", values.key_path(key), headers={"Accept": "application/octet-stream"}
        )
        if response.status == 404:
            return None
        if response.status != 200:
            raise _relay(node, response)
        ttl = response.headers.get("X-TTL", "none")
        expires_at = None if ttl == "none" else self._now() + float(ttl)
        return Entry(
            value=response.data,
            binary=response.headers.get("X-Value-Type") == "binary",
            expires_at=expires_at,
            version=_etag_version(response.headers.get("ETag", "")),
        )

    def set(
        self,
        node: Any,
        key: str,
        value: bytes,
        binary: bool,
        ttl: float | None,
        condition: dict[str, str] | None = None,
    ) -> Version | None:
        body = {"value": values.to_wire(value, binary), "ttl": ttl}
        response = self.request(node, "PUT", values.key_path(key), body, headers=condition)
        if response.status == 412:
            return None
        if response.status != 200:
            raise _relay(node, response)
        return _etag_version(response.headers.get("ETag", ""))

    def delete(self, node: Any, key: str) -> bool:
        response = self.request(node, "DELETE", values.key_path(key))
        if response.status in (204, 404):
            return response.status == 204
        raise _relay(node, response)

    def touch(self, node: Any, key: str, ttl: float | None) -> bool:
        response = self.request(node, "PATCH", values.key_path(key), {"ttl": ttl})
        if response.status in (200, 404):
            return response.status == 200
        raise _relay(node, response)

    def incr(self, node: Any, key: str, delta: int) -> tuple[int, Version] | None:
        response = self.request(node, "POST", values.key_path(key) + "/incr", {"delta": delta})
        if response.status == 404:
            return None
        if response.status != 200:
            raise _relay(node, response)
        return values.loads(response.data)["value"], _etag_version(response.headers.get("ETag", ""))


def _etag_version(etag: str) -> Version:
    return parse_version(etag.strip().removeprefix("W/").strip('"'))


def _relay(node: Any, response: Response) -> errors.CacheError:
    try:
        error = values.loads(response.data)["error"]
        return PeerError(response.status, error["code"], f"{node.name}: {error['message']}")
    except (values.DecodeError, KeyError, TypeError):
        return PeerError(502, "bad_gateway", f"{node.name} answered {response.status}")
