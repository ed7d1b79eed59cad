"""The HTTP API: thin DRF viewsets over the router.

Each action parses and validates (``cacheapi.validation``), calls this node's router and
renders. Both spellings of every call (REST and the seed routes) map to these same actions.
Outcomes other than success come back from the router as the cache's own errors, which the
exception handler (``cacheapi.api.exceptions``) answers with their status.
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

from cacheapi import errors, validation, values
from cacheapi.api.auth import presented_key, retire_stale_connections, verify_key
from cacheapi.api.limits import counter_namespace
from cacheapi.api.negotiation import leads_with
from cacheapi.api.parsers import OctetStreamParser, StrictJSONParser, read_capped
from cacheapi.api.renderers import OctetStreamRenderer, ORJSONRenderer
from cacheapi.node import current
from cacheapi.peer.server import ratelimit_call
from cacheapi.peer.wire import RING_HEADER, SECRET_ENVIRON, hit_headers
from cacheapi.store import Hit, format_version, parse_version
from ratelimit.algorithms import to_wire as decision_to_wire

OCTET = "application/octet-stream"
COPIES_HEADER = "X-Copies"  # on every write: how many owners hold it
JSON = "application/json"
_NOT_ERRORS = {404, 412}


_shared: dict[tuple[type, ...], list[Any]] = {}


def _instances(classes: Any) -> list[Any]:
    """One instance of each class, made once per distinct list and shared: DRF builds new
    parsers, renderers, authenticators and permissions for every request, but ours keep no
    per-request state."""
    key = tuple(classes)
    found = _shared.get(key)
    if found is None:
        found = _shared[key] = [cls() for cls in key]
    return found


class NodeViewSet(viewsets.ViewSet):
    """Base of the API's viewsets: latency metrics and the ring version header."""

    scopes: dict[str, str] = {}

    def get_renderers(self) -> list[Any]:
        return _instances(self.renderer_classes)

    def get_parsers(self) -> list[Any]:
        return _instances(self.parser_classes)

    def get_authenticators(self) -> list[Any]:
        return _instances(self.authentication_classes)

    def get_permissions(self) -> list[Any]:
        return _instances(self.permission_classes)

    @property
    def default_response_headers(self) -> dict[str, str]:
        # DRF puts Allow on every response; it belongs on 405s (added by the exception
        # handler) and costs a dozen hasattr calls per request on the hot path.
        return {"Vary": "Accept"} if len(self.renderer_classes) > 1 else {}

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        fast = self.fast_path(request, kwargs)
        response = super().dispatch(request, *args, **kwargs) if fast is None else fast
        op = getattr(self, "action", None) or (request.method or "").lower()
        status = response.status_code
        node = current()
        node.recorder.observe(
            op, time.perf_counter() - started, status >= 400 and status not in _NOT_ERRORS
        )
        response[RING_HEADER] = str(node.ring.version)
        return response

    def fast_path(self, request: HttpRequest, kwargs: dict[str, Any]) -> HttpResponse | None:
        """An answer without DRF's dispatch for the commonest requests, or None: DRF serves
        everything else, with the same checks and answers."""
        return None

    def admits_fast(self, request: HttpRequest, method: str, scope: str) -> bool:
        """Whether a request may take the fast path: the method, a JSON answer, no format
        override, not a peer, and a known API key with ``scope``. Changes nothing, so when
        it says no, DRF's dispatch serves the request as if this had not run."""
        meta = request.META
        accept = meta.get("HTTP_ACCEPT", "")
        if (
            request.method != method
            or (accept and accept != "*/*" and not leads_with(accept, JSON))
            or "format=" in meta.get("QUERY_STRING", "")
            or SECRET_ENVIRON in meta
        ):
            return False
        raw = presented_key(meta)
        if raw is None:
            return False
        try:
            principal = verify_key(raw)
        except DatabaseError:
            return False
        return principal is not None and principal.has_scope(scope)

    def body(self) -> Any:
        return validation.json_object(self.request.data)


def _hit_headers(hit: Hit) -> dict[str, str]:
    """ETag, plus the TTL and value type (for clients that ask for the raw bytes)."""
    return {"ETag": f'"{format_version(hit.version)}"', **dict(hit_headers(hit))}


