"""How a node's WSGI app is served under gevent."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


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
