"""The HTTP API: thin DRF viewsets over the router.

Each action parses and validates (``cacheapi.validation``), calls the router or store, and
renders. Both spellings of every call (REST and the seed routes) map to these same actions.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from rest_framework import viewsets
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from cacheapi import errors, node, validation, values
from cacheapi.api.parsers import OctetStreamParser, StrictJSONParser
from cacheapi.api.renderers import OctetStreamRenderer, ORJSONRenderer
from cacheapi.metrics import recorder
from cacheapi.peer.client import HOPS_HEADER, RING_HEADER
from cacheapi.store import Entry
from cacheapi.store.versions import format_version, parse_version

OCTET = "application/octet-stream"
JSON = "application/json"
_NOT_ERRORS = {404, 412}


class NodeViewSet(viewsets.ViewSet):
    """Base of the API's viewsets: latency metrics, ring version header, hop handling."""

    scopes: dict[str, str] = {}

    @property
    def default_response_headers(self) -> dict[str, str]:
        # DRF puts Allow on every response; it belongs on 405s (added by the exception
        # handler) and costs a dozen hasattr calls per request on the hot path.
        return {"Vary": "Accept"} if len(self.renderer_classes) > 1 else {}

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = super().dispatch(request, *args, **kwargs)
        op = getattr(self, "action", None) or (request.method or "").lower()
        status = response.status_code
        recorder.observe(
            op, time.perf_counter() - started, status >= 400 and status not in _NOT_ERRORS
        )
        response[RING_HEADER] = str(node.membership().ring.version)
        return response

    @property
    def internal(self) -> bool:
        """An internal request (X-Forwarded-Hops from a peer): served here, never forwarded.

        Only peers (cluster secret) may send hops: a client that could make a non-owner serve
        a write locally would leave stray copies outside the ring."""
        hops = self.request.META.get("HTTP_X_FORWARDED_HOPS")
        if hops is None:
            return False
        if not (hops.isascii() and hops.isdigit() and len(hops) <= 9):
            raise errors.InvalidRequest(f"{HOPS_HEADER} must be a whole number")
        if not getattr(self.request.user, "internal", False):
            raise errors.Forbidden(f"{HOPS_HEADER} is for node-to-node calls only")
        return int(hops) >= 1

    def body(self) -> Any:
        return validation.json_object(self.request.data)


def _entry_headers(entry: Entry, ttl: float | None) -> dict[str, str]:
    """ETag, plus the TTL and value type (for clients that ask for the raw bytes)."""
    return {
        "ETag": f'"{format_version(entry.version)}"',
        "X-TTL": "none" if ttl is None else f"{ttl:.3f}",
        "X-Value-Type": "binary" if entry.binary else "json",
    }


