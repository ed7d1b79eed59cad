"""The OpenAPI description of the API (drf-spectacular), kept out of the views.

The views are plain ViewSets that validate with functions (``cacheapi.validation``), so
spectacular cannot guess their bodies. Here each viewset gets an ``OpenApiViewExtension`` that
swaps in an annotated subclass for schema generation only, with the documentation-only
serializers below; ``ApiKeyAuthSchema`` describes the authentication, and the two hooks (named in
``SPECTACULAR_SETTINGS``) curate the list of operations. Nothing here runs on a request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import serializers

JSON = "application/json"
OCTET = "application/octet-stream"
API_KEY, CLUSTER_SECRET = "ApiKeyAuth", "ClusterSecret"


# Documentation-only serializers: they name the shapes; they never validate a request.
class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable snake_case code, e.g. `not_found`.")
    message = serializers.CharField(help_text="What went wrong and what to fix.")


class ErrorSerializer(serializers.Serializer):
    """The envelope of every 4xx answer (and of a 503 with no live owner)."""

    error = ErrorDetailSerializer()


def _value(**kwargs: Any) -> serializers.JSONField:
    return serializers.JSONField(
        help_text="Any JSON value; it round-trips exactly. A binary value travels as "
        '`{"b64": "<base64>"}` (an object whose only member is `b64` means binary).',
        **kwargs,
    )


def _copies() -> serializers.IntegerField:
    return serializers.IntegerField(
        help_text="How many owners hold the write (at most `REPLICAS`; also `X-Copies`). "
        "A write no owner took is a 503, never a success."
    )


def _ttl(help_text: str, **kwargs: Any) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=help_text, **kwargs)


_TTL_IN = (
    "Seconds until the key expires (a positive number); `null` = never expires; absent = the "
    "configured default TTL."
)
_KEY = "1-250 bytes of UTF-8, no whitespace or control characters."


class KeyValueSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = _value()
    ttl = _ttl("Remaining seconds, or `null` if the key never expires.")


class KeyPutSerializer(serializers.Serializer):
    value = _value()
    ttl = _ttl(_TTL_IN, required=False)


class SeedSetSerializer(serializers.Serializer):
    key = serializers.CharField(help_text=_KEY)
    value = _value()
    ttl = _ttl(_TTL_IN, required=False)


class KeyWrittenSerializer(serializers.Serializer):
    key = serializers.CharField()
    version = serializers.CharField(
        help_text="Write version `microseconds-counter-node`; also sent, quoted, as `ETag`."
    )
    copies = _copies()


class TouchSerializer(serializers.Serializer):
    ttl = _ttl("New TTL in seconds from now, or `null` to never expire.")


class TouchedSerializer(serializers.Serializer):
    key = serializers.CharField()
    ttl = _ttl("The TTL now set, or `null`.")
    copies = _copies()


class IncrSerializer(serializers.Serializer):
    delta = serializers.IntegerField(
        required=False, default=1, help_text="Signed 64-bit integer; negative decrements."
    )


class IncrementedSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.IntegerField(help_text="The value after the increment.")
    copies = _copies()


class KeyListSerializer(serializers.Serializer):
    keys = serializers.ListField(
        child=serializers.CharField(help_text=_KEY), help_text="At most 1,000 keys."
    )


class ItemSerializer(SeedSetSerializer):
    pass


class ItemListSerializer(serializers.Serializer):
    items = serializers.ListField(child=ItemSerializer(), help_text="At most 1,000 items.")


_FAILED = "Keys whose owner did not answer; nothing is known about them."


class BatchGetResultSerializer(serializers.Serializer):
    values = serializers.DictField(child=_value(), help_text="Key -> value, for the keys found.")
    missing = serializers.ListField(child=serializers.CharField())
    failed = serializers.ListField(child=serializers.CharField(), help_text=_FAILED)


class BatchSetResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    failed = serializers.ListField(child=serializers.CharField(), help_text=_FAILED)


class BatchDeleteResultSerializer(serializers.Serializer):
    deleted = serializers.IntegerField(help_text="Keys that existed and were deleted.")
    failed = serializers.ListField(child=serializers.CharField(), help_text=_FAILED)


class SyncItemSerializer(SeedSetSerializer):
    version = serializers.CharField(help_text="The write's version, `microseconds-counter-node`.")


class SyncSerializer(serializers.Serializer):
    items = serializers.ListField(child=SyncItemSerializer(), help_text="At most 1,000 items.")


class SyncResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Items older than the version held here.")


class LatencySerializer(serializers.Serializer):
    mean_ms = serializers.FloatField(allow_null=True)
    p50_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True)


class _CountersSerializer(serializers.Serializer):
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    sets = serializers.IntegerField()
    deletes = serializers.IntegerField()
    evictions = serializers.IntegerField()
    expirations = serializers.IntegerField()
    items = serializers.IntegerField()
    bytes = serializers.IntegerField()
    max_bytes = serializers.IntegerField()
    max_items = serializers.IntegerField()
    forwards = serializers.IntegerField(help_text="Calls forwarded to other nodes.")
    hit_ratio = serializers.FloatField(help_text="hits / (hits + misses), 0 before any lookup.")


@extend_schema_serializer(many=False)
class NodeStatsSerializer(_CountersSerializer):
    node = serializers.CharField()
    ring_version = serializers.IntegerField()
    ops = serializers.DictField(child=serializers.IntegerField(), help_text="Calls per operation.")
    latency = serializers.DictField(child=LatencySerializer(), help_text="Per operation.")
    migration = serializers.DictField(
        help_text="Keys moved on ring changes: passes, pushed, pulled, dropped, failures, "
        "cleared, last_pass_seconds, settled_version."
    )
    hints = serializers.DictField(
        help_text="Hinted hand-off: writes other owners missed, kept here to replay "
        "(pending, added, replayed, dropped)."
    )


class NodeUnreachableSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="Why the node's stats could not be read.")


@extend_schema_serializer(many=False)
class ClusterStatsSerializer(_CountersSerializer):
    scope = serializers.ChoiceField(choices=["cluster"])
    nodes = serializers.DictField(
        child=PolymorphicProxySerializer(
            component_name="NodeStatsOrError",
            serializers=[NodeStatsSerializer, NodeUnreachableSerializer],
            resource_type_field_name=None,
        ),
        help_text="Node name -> its stats.",
    )
    failed = serializers.ListField(child=serializers.CharField(), help_text="Nodes not read.")


class FlushedSerializer(serializers.Serializer):
    flushed = serializers.IntegerField(help_text="Entries removed, summed over the nodes.")
    failed = serializers.ListField(child=serializers.CharField(), help_text="Nodes not flushed.")


# Named in SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]: both fields are called "status".
NODE_STATUSES = ["joining", "up", "draining", "down", "disabled"]
HEALTH_STATUSES = ["ok", "draining"]


class RingNodeSerializer(serializers.Serializer):
    name = serializers.CharField()
    url = serializers.CharField()
    weight = serializers.IntegerField()
    status = serializers.ChoiceField(choices=NODE_STATUSES)


@extend_schema_serializer(many=False)
class RingSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    replicas = serializers.IntegerField()
    vnodes = serializers.IntegerField()
    nodes = serializers.ListField(child=RingNodeSerializer())


class RegisteredNodeSerializer(RingNodeSerializer):
    share = serializers.FloatField(help_text="Fraction of the ring's keys this node owns.")
    last_heartbeat = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    stats = serializers.JSONField(
        help_text="The node's last reported stats (as `GET /api/v1/stats`); `{}` before any."
    )


@extend_schema_serializer(many=False)
class RegistrySerializer(serializers.Serializer):
    version = serializers.IntegerField(help_text="The registry's ring version.")
    nodes = serializers.ListField(child=RegisteredNodeSerializer())


@extend_schema_serializer(many=False)
class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=HEALTH_STATUSES)
    node = serializers.CharField()
    ring_version = serializers.IntegerField()
    member = serializers.CharField(
        help_text="This node's status in its ring (joining, up, draining, down, disabled)."
    )


# Errors: which 4xx (and 503) each operation can answer, always with the envelope.
ERRORS = {
    400: "`bad_json`, `invalid_key`, `invalid_ttl`, `invalid_value` or `invalid_request`.",
    401: "`unauthorized`: no API key, or an unknown or revoked one.",
    403: "`forbidden`: the API key lacks the scope this call needs (or a client sent the "
    "peers-only `X-Forwarded-Hops`).",
    404: "`not_found`: no such key, or it has expired.",
    406: "`not_acceptable`: `Accept` admits neither JSON nor octet-stream nor `*/*`.",
    409: "`not_integer`: the value is not an integer, or the result leaves the 64-bit range.",
    412: "`precondition_failed`: `If-None-Match: *` and the key exists, or `If-Match` does not "
    "match the current version.",
    413: "`request_too_large`, `value_too_large` (over 1 MiB) or `batch_too_large` (over 1,000).",
    415: "`unsupported_media_type`: the body's `Content-Type` is not accepted here.",
    429: "`rate_limited`: too many requests; retry after `Retry-After` seconds.",
    503: "`unavailable`: no live node owns the key.",
}
AUTHENTICATED = (401, 403, 429)


BAD_KEY = {400: "`invalid_key`: the key is empty, too long or has whitespace or controls."}


def errors(
    *statuses: int, notes: dict[int, str] | None = None
) -> dict[tuple[int, str], OpenApiResponse]:
    """Error responses, with the envelope; ``notes`` replaces a status's usual description."""
    notes = notes or {}
    return {
        (status, JSON): OpenApiResponse(
            ErrorSerializer, description=notes.get(status, ERRORS[status])
        )
        for status in statuses
    }