def rendered(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> HttpResponse:
    """A JSON answer rendered here, for the hot paths.

    DRF's ``Response`` is a template response that renders after the view returns; building
    and rendering it costs about as much as the whole store lookup. The bytes are the same
    ``values.dumps`` the renderer would produce."""
    return HttpResponse(values.dumps(data), status=status, headers=headers, content_type=JSON)


def error_answer(exc: errors.CacheError, headers: dict[str, str] | None = None) -> HttpResponse:
    """A fast path's error: the envelope, status and headers DRF's exception handler gives."""
    body = errors.error_body(exc.code, exc.message)
    return rendered(body, status=exc.status, headers={**(headers or {}), **exc.headers})


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

    def fast_path(self, request: HttpRequest, kwargs: dict[str, Any]) -> HttpResponse | None:
        """``GET /api/v1/keys/{key}`` in its common form (a JSON answer, a known API key with
        the read scope, a valid key) without DRF's request wrapping, negotiation and
        permission machinery, which cost about a third of the call. Only checks that change
        nothing run before it gives up, so any other request (no or unknown key, a missing
        scope, another Accept, a bad key) goes to DRF's dispatch as if this had not run."""
        key = kwargs.get("key")
        if key is None or not self.admits_fast(request, "GET", self.scopes["retrieve"]):
            return None
        try:
            validation.check_key_encoding(request.META)
            key = validation.validate_key(key + self.key_suffix)
        except errors.CacheError:
            return None
        self.action = "retrieve"
        vary = {"Vary": "Accept"}
        try:
            hit = current().router.get(key)
            if hit is None:
                raise errors.NotFound(f"no key {key!r}")
        except errors.CacheError as exc:
            return error_answer(exc, vary)
        data = {
            "key": key,
            "value": values.to_wire(hit.value, hit.binary),
            "ttl": _round_ttl(hit.ttl),
        }
        return rendered(data, headers={**_hit_headers(hit), **vary})

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
        hit = current().router.get(key)
        if hit is None:
            raise errors.NotFound(f"no key {key!r}")
        if request.method == "HEAD":
            return HttpResponse(status=200, headers=_hit_headers(hit))
        if request.accepted_media_type == OCTET:
            return HttpResponse(hit.value, headers=_hit_headers(hit), content_type=OCTET)
        data = {
            "key": key,
            "value": values.to_wire(hit.value, hit.binary),
            "ttl": _round_ttl(hit.ttl),
        }
        return rendered(data, headers=_hit_headers(hit))

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
        router = current().router
        meta = request.META
        if_none_match = meta.get("HTTP_IF_NONE_MATCH")
        if if_none_match is not None and (if_none_match.strip() != "*" or "HTTP_IF_MATCH" in meta):
            raise errors.InvalidRequest(
                'If-None-Match supports only "*" (add), and not together with If-Match'
            )
        if if_none_match is not None:
            written = router.add(key, value, binary, ttl)
        elif "HTTP_IF_MATCH" in meta:
            # "*": if it exists, whatever its version; else the ETag of one version.
            if_match = meta["HTTP_IF_MATCH"]
            expected = None if if_match.strip() == "*" else _parse_etag(if_match)
            written = router.cas(key, value, binary, ttl, expected)
        else:
            written = router.set(key, value, binary, ttl)
        tag = format_version(written.version)
        return rendered(
            {"key": key, "version": tag, "copies": written.copies},
            headers={"ETag": f'"{tag}"', COPIES_HEADER: str(written.copies)},
        )

    def partial_update(self, request: Request, **kwargs: Any) -> Response:
        key = self._key()
        body = self.body()
        if "ttl" not in body:
            raise errors.InvalidTTL('body must have a "ttl" member (seconds, or null)')
        ttl = validation.ttl_from_body(body)
        copies = current().router.touch(key, ttl)
        return Response(
            {"key": key, "ttl": ttl, "copies": copies}, headers={COPIES_HEADER: str(copies)}
        )

    def destroy(self, request: Request, **kwargs: Any) -> HttpResponse:
        copies = current().router.delete(self._key())
        return HttpResponse(status=204, headers={COPIES_HEADER: str(copies)})

    def incr(self, request: Request, **kwargs: Any) -> HttpResponse:
        key = self._key()
        delta = validation.validate_delta(self.body())  # an empty body parses as {}
        value, written = current().router.incr(key, delta)
        tag = format_version(written.version)
        return rendered(
            {"key": key, "value": value, "copies": written.copies},
            headers={"ETag": f'"{tag}"', COPIES_HEADER: str(written.copies)},
        )


class BatchViewSet(NodeViewSet):
    """Many keys in one call, grouped by owner; one failing owner fails only its keys."""

    scopes = {"get_many": "read", "set_many": "write", "delete_many": "write"}

    def fast_path(self, request: HttpRequest, kwargs: dict[str, Any]) -> HttpResponse | None:
        """``POST /api/v1/batch/get`` with a JSON body and a read-scoped key, without DRF's
        dispatch (as ``KeyViewSet.fast_path``). Once it reads the body it answers itself,
        errors included, with the envelope and status DRF's exception handler would give."""
        if (
            self.action_map.get("post") != "get_many"
            or request.content_type != JSON
            or not self.admits_fast(request, "POST", self.scopes["get_many"])
        ):
            return None
        self.action = "get_many"
        try:
            raw = read_capped(request, {"request": request})
            try:
                parsed = values.loads(raw)
            except values.DecodeError as exc:
                raise errors.InvalidJSON(f"body is not valid JSON: {exc}") from exc
            keys = validation.key_list(validation.json_object(parsed))
            result = current().router.get_many(keys)
        except errors.CacheError as exc:
            return error_answer(exc)
        return rendered(
            {"values": result.values, "missing": result.missing, "failed": result.failed}
        )

    def get_many(self, request: Request) -> HttpResponse:
        keys = validation.key_list(self.body())
        result = current().router.get_many(keys)
        return rendered(
            {"values": result.values, "missing": result.missing, "failed": result.failed}
        )

    def set_many(self, request: Request) -> HttpResponse:
        items = validation.item_list(self.body())
        result = current().router.set_many(items)
        return rendered({"stored": result.count, "failed": result.failed})

    def delete_many(self, request: Request) -> HttpResponse:
        keys = validation.key_list(self.body())
        result = current().router.delete_many(keys)
        return rendered({"deleted": result.count, "failed": result.failed})


class SyncViewSet(NodeViewSet):
    """``POST /sync`` (the seed's route, cluster secret required): versioned writes into this
    node's own store, the same store call as the peer protocol's ``sync``; the newer version
    wins, so replaying or reordering a sync never loses a newer write."""

    scopes = {"create": "internal"}

    def create(self, request: Request) -> Response:
        body = self.body()
        items = validation.item_list(body)
        versions = []
        for index, item in enumerate(body["items"]):
            try:
                versions.append(parse_version(str(item["version"])))
            except (KeyError, ValueError) as exc:
                raise errors.InvalidRequest(f'items[{index}] needs a valid "version"') from exc
        stored, skipped = current().router.sync_here(
            (key, value, binary, ttl, version)
            for (key, value, binary, ttl), version in zip(items, versions, strict=True)
        )
        return Response({"stored": stored, "skipped": skipped})


class RateLimitViewSet(NodeViewSet):
    """``POST /api/v1/ratelimit/hit``: one atomic rate-limit check on a counter, in the
    cluster's counter store (apart from user data), on the counter's owner."""

    scopes = {"create": "write"}

    def create(self, request: Request) -> HttpResponse:
        body = self.body()
        key, _, rate, cost, burst = ratelimit_call(body)
        algorithm, reset = body.get("algorithm", "fixed_window"), body.get("reset", False)
        raw = str(request.auth) if request.auth else None
        key = counter_namespace(request.user, raw, key, reset)
        decision = current().router.ratelimit(key, algorithm, rate, cost, burst, reset)
        return rendered(decision_to_wire(decision))


class StatsViewSet(NodeViewSet):
    scopes = {"list": "read"}

    def list(self, request: Request) -> Response:
        scope = request.query_params.get("scope", "node")
        if scope == "node":
            return Response(current().stats())
        if scope == "cluster":
            return Response(current().cluster_stats())
        raise errors.InvalidRequest('scope must be "node" or "cluster"')


class FlushViewSet(NodeViewSet):
    scopes = {"create": "admin"}

    def create(self, request: Request) -> Response:
        flushed, failed = current().router.flush()
        return Response({"flushed": flushed, "failed": failed})


class HealthViewSet(NodeViewSet):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    http_method_names = ["get", "head"]  # anything else (OPTIONS, TRACE...) is 405 with Allow

    def list(self, request: Request) -> Response:
        node = current()
        draining = node.draining
        body = {
            "status": "draining" if draining else "ok",
            "node": node.name,
            "ring_version": node.ring.version,
            "member": "draining" if draining else node.membership.status,
        }
        return Response(body, status=503 if draining else 200)


class RingViewSet(NodeViewSet):
    scopes = {"list": "read"}

    def list(self, request: Request) -> Response:
        return Response(current().ring.to_dict())


class NodesViewSet(NodeViewSet):
    """Every registered node with its status, heartbeat and last reported stats."""

    scopes = {"list": "read"}

    def list(self, request: Request) -> Response:
        from nodes.models import Node, RingVersion

        shares = current().ring.shares()
        retire_stale_connections()
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