def rendered(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> HttpResponse:
    """A JSON answer rendered here, for the hot paths.

    DRF's ``Response`` is a template response that renders after the view returns; building
    and rendering it costs about as much as the whole store lookup. The bytes are the same
    ``values.dumps`` the renderer would produce."""
    return HttpResponse(values.dumps(data), status=status, headers=headers, content_type=JSON)


def _round_ttl(ttl: float | None) -> float | None:
    return None if ttl is None else round(ttl, 3)


def _parse_etag(header: str) -> Any:
    text = header.strip().removeprefix("W/").strip('"')
    try:
        return parse_version(text)
    except ValueError as exc:
        raise errors.PreconditionFailed(
            f"If-Match {header!r} is not a write version (an ETag from this cluster)"
        ) from exc


class KeyViewSet(NodeViewSet):
    """One key: GET/HEAD, PUT (set, add, compare-and-set), PATCH (touch), DELETE, POST incr."""

    parser_classes = [StrictJSONParser, OctetStreamParser]
    renderer_classes = [ORJSONRenderer, OctetStreamRenderer]
    scopes = {
        "retrieve": "read",
        "update": "write",
        "partial_update": "write",
        "destroy": "write",
        "incr": "write",
    }
    # The incr route matches ".../{key}/incr"; for its other methods the suffix is the key's.
    key_suffix = ""

    def _key(self) -> str:
        validation.check_key_encoding(self.request.META)
        key = self.kwargs.get("key")
        if key is None:  # seed routes: ?key= on GET/DELETE, "key" in the body of POST /set
            if self.request.method in ("GET", "HEAD", "DELETE"):
                key = self.request.query_params.get("key")
                if key is None:
                    raise errors.InvalidKey('pass the key as "?key="')
            else:
                key = self.body().get("key")
        elif self.action != "incr":
            key += self.key_suffix
        return validation.validate_key(key)

    def retrieve(self, request: Request, **kwargs: Any) -> HttpResponse:
        key = self._key()
        entry = node.router().get(key, local=self.internal)
        ttl = None if entry is None else node.store().remaining(entry)
        if entry is None or (ttl is not None and ttl <= 0):
            raise errors.NotFound(f"no key {key!r}")
        if request.method == "HEAD":
            return HttpResponse(status=200, headers=_entry_headers(entry, ttl))
        if request.accepted_media_type == OCTET:
            return HttpResponse(entry.value, headers=_entry_headers(entry, ttl), content_type=OCTET)
        data = {
            "key": key,
            "value": values.to_wire(entry.value, entry.binary),
            "ttl": _round_ttl(ttl),
        }
        return rendered(data, headers=_entry_headers(entry, ttl))

    def update(self, request: Request, **kwargs: Any) -> HttpResponse:
        key = self._key()
        if request.content_type.startswith(OCTET):
            data = request.data or b""  # DRF gives {} for an empty body: zero bytes
            if not isinstance(data, bytes):
                raise errors.InvalidValue("an octet-stream body must be raw bytes")
            value, binary = validation.check_value_size(data), True
            ttl = validation.ttl_from_text(request.query_params.get("ttl"))
        else:
            body = self.body()
            value, binary = validation.value_from_body(body)
            ttl = validation.ttl_from_body(body)
        router = node.router()
        local = self.internal
        if_none_match = request.META.get("HTTP_IF_NONE_MATCH")
        if if_none_match is not None and (
            if_none_match.strip() != "*" or "HTTP_IF_MATCH" in request.META
        ):
            raise errors.InvalidRequest(
                'If-None-Match supports only "*" (add), and not together with If-Match'
            )
        if if_none_match is not None:
            version = router.add(key, value, binary, ttl, local=local)
            if version is None:
                raise errors.PreconditionFailed(f"key {key!r} already exists")
        elif "HTTP_IF_MATCH" in request.META:
            version = self._compare_and_set(key, value, binary, ttl, request.META["HTTP_IF_MATCH"])
        else:
            version = router.set(key, value, binary, ttl, local=local)
        tag = format_version(version)
        return rendered({"key": key, "version": tag}, headers={"ETag": f'"{tag}"'})

    def _compare_and_set(
        self, key: str, value: bytes, binary: bool, ttl: float | None, if_match: str
    ) -> Any:
        router = node.router()
        if if_match.strip() == "*":  # "if it exists": compare against whatever is there now
            current = router.get(key, local=self.internal)
            if current is None:
                raise errors.PreconditionFailed(f"key {key!r} does not exist")
            expected = current.version
        else:
            expected = _parse_etag(if_match)
        version = router.cas(key, value, binary, ttl, expected, local=self.internal)
        if version is None:
            raise errors.PreconditionFailed(f"key {key!r} is missing or has another version")
        return version

    def partial_update(self, request: Request, **kwargs: Any) -> Response:
        key = self._key()
        body = self.body()
        if "ttl" not in body:
            raise errors.InvalidTTL('body must have a "ttl" member (seconds, or null)')
        ttl = validation.ttl_from_body(body)
        if not node.router().touch(key, ttl, local=self.internal):
            raise errors.NotFound(f"no key {key!r}")
        return Response({"key": key, "ttl": ttl})

    def destroy(self, request: Request, **kwargs: Any) -> HttpResponse:
        key = self._key()
        if not node.router().delete(key, local=self.internal):
            raise errors.NotFound(f"no key {key!r}")
        return HttpResponse(status=204)

    def incr(self, request: Request, **kwargs: Any) -> HttpResponse:
        key = self._key()
        delta = validation.validate_delta(self.body())  # an empty body parses as {}
        result = node.router().incr(key, delta, local=self.internal)
        if result is None:
            raise errors.NotFound(f"no key {key!r}")
        value, version = result
        tag = format_version(version)
        return rendered({"key": key, "value": value}, headers={"ETag": f'"{tag}"'})


class BatchViewSet(NodeViewSet):
    """Many keys in one call, grouped by owner; one failing owner fails only its keys."""

    scopes = {"get_many": "read", "set_many": "write", "delete_many": "write"}

    def get_many(self, request: Request) -> HttpResponse:
        keys = validation.key_list(self.body())
        result = node.router().get_many(keys, local=self.internal)
        return rendered(
            {"values": result.values, "missing": result.missing, "failed": result.failed}
        )

    def set_many(self, request: Request) -> HttpResponse:
        items = validation.item_list(self.body())
        result = node.router().set_many(items, local=self.internal)
        return rendered({"stored": result.count, "failed": result.failed})

    def delete_many(self, request: Request) -> HttpResponse:
        keys = validation.key_list(self.body())
        result = node.router().delete_many(keys, local=self.internal)
        return rendered({"deleted": result.count, "failed": result.failed})


class SyncViewSet(NodeViewSet):
    """``POST /sync``: versioned writes from other nodes (migration, replication); the newer
    version wins, so replaying or reordering a sync never loses a newer write."""

    scopes = {"create": "internal"}

    def create(self, request: Request) -> Response:
        body = self.body()
        items = validation.item_list(body)
        raw_items = body["items"]
        versions = []
        for index, item in enumerate(raw_items):
            try:
                versions.append(parse_version(str(item["version"])))
            except (KeyError, ValueError) as exc:
                raise errors.InvalidRequest(f'items[{index}] needs a valid "version"') from exc
        applied = node.store().set_many(
            (key, value, binary, ttl, version)
            for (key, value, binary, ttl), version in zip(items, versions, strict=True)
        )
        stored = sum(1 for v in applied if v is not None)
        return Response({"stored": stored, "skipped": len(applied) - stored})


class StatsViewSet(NodeViewSet):
    scopes = {"list": "read"}

    def list(self, request: Request) -> Response:
        scope = request.query_params.get("scope", "node")
        if scope not in ("node", "cluster"):
            raise errors.InvalidRequest('scope must be "node" or "cluster"')
        if scope == "node" or self.internal:
            return Response(node_stats())
        return Response(cluster_stats())


def node_stats() -> dict[str, Any]:
    stats: dict[str, Any] = dict(node.store().stats())
    lookups = stats["hits"] + stats["misses"]
    stats["hit_ratio"] = round(stats["hits"] / lookups, 4) if lookups else 0.0
    snapshot = recorder.snapshot()
    stats["node"] = node.membership().node
    stats["ring_version"] = node.membership().ring.version
    stats["ops"] = {op: s["count"] for op, s in snapshot["ops"].items()}
    stats["latency"] = {
        op: {k: s[k] for k in ("mean_ms", "p50_ms", "p99_ms")} for op, s in snapshot["ops"].items()
    }
    stats["forwards"] = snapshot["forwards"]
    return stats


SUMMED = (
    "hits",
    "misses",
    "sets",
    "deletes",
    "evictions",
    "expirations",
    "items",
    "bytes",
    "max_bytes",
    "max_items",
    "forwards",
)


def cluster_stats() -> dict[str, Any]:
    per_node, failed = node.router().on_every_node(node_stats, "GET", "/api/v1/stats")
    live = list(per_node.values())
    totals: dict[str, Any] = {name: sum(s.get(name, 0) for s in live) for name in SUMMED}
    lookups = totals["hits"] + totals["misses"]
    totals["hit_ratio"] = round(totals["hits"] / lookups, 4) if lookups else 0.0
    return {"scope": "cluster", **totals, "nodes": per_node, "failed": failed}


class FlushViewSet(NodeViewSet):
    scopes = {"create": "admin"}

    def create(self, request: Request) -> Response:
        if self.internal:
            return Response({"flushed": node.store().clear(), "failed": []})
        answers, failed = node.router().on_every_node(node.store().clear, "POST", "/api/v1/flush")
        flushed = sum(a if isinstance(a, int) else a["flushed"] for a in answers.values())
        return Response({"flushed": flushed, "failed": failed})


class HealthViewSet(NodeViewSet):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    http_method_names = ["get", "head"]  # anything else (OPTIONS, TRACE...) is 405 with Allow

    def list(self, request: Request) -> Response:
        draining = node.is_draining()
        body = {
            "status": "draining" if draining else "ok",
            "node": node.membership().node,
            "ring_version": node.membership().ring.version,
        }
        return Response(body, status=503 if draining else 200)


class RingViewSet(NodeViewSet):
    scopes = {"list": "read"}

    def list(self, request: Request) -> Response:
        return Response(node.membership().ring.to_dict())


class NodesViewSet(NodeViewSet):
    """Every registered node with its status, heartbeat and last reported stats."""

    scopes = {"list": "read"}

    def list(self, request: Request) -> Response:
        from nodes.models import Node, RingVersion

        ring = node.membership().ring
        shares = ring.shares()
        try:
            return Response(
                {"version": RingVersion.current(), "nodes": _node_rows(Node.objects.all(), shares)}
            )
        except DatabaseError as exc:
            raise errors.Unavailable("the node registry is unreachable; try again") from exc


def _node_rows(nodes: Any, shares: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {
            "name": n.name,
            "url": n.url,
            "status": n.status,
            "weight": n.weight,
            "share": round(shares.get(n.name, 0.0), 4),
            "last_heartbeat": n.last_heartbeat.isoformat() if n.last_heartbeat else None,
            "consecutive_failures": n.consecutive_failures,
            "stats": n.last_stats,
        }
        for n in nodes
    ]