def bodiless(*statuses: int) -> dict[int, OpenApiResponse]:
    """HEAD answers: the statuses GET would give, never a body."""
    texts = {**ERRORS, **BAD_KEY}
    return {status: OpenApiResponse(description=f"{texts[status]} No body.") for status in statuses}


def response_header(name: str, description: str, *statuses: int) -> OpenApiParameter:
    return OpenApiParameter(
        name, str, OpenApiParameter.HEADER, description=description, response=list(statuses)
    )


ETAG = response_header("ETag", 'The write version, quoted: `"microseconds-counter-node"`.', 200)
X_TTL = response_header("X-TTL", "Remaining seconds (3 decimals), or `none`.", 200)
X_VALUE_TYPE = response_header("X-Value-Type", "`json` or `binary`.", 200)
RETRY_AFTER = response_header("Retry-After", "Seconds to wait before retrying.", 429)
WWW_AUTHENTICATE = response_header("WWW-Authenticate", "`Api-Key`.", 401)
AUTH_HEADERS = [WWW_AUTHENTICATE, RETRY_AFTER]

# The renderers have formats, but FastNegotiation reads only Accept: no ?format= override.
NO_FORMAT = OpenApiParameter("format", exclude=True)
KEY_PATH = OpenApiParameter(
    "key", str, OpenApiParameter.PATH, description=f"The key; {_KEY} It may contain `/`."
)
KEY_QUERY = OpenApiParameter(
    "key", str, OpenApiParameter.QUERY, required=True, description=f"The key; {_KEY}"
)
IF_MATCH = OpenApiParameter(
    "If-Match",
    str,
    OpenApiParameter.HEADER,
    description='Compare-and-set: write only if the key\'s version is this ETag (`"..."`), or, '
    "with `*`, only if the key exists. Otherwise 412.",
)
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    str,
    OpenApiParameter.HEADER,
    enum=["*"],
    description="`*`: add; write only if the key does not exist. Otherwise 412.",
)
TTL_QUERY = OpenApiParameter(
    "ttl",
    str,
    OpenApiParameter.QUERY,
    description="With an `application/octet-stream` body only: seconds until the key expires, "
    "or `null` for never; absent = the configured default TTL.",
)

