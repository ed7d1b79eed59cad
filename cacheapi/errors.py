"""The API's error hierarchy and the one handler that renders every 4xx as JSON.

Every error leaves as ``{"error": {"code": "snake_case", "message": "what to fix"}}``: our own
``CacheError`` subclasses, the store's errors, DRF's exceptions and Django's 404/400 alike.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf
from rest_framework.response import Response

from cacheapi import store


class CacheError(Exception):
    """Base of the API's errors: a status, a stable code and a message for the caller."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


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
    status = 408
    code = "request_timeout"


class Forbidden(CacheError):
    status = 403
    code = "forbidden"


class ValueTooLarge(CacheError):
    status = 413
    code = "value_too_large"


class BatchTooLarge(CacheError):
    status = 413
    code = "batch_too_large"


class RequestTooLarge(CacheError):
    status = 413
    code = "request_too_large"


class NotFound(CacheError):
    status = 404
    code = "not_found"


class NotInteger(CacheError):
    status = 409
    code = "not_integer"


class PreconditionFailed(CacheError):
    status = 412
    code = "precondition_failed"


class Unavailable(CacheError):
    status = 503
    code = "unavailable"


# The store knows nothing of HTTP; its errors get their status here.
_STORE_ERRORS: dict[type[store.StoreError], type[CacheError]] = {
    store.ValueTooLarge: ValueTooLarge,
    store.NotInteger: NotInteger,
    store.IntegerOverflow: NotInteger,
}

# DRF exception class -> our code (DRF supplies the status).
_DRF_CODES: dict[type[drf.APIException], str] = {
    drf.ParseError: "bad_json",
    drf.NotAuthenticated: "unauthorized",
    drf.AuthenticationFailed: "unauthorized",
    drf.PermissionDenied: "forbidden",
    drf.NotFound: "not_found",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.Throttled: "rate_limited",
    drf.ValidationError: "invalid_request",
}


def from_store_error(exc: store.StoreError) -> CacheError:
    """The API error for an error of the store (which knows nothing of HTTP)."""
    return _STORE_ERRORS.get(type(exc), CacheError)(str(exc))


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _drf_message(exc: drf.APIException) -> str:
    detail = exc.detail
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    return _flatten(detail)


def _flatten(detail: Any) -> str:
    if isinstance(detail, list):
        return " ".join(_flatten(d) for d in detail)
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: map every known error to the envelope; others propagate."""
    response = _envelope(exc)
    if response is not None:
        # The envelope is JSON even when the request asked for raw bytes (Accept: octet-stream).
        response.content_type = "application/json"
        view = context.get("view")
        if isinstance(exc, drf.MethodNotAllowed) and view is not None:
            response["Allow"] = ", ".join(view.allowed_methods)
    return response


def _envelope(exc: Exception) -> Response | None:
    if isinstance(exc, store.StoreError):
        exc = from_store_error(exc)
    if isinstance(exc, CacheError):
        return Response(error_body(exc.code, exc.message), status=exc.status, headers=exc.headers)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("request_too_large", str(exc)), status=413)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(error_body("forbidden", "Permission denied."), status=403)
    if isinstance(exc, drf.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), exc.default_code)
        headers: dict[str, str] = {}
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        wait = getattr(exc, "wait", None)
        if wait is not None:
            headers["Retry-After"] = str(int(wait))
        return Response(
            error_body(code, _drf_message(exc)), status=exc.status_code, headers=headers
        )
    return None


# Django-level handlers (urls.handler400/403/404/500) for requests that never reach DRF.
def _json_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        return _json_error(413, "request_too_large", str(exception))
    message = str(exception) if isinstance(exception, SuspiciousOperation) else "Bad request."
    return _json_error(400, "bad_request", message)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error(403, "forbidden", "Permission denied.")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/admin/"):
        return defaults.page_not_found(request, exception or Http404())
    return _json_error(404, "not_found", f"No route for {request.method} {request.path}.")


def server_error(request: HttpRequest) -> JsonResponse:
    return _json_error(500, "internal_error", "Internal error; the node logged it.")
