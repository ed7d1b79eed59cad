"""The cache's error hierarchy: what went wrong, as a stable code and a message for the caller.

Raised by validation, the router and the peer protocol; none of them knows HTTP. The two HTTP
faces (the API's exception handler in ``cacheapi.api.exceptions`` and the owner's side of the
peer protocol) answer each code with the status in ``STATUS``, always in the one envelope
``{"error": {"code": "snake_case", "message": "what to fix"}}``.
"""

from __future__ import annotations

from typing import Any

from cacheapi import store


class CacheError(Exception):
    """Base of the cache's errors: a stable code and a message that says what to fix."""

    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        """The HTTP status the faces answer with (``STATUS``); the router never reads it."""
        return STATUS.get(self.code, 400)


# Bad input: nothing was changed.
class InvalidJSON(CacheError):
    code = "bad_json"


class InvalidKey(CacheError):
    code = "invalid_key"


class InvalidTTL(CacheError):
    code = "invalid_ttl"


class InvalidValue(CacheError):
    code = "invalid_value"


class InvalidRequest(CacheError):
    code = "invalid_request"


class IncompleteBody(CacheError):
    """The connection ended before the body its request declared (or a chunked body) did."""

    code = "incomplete_body"


class RequestTimeout(CacheError):
    """A body that stalled past the worker's BODY_TIMEOUT."""

    code = "request_timeout"


class Unauthorized(CacheError):
    """No API key, or an unknown or revoked one."""

    code = "unauthorized"


class Forbidden(CacheError):
    code = "forbidden"


class ValueTooLarge(CacheError):
    code = "value_too_large"


class BatchTooLarge(CacheError):
    code = "batch_too_large"


class RequestTooLarge(CacheError):
    code = "request_too_large"


class NotAcceptable(CacheError):
    code = "not_acceptable"


class MethodNotAllowed(CacheError):
    code = "method_not_allowed"


class LengthRequired(CacheError):
    code = "length_required"


# Outcomes of an operation on a key.
class NotFound(CacheError):
    """The key is absent (or expired)."""

    code = "not_found"


class NotInteger(CacheError):
    """``incr`` on a value that is not a 64-bit integer, or that would leave the range."""

    code = "not_integer"


class PreconditionFailed(CacheError):
    """``add`` found the key, or compare-and-set found another version."""

    code = "precondition_failed"


# The cluster.
class Unavailable(CacheError):
    """No live owner answered in time."""

    code = "unavailable"


class Joining(Unavailable):
    """A joining node does not have the key (yet): ask the key's next owner."""

    code = "joining"


class RingBehind(Unavailable):
    """This node's ring is older than the caller's: it cannot tell yet what the caller owns."""

    code = "ring_behind"


class BadGateway(CacheError):
    """Another node answered, but not as a node of this cluster should (wrong secret or
    version, a malformed answer, its own failure): never the caller's fault."""

    code = "bad_gateway"


class RateLimited(CacheError):
    """A rate limit refused the call (the API's own, ``API_RATE_LIMIT``)."""

    code = "rate_limited"


class UnknownOperation(CacheError):
    code = "unknown_operation"


class StreamsUnavailable(CacheError):
    code = "streams_unavailable"


class ServerError(CacheError):
    code = "server_error"


class Relayed(CacheError):
    """An error another node answered with, passed on with its own code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# code -> HTTP status, for the faces that speak HTTP.
STATUS: dict[str, int] = {
    "bad_request": 400,
    "bad_json": 400,
    "invalid_key": 400,
    "invalid_ttl": 400,
    "invalid_value": 400,
    "invalid_request": 400,
    "incomplete_body": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "unknown_operation": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "request_timeout": 408,
    "not_integer": 409,
    "length_required": 411,
    "precondition_failed": 412,
    "value_too_large": 413,
    "batch_too_large": 413,
    "request_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "server_error": 500,
    "internal_error": 500,
    "streams_unavailable": 501,
    "bad_gateway": 502,
    "unavailable": 503,
    "ring_behind": 503,
    "joining": 503,
    "overloaded": 503,
}

# The store knows nothing of codes; its errors get theirs here.
_STORE_ERRORS: dict[type[store.StoreError], type[CacheError]] = {
    store.ValueTooLarge: ValueTooLarge,
    store.NotInteger: NotInteger,
    store.IntegerOverflow: NotInteger,
}


def from_store_error(exc: store.StoreError) -> CacheError:
    return _STORE_ERRORS.get(type(exc), CacheError)(str(exc))


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