_RAW = "The raw stored bytes (the JSON text of a JSON value)."


def _get(operation_id: str, key: OpenApiParameter, tags: list[str]) -> Any:
    return extend_schema(
        operation_id=operation_id,
        summary="Get a key",
        description="The value and remaining TTL. `Accept: application/octet-stream` returns the "
        "stored bytes instead.",
        tags=tags,
        parameters=[key, NO_FORMAT, ETAG, X_TTL, X_VALUE_TYPE, *AUTH_HEADERS],
        responses={
            (200, JSON): OpenApiResponse(KeyValueSerializer, description="The key exists."),
            (200, OCTET): OpenApiResponse(OpenApiTypes.BINARY, description=_RAW),
            **errors(400, *AUTHENTICATED, 404, 406, 503, notes=BAD_KEY),
        },
        methods=["GET"],
    )


def _set(operation_id: str, tags: list[str], *, seed: bool) -> Any:
    body: dict[str, Any] = {JSON: SeedSetSerializer if seed else KeyPutSerializer}
    parameters = [NO_FORMAT, IF_MATCH, IF_NONE_MATCH, ETAG, *AUTH_HEADERS]
    if not seed:
        body[OCTET] = OpenApiTypes.BINARY
        parameters += [KEY_PATH, TTL_QUERY]
    return extend_schema(
        operation_id=operation_id,
        summary="Set a key",
        description="Store a value: unconditionally, as an add (`If-None-Match: *`) or as a "
        "compare-and-set (`If-Match`)."
        + (
            ""
            if seed
            else " An `application/octet-stream` body stores raw bytes; its TTL comes from `?ttl=`."
        ),
        tags=tags,
        parameters=parameters,
        request=body,
        responses={
            (200, JSON): OpenApiResponse(KeyWrittenSerializer, description="Stored."),
            **errors(400, *AUTHENTICATED, 412, 413, 415, 503),
        },
    )


