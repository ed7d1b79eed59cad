"""How a node's WSGI app is served under gevent."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

# gunicorn's marker for "the app kept the connection" (its async workers honour it).
from gunicorn.workers.base_async import ALREADY_HANDLED


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
    try:
        from gevent import monkey, sleep
    except ImportError:
        return None
    return sleep if monkey.is_module_patched("socket") else None


# Node-to-node calls: the API under these prefixes, sent with the cluster secret and hops.
PEER_PREFIXES = ("/api/v1/", "/sync")
INTERNAL_PREFIX = "/internal/"  # store operations between nodes (cacheapi.internal)


def is_peer_call(environ: dict[str, Any]) -> bool:
    return (
        "HTTP_X_FORWARDED_HOPS" in environ
        and "HTTP_X_CLUSTER_SECRET" in environ
        and environ.get("PATH_INFO", "").startswith(PEER_PREFIXES)
    )


def peer_handler() -> Any:
    """A Django handler without the middleware chain, for node-to-node calls.

    Sessions, CSRF, messages, clickjacking and security headers, static files: none of them
    means anything between two nodes, and together they cost about a fifth of a forwarded
    request on the owner (bench/results/cluster.md). The views, DRF authentication (which
    still checks the cluster secret) and the URLconf are the same ones."""
    from django.core.handlers.exception import convert_exception_to_response
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpRequest, HttpResponseBase

    class PeerHandler(WSGIHandler):
        def load_middleware(self, is_async: bool = False) -> None:
            self._view_middleware: list[Any] = []
            self._template_response_middleware: list[Any] = []
            self._exception_middleware: list[Any] = []
            get_response = self._get_response  # type: ignore[attr-defined]  # Django's, unstubbed

            def with_length(request: HttpRequest) -> HttpResponseBase:
                response = get_response(request)
                if not response.streaming and not response.has_header("Content-Length"):
                    response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
                return response

            self._middleware_chain = convert_exception_to_response(with_length)

    return PeerHandler()


class PeerShortcut:
    """Sends node-to-node calls to ``internal_app`` (store operations under ``/internal/``)
    or ``peer_app`` (the API with hops and the secret), and everything else to ``app``."""

    def __init__(
        self,
        app: Callable[..., Any],
        peer_app: Callable[..., Any],
        internal_app: Callable[..., Any],
    ) -> None:
        self.app = app
        self.peer_app = peer_app
        self.internal_app = internal_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").startswith(INTERNAL_PREFIX):
            return self.internal_app(environ, start_response)
        if is_peer_call(environ):
            return self.peer_app(environ, start_response)
        return self.app(environ, start_response)
