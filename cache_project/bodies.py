"""Request bodies that are whole, or refused, before any app reads them.

Django's ``WSGIRequest`` reads exactly ``CONTENT_LENGTH`` bytes of ``wsgi.input``, and none when
the header is absent: a chunked body (which has no Content-Length) reached the views as an empty
one, so a chunked ``PUT`` stored nothing or zero bytes and a chunked ``incr {"delta": 100}``
added 1. A body cut off before its Content-Length was read as if it were complete, and stored.

``RequestBodies`` sits in front of the node's WSGI app (Django and the internal app alike):

- a chunked body (gunicorn decodes the chunks) is read into memory up to the request limit and
  handed on with its Content-Length; over the limit: 413; malformed or cut off: 400;
- a body with a Content-Length is read through a stream that raises ``IncompleteBody`` (400)
  when the connection ends early and ``RequestTimeout`` (408) when it stalls past the worker's
  ``BODY_TIMEOUT``, so the API answers with its error envelope and stores nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from gunicorn.http.errors import ChunkMissingTerminator, ParseException

from cacheapi import errors

_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large"}


def request_limit(environ: dict[str, Any]) -> int:
    """The largest body a request may carry: MAX_REQUEST_BYTES, more for internal calls."""
    from cacheapi import node
    from cacheapi.peer.server import PREFIX
    from cacheapi.settings import cluster_settings

    if environ.get("PATH_INFO", "").startswith(PREFIX):
        return node.internal_max_body()
    return int(cluster_settings.MAX_REQUEST_BYTES)


class RequestBodies:
    """WSGI middleware; ``max_body(environ)`` is the largest body the request may carry."""

    def __init__(
        self,
        app: Callable[..., Any],
        max_body: Callable[[dict[str, Any]], int] = request_limit,
    ) -> None:
        self.app = app
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            try:
                body = self._read_chunked(environ)
            except errors.CacheError as exc:
                return _refuse(exc, start_response)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            length = environ.get("CONTENT_LENGTH") or ""
            if length.isascii() and length.isdigit() and length.strip("0"):
                environ["wsgi.input"] = DeclaredBody(environ["wsgi.input"], int(length))
        return self.app(environ, start_response)

    def _read_chunked(self, environ: dict[str, Any]) -> bytes:
        limit = self.max_body(environ)
        body = _guarded(environ["wsgi.input"].read, limit + 1)
        if len(body) > limit:
            raise errors.RequestTooLarge(f"request body is over the limit of {limit} bytes")
        return body


class DeclaredBody:
    """``wsgi.input`` of a body with a Content-Length: it ends there, and never sooner."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self._left = length

    def read(self, size: int | None = -1) -> bytes:
        want = self._want(size)
        if not want:
            return b""
        data = _guarded(self._stream.read, want)
        while len(data) < want:  # a server may return less than asked before the end
            more = _guarded(self._stream.read, want - len(data))
            if not more:
                raise errors.IncompleteBody(
                    f"the connection ended {self._left - len(data)} bytes before the end of "
                    "the body its Content-Length declared"
                )
            data += more
        self._left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        want = self._want(size)
        if not want:
            return b""
        line = _guarded(self._stream.readline, want)
        if len(line) < want and not line.endswith(b"\n"):
            raise errors.IncompleteBody("the connection ended before the end of the body")
        self._left -= len(line)
        return line

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _want(self, size: int | None) -> int:
        return self._left if size is None or size < 0 else min(size, self._left)


def _guarded(read: Callable[[int], bytes], size: int) -> bytes:
    """One read of the body, with the connection's failures as API errors."""
    try:
        return read(size)
    except TimeoutError as exc:
        raise errors.RequestTimeout("the request body stalled; send it without pauses") from exc
    except ChunkMissingTerminator as exc:
        raise errors.IncompleteBody(f"the chunked body ended early: {exc}") from exc
    except ParseException as exc:
        raise errors.InvalidRequest(f"malformed chunked body: {exc}") from exc
    except OSError as exc:  # gunicorn's NoMoreData, a reset: the client went away mid-body
        raise errors.IncompleteBody("the connection ended before the end of the body") from exc


def _refuse(exc: errors.CacheError, start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = orjson.dumps(errors.error_body(exc.code, exc.message))
    status = f"{exc.status} {_REASONS.get(exc.status, 'Error')}"
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