def _delete(operation_id: str, key: OpenApiParameter, tags: list[str]) -> Any:
    return extend_schema(
        operation_id=operation_id,
        summary="Delete a key",
        description="Remove the key from its owner.",
        tags=tags,
        parameters=[key, NO_FORMAT, *AUTH_HEADERS],
        responses={
            204: OpenApiResponse(description="Deleted."),
            **errors(400, *AUTHENTICATED, 404, 503, notes=BAD_KEY),
        },
    )


def _batch(operation_id: str, summary: str, request: Any, result: Any, tags: list[str]) -> Any:
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        description="Keys are grouped by owner and the owners called in parallel; an owner "
        "that fails costs only its own keys, listed in `failed`.",
        tags=tags,
        parameters=AUTH_HEADERS,
        request={JSON: request},
        responses={
            (200, JSON): OpenApiResponse(result, description="Done, except for `failed`."),
            **errors(400, *AUTHENTICATED, 413, 415, 503),
        },
    )


def _subclass(view: type, **attrs: Any) -> type:
    """A throw-away subclass to annotate, so the real view is never touched."""
    return type(f"Documented{view.__name__}", (view,), {"__module__": __name__, **attrs})


def _annotate(view: type, **decorators: Callable[[Any], Any]) -> type:
    """``extend_schema_view`` for custom action names, which it does not look for."""
    for name, decorator in decorators.items():
        setattr(view, name, decorator(_copy_of(getattr(view, name))))
    return view


