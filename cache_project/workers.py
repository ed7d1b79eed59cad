"""The gunicorn workers a node runs: gunicorn's own, answering as the API does.

gunicorn answers what it rejects itself (a request line or headers too large, a malformed
request) with an HTML page; these workers answer with the API's JSON error envelope instead.
``gunicorn_conf`` selects them.
"""

from __future__ import annotations

from typing import Any

from gunicorn import util
from gunicorn.workers import ggevent, gthread

JSON_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def json_error(status: int, reason: str, code: str, message: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 answer carrying the error envelope; the connection closes after it."""
    import orjson

    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _StatusLine:
    """Stands in for the client socket while gunicorn writes its HTML error page, so that the
    status gunicorn chose (and its logging) stay gunicorn's; only the page is replaced."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> tuple[int, str]:
        first = self.data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if len(first) == 3 and first[1].isdigit():
            return int(first[1]), first[2]
        return 400, "Bad Request"


class JSONErrors:
    """Mixin for gunicorn workers: the errors gunicorn answers itself leave as JSON."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        page = _StatusLine()
        super().handle_error(req, page, addr, exc)  # type: ignore[misc]  # gunicorn's, untyped
        status, reason = page.status()
        code = JSON_ERROR_CODES.get(status, "bad_request" if status < 500 else "internal_error")
        message = "the node could not serve this request" if status == 500 else str(exc)
        try:
            util.write_nonblock(client, json_error(status, reason, code, message))
        except Exception:  # the client went away: nothing to tell it
            self.log.debug("Failed to send error message.")  # type: ignore[attr-defined]


class GeventWorker(JSONErrors, ggevent.GeventWorker):
    """gunicorn's gevent worker, with JSON errors."""


class ThreadWorker(JSONErrors, gthread.ThreadWorker):
    """gunicorn's gthread worker, with JSON errors."""
