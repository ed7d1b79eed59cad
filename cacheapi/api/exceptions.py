"""The API's exception handler: every error a view meets leaves as the JSON envelope.

Our ``CacheError`` subclasses (raised by validation, the router and the peer protocol, with the
status ``cacheapi.errors.STATUS`` gives their code), the store's errors, DRF's exceptions and
Django's 404/400/403/500 alike.
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
from cacheapi.errors import CacheError, error_body, from_store_error

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