def _copy_of(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def copy(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return copy


def _is_seed(callback: Any) -> bool:
    return getattr(callback, "seed_route", False)


class KeyViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.KeyViewSet"

    def view_replacement(self) -> type:
        if _is_seed(self.target_callback):
            tags = ["seed"]
            return extend_schema_view(
                retrieve=_get("seed_get", KEY_QUERY, tags),
                update=_set("seed_set", tags, seed=True),
                destroy=_delete("seed_delete", KEY_QUERY, tags),
            )(_subclass(self.target))
        tags = ["keys"]
        view = extend_schema_view(
            retrieve=[
                _get("keys_get", KEY_PATH, tags),
                extend_schema(
                    operation_id="keys_head",
                    summary="Check a key",
                    description="As GET, with the headers only and never a body.",
                    tags=tags,
                    parameters=[KEY_PATH, NO_FORMAT, ETAG, X_TTL, X_VALUE_TYPE, *AUTH_HEADERS],
                    responses={
                        200: OpenApiResponse(description="The key exists."),
                        **bodiless(400, *AUTHENTICATED, 404, 503),
                    },
                    methods=["HEAD"],
                ),
            ],
            update=_set("keys_set", tags, seed=False),
            partial_update=extend_schema(
                operation_id="keys_touch",
                summary="Change a key's TTL",
                description="Touch: set a new TTL without rewriting the value.",
                tags=tags,
                parameters=[KEY_PATH, NO_FORMAT, *AUTH_HEADERS],
                request={JSON: TouchSerializer},
                responses={
                    (200, JSON): OpenApiResponse(TouchedSerializer, description="Touched."),
                    **errors(400, *AUTHENTICATED, 404, 413, 415, 503),
                },
            ),
            destroy=_delete("keys_delete", KEY_PATH, tags),
        )(_subclass(self.target))
        return _annotate(
            view,
            incr=extend_schema(
                operation_id="keys_incr",
                summary="Increment an integer",
                description="Add `delta` (default 1) to an integer value, keeping its TTL. "
                "The body may be empty.",
                tags=tags,
                parameters=[KEY_PATH, NO_FORMAT, ETAG, *AUTH_HEADERS],
                request={JSON: IncrSerializer},
                responses={
                    (200, JSON): OpenApiResponse(IncrementedSerializer, description="Done."),
                    **errors(400, *AUTHENTICATED, 404, 409, 413, 415, 503),
                },
            ),
        )


class BatchViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.BatchViewSet"

    def view_replacement(self) -> type:
        seed = _is_seed(self.target_callback)
        prefix, tags = ("seed_batch_", ["seed"]) if seed else ("batch_", ["batch"])
        return _annotate(
            _subclass(self.target),
            get_many=_batch(
                f"{prefix}get", "Get many keys", KeyListSerializer, BatchGetResultSerializer, tags
            ),
            set_many=_batch(
                f"{prefix}set", "Set many keys", ItemListSerializer, BatchSetResultSerializer, tags
            ),
            delete_many=_batch(
                f"{prefix}delete",
                "Delete many keys",
                KeyListSerializer,
                BatchDeleteResultSerializer,
                tags,
            ),
        )


class SyncViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.SyncViewSet"

    def view_replacement(self) -> type:
        return extend_schema_view(
            create=extend_schema(
                operation_id="sync",
                summary="Apply versioned writes (node to node)",
                description="Replication and migration between nodes: the newer version wins, "
                "so a replayed or reordered sync never loses a newer write. Needs the cluster "
                "secret.",
                tags=["cluster"],
                parameters=AUTH_HEADERS,
                request={JSON: SyncSerializer},
                responses={
                    (200, JSON): OpenApiResponse(SyncResultSerializer, description="Applied."),
                    **errors(400, *AUTHENTICATED, 413, 415),
                },
            )
        )(_subclass(self.target))


class StatsViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.StatsViewSet"

    def view_replacement(self) -> type:
        stats = PolymorphicProxySerializer(
            component_name="Stats",
            serializers=[NodeStatsSerializer, ClusterStatsSerializer],
            resource_type_field_name=None,
            many=False,
        )
        stats_scope = {400: "`invalid_request`: `scope` is neither `node` nor `cluster`."}
        scope = OpenApiParameter(
            "scope",
            str,
            OpenApiParameter.QUERY,
            enum=["node", "cluster"],
            default="node",
            description="`node`: this node only; `cluster`: summed over all nodes.",
        )
        return extend_schema_view(
            list=extend_schema(
                operation_id="stats",
                summary="Cache statistics",
                description="Hits, misses, hit ratio, items, bytes, evictions, expirations, "
                "operation counts and latency: of this node, or summed over the cluster.",
                tags=["monitoring"],
                parameters=[scope, *AUTH_HEADERS],
                responses={
                    (200, JSON): OpenApiResponse(stats, description="The statistics."),
                    **errors(400, *AUTHENTICATED, notes=stats_scope),
                },
            )
        )(_subclass(self.target))


class RateLimitHitSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="The counter's key (a key like any other).")
    rate = serializers.CharField(help_text='"100/m", "5/10s", "1000/h", "10000/d".')
    algorithm = serializers.ChoiceField(
        choices=["fixed_window", "sliding_window", "token_bucket"], default="fixed_window"
    )
    cost = serializers.IntegerField(required=False, default=1, help_text="Requests this counts.")
    burst = serializers.IntegerField(
        required=False, allow_null=True, help_text="token_bucket: its size (default: the count)."
    )
    reset = serializers.BooleanField(
        required=False, default=False, help_text="Forget the counter instead of counting."
    )


class RateLimitDecisionSerializer(serializers.Serializer):
    allowed = serializers.BooleanField()
    limit = serializers.IntegerField()
    remaining = serializers.IntegerField()
    reset_after = serializers.FloatField(help_text="Seconds until the quota is whole again.")
    retry_after = serializers.FloatField(
        allow_null=True, help_text="Seconds until this request would pass (0: it did; null: never)."
    )


class RateLimitViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.RateLimitViewSet"

    def view_replacement(self) -> type:
        return extend_schema_view(
            create=extend_schema(
                operation_id="ratelimit_hit",
                summary="Count a request against a rate limit",
                description="One atomic check of the algorithm on the counter, on the node "
                "that owns its key, in the counters' own store (user data cannot evict them). "
                "The `ratelimit` app's `cluster` storage calls this. Needs the `write` scope.",
                tags=["ratelimit"],
                parameters=AUTH_HEADERS,
                request=RateLimitHitSerializer,
                responses={
                    (200, JSON): OpenApiResponse(
                        RateLimitDecisionSerializer, description="Counted."
                    ),
                    **errors(400, *AUTHENTICATED, 503),
                },
            )
        )(_subclass(self.target))


class FlushViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.FlushViewSet"

    def view_replacement(self) -> type:
        return extend_schema_view(
            create=extend_schema(
                operation_id="flush",
                summary="Remove every key on every node",
                description="Clears the store of every node in the ring; nodes that do not "
                "answer are listed in `failed`. Needs the `admin` scope.",
                tags=["cluster"],
                parameters=AUTH_HEADERS,
                request=None,
                responses={
                    (200, JSON): OpenApiResponse(FlushedSerializer, description="Flushed."),
                    **errors(*AUTHENTICATED),
                },
            )
        )(_subclass(self.target))


class RingViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.RingViewSet"

    def view_replacement(self) -> type:
        return extend_schema_view(
            list=extend_schema(
                operation_id="cluster_ring",
                summary="The consistent-hash ring",
                description="The ring this node routes by: its version and its nodes.",
                tags=["cluster"],
                parameters=AUTH_HEADERS,
                responses={
                    (200, JSON): OpenApiResponse(RingSerializer, description="The ring."),
                    **errors(*AUTHENTICATED),
                },
            )
        )(_subclass(self.target))


class NodesViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.NodesViewSet"

    def view_replacement(self) -> type:
        return extend_schema_view(
            list=extend_schema(
                operation_id="cluster_nodes",
                summary="Every registered node",
                description="Status, last heartbeat and last reported stats of each node.",
                tags=["cluster"],
                parameters=AUTH_HEADERS,
                responses={
                    (200, JSON): OpenApiResponse(RegistrySerializer, description="The nodes."),
                    **errors(*AUTHENTICATED),
                },
            )
        )(_subclass(self.target))


class HealthViewSetSchema(OpenApiViewExtension):
    target_class = "cacheapi.api.views.HealthViewSet"

    def view_replacement(self) -> type:
        return extend_schema_view(
            list=extend_schema(
                operation_id="health",
                summary="Liveness of this node",
                description="Open to all (no API key). 503 while the node drains.",
                tags=["monitoring"],
                responses={
                    (200, JSON): OpenApiResponse(HealthSerializer, description="Serving."),
                    (503, JSON): OpenApiResponse(HealthSerializer, description="Draining."),
                },
            )
        )(_subclass(self.target))


class ApiKeyAuthSchema(OpenApiAuthenticationExtension):
    target_class = "cacheapi.api.auth.ApiKeyAuthentication"
    name = [API_KEY, CLUSTER_SECRET]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        view = auto_schema.view
        if view.scopes.get(getattr(view, "action", None)) == "internal":
            return [{CLUSTER_SECRET: []}]
        return [{API_KEY: []}, {CLUSTER_SECRET: []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, str]]:
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "An API key, as `X-API-Key: <key>` or, equally, "
                "`Authorization: Api-Key <key>`. Never in the URL.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-Cluster-Secret",
                "description": "The cluster's shared secret: node-to-node calls only.",
            },
        ]


