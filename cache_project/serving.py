"""How a node's WSGI app is served: which stack each request goes through, and gevent fairness.

Each request pays only for what means something to it (DESIGN.md, process model):

- ``/internal/`` goes to the peer protocol's app (``cacheapi.peer.server``), without Django;
- ``/api/v1/stream`` to the client streams (``cacheapi.api.streams``), also without Django;
- the admin and its static files go through Django's full middleware stack
  (``settings.MIDDLEWARE``: sessions, CSRF, auth, messages, clickjacking, static files);
- everything else (the API, the seed routes, ``/health``, ``/metrics``, the schema) goes through
  ``settings.API_MIDDLEWARE`` only: an API-key client has no session, cookie or form to guard.

This is the only module, with ``gunicorn_conf``, that knows gunicorn and gevent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler, get_script_name
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix
from django.utils.module_loading import import_string

# gunicorn's marker for "the app kept the connection" (its async workers honour it).
from gunicorn.workers.base_async import ALREADY_HANDLED

from cache_project.bodies import RequestBodies

INTERNAL_PREFIX = "/internal/"
STREAM_PATH = "/api/v1/stream"  # client streams (cacheapi.api.streams), served without Django


class ApiHandler(WSGIHandler):
    """Django's WSGI handler with ``settings.API_MIDDLEWARE`` instead of ``MIDDLEWARE``.

    Same URLconf, views, signals and error handlers; only the middleware chain differs. Its
    answers carry Content-Length (the full stack's CommonMiddleware sets it there), so gunicorn
    need not chunk them."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]
        for path in reversed(settings.API_MIDDLEWARE):
            middleware = import_string(path)(handler)
            if hasattr(middleware, "process_view"):
                self._view_middleware.insert(0, middleware.process_view)
            if hasattr(middleware, "process_template_response"):
                self._template_response_middleware.append(middleware.process_template_response)
            if hasattr(middleware, "process_exception"):
                self._exception_middleware.append(middleware.process_exception)
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = handler

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """``WSGIHandler.__call__`` without the ``request_started`` and ``request_finished``
        signals for plain answers. Their receivers reset the debug query log, check every
        database connection's age and close Django's cache connections: about a sixth of an
        API call's CPU, while an API call touches the database only when its key is not in
        the verification cache, and ``cacheapi.api.auth`` checks the connection there
        instead. Streaming and file answers are closed (and signalled) as Django does."""
        set_script_prefix(get_script_name(environ))
        request = self.request_class(environ)
        response = self.get_response(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        headers = [
            *response.items(),
            *(("Set-Cookie", c.output(header="")) for c in response.cookies.values()),
        ]
        start_response(f"{response.status_code} {response.reason_phrase}", headers)
        if response.streaming:
            return response
        return [response.content]  # type: ignore[attr-defined]

    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        response = super().get_response(request)
        if not response.streaming and not response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
        return response


def site_prefixes() -> tuple[str, ...]:
    """Paths that take Django's full stack: the admin and the static files it serves."""
    static = "/" + settings.STATIC_URL.strip("/") + "/"
    return ("/admin/", static)


class NodeApp:
    """Sends each request to the stack it needs (see the module docstring)."""

    def __init__(
        self,
        api: Callable[..., Any],
        site: Callable[..., Any],
        internal: Callable[..., Any],
        site_prefixes: tuple[str, ...] = ("/admin/", "/static/"),
        streams: Callable[..., Any] | None = None,
    ) -> None:
        self.api = api
        self.site = site
        self.internal = internal
        self.site_prefixes = site_prefixes
        self.streams = streams

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(INTERNAL_PREFIX):
            return self.internal(environ, start_response)
        if path == STREAM_PATH and self.streams is not None:
            return self.streams(environ, start_response)
        if path.startswith(self.site_prefixes):
            return self.site(environ, start_response)
        return self.api(environ, start_response)


class YieldAfterResponse:
    """Under gevent, let other connections run once each response has been written.

    A keep-alive connection whose next request is already buffered is otherwise served again
    at once, so with several busy connections one of them can hold the worker for a while:
    measured with 8 connections on one node, p99 latency fell from about 100 ms to 5 ms with
    this, for the same throughput (bench/results/foundation.md). The yield runs in ``close()``,
    which the server calls after the last byte is sent, so no answer waits for it."""

    def __init__(self, app: Callable[..., Any], sleep: Callable[[float], None]) -> None:
        self.app = app
        self.sleep = sleep

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        result = self.app(environ, start_response)
        if result is ALREADY_HANDLED:
            return result  # the app kept the connection (an internal stream): nothing to wrap
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return result  # keep sendfile for static files
        return _Closing(result, self.sleep)


class _Closing:
    def __init__(self, result: Iterable[bytes], sleep: Callable[[float], None]) -> None:
        self._result = result
        self._sleep = sleep

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._sleep(0)


def gevent_sleep() -> Callable[[float], None] | None:
    """``gevent.sleep`` when this process runs under gevent (sockets patched), else None."""
    try:
        from gevent import monkey, sleep
    except ImportError:
        return None
    return sleep if monkey.is_module_patched("socket") else None


def node_application(site: Callable[..., Any]) -> Callable[..., Any]:
    """The WSGI app of a served node around ``site`` (Django's full-stack handler), with the
    node's background tasks started. Under gevent, internal calls may keep their connection
    as a stream, and every answer yields to other connections once sent."""
    from cacheapi import node

    sleep = gevent_sleep()
    internal = node.internal_app(
        already_handled=ALREADY_HANDLED if sleep is not None else None, pause=sleep
    )
    streams = node.stream_app(
        already_handled=ALREADY_HANDLED if sleep is not None else None, pause=sleep
    )
    app: Callable[..., Any] = NodeApp(ApiHandler(), site, internal, site_prefixes(), streams)
    app = RequestBodies(app)  # bodies whole or refused, chunked ones included
    if sleep is not None:
        app = YieldAfterResponse(app, sleep)
    node.current().start()
    return app