# Hooks (SPECTACULAR_SETTINGS): the list of operations, and what lies outside DRF.
def _variant(callback: Any, **attrs: Any) -> Any:
    """A copy of a view callback with extra attributes, for this schema only."""

    @functools.wraps(callback)
    def view(*args: Any, **kwargs: Any) -> Any:
        return callback(*args, **kwargs)

    for name, value in attrs.items():
        setattr(view, name, value)
    return view


def preprocess_endpoints(endpoints: list[tuple[str, str, str, Any]]) -> list[Any]:
    """Document only POST on ``.../{key}/incr``, add HEAD on a key, tag the seed routes.

    The incr route also maps GET/PUT/PATCH/DELETE, which address a key ending in "/incr"; the
    key route already documents those. Seed routes share view callbacks with the REST routes,
    so they are tagged here to get operation ids of their own.
    """
    result = []
    for path, path_regex, method, callback in endpoints:
        actions = getattr(callback, "actions", None) or {}
        action = actions.get(method.lower())
        if "incr" in actions.values() and action != "incr":
            continue
        if not path.startswith("/api/"):
            callback = _variant(callback, seed_route=True)
        result.append((path, path_regex, method, callback))
        if action == "retrieve" and not _is_seed(callback):
            head = _variant(callback, actions={**actions, "head": action})
            result.append((path, path_regex, "HEAD", head))
    return result


NOT_ACCEPTABLE = "`not_acceptable`: `Accept` admits neither JSON nor `*/*`."


def add_not_acceptable(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Every API operation negotiates (``cacheapi.api.negotiation``): 406 where none is listed."""
    for item in result["paths"].values():
        for method, operation in item.items():
            answer: dict[str, Any]
            if method == "head":
                answer = {"description": f"{NOT_ACCEPTABLE} No body."}
            else:
                answer = {
                    "description": NOT_ACCEPTABLE,
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            operation["responses"].setdefault("406", answer)
    return result


def add_metrics(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """``/metrics`` is django-prometheus's plain Django view, which spectacular cannot see."""
    result["paths"]["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "tags": ["monitoring"],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return result
