"""The gunicorn workers a node runs: gunicorn's own, hardened against idle and malformed clients.

gunicorn answers what it rejects itself (a request line or headers too large, a malformed
request) with an HTML page; these workers answer with the API's JSON error envelope instead.

The gevent worker also keeps a node reachable when clients hold many connections open:

- it serves ``WORKER_CONNECTIONS`` client connections, plus ``PEER_CONNECTIONS`` kept for other
  nodes: a connection accepted beyond the first number is served only for calls carrying the
  cluster secret and for ``/health`` (the heartbeat's probe); anything else there gets 503;
- a new connection must send a complete request head within ``HEADER_TIMEOUT`` seconds, or it
  is closed (gunicorn's ``keepalive`` still bounds the wait for each later request);
- while a request is served, any read or write on its connection that makes no progress for
  ``BODY_TIMEOUT`` seconds fails (a stalled body is answered 408, ``cache_project.bodies``).

``gunicorn_conf`` selects these classes and raises the open-files limit to fit the connections.
"""

from __future__ import annotations

import contextlib
import resource
import threading
from typing import Any

import gevent
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
    503: "overloaded",
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


class _Connection:
    __slots__ = ("requests", "reserved")

    def __init__(self, reserved: bool) -> None:
        self.reserved = reserved
        self.requests = 0


class LeavesOnTerm:
    """SIGTERM (gunicorn's graceful stop) first hands the node's keys to the other nodes
    (``cacheapi.node.Node.leave``, bounded by ``DRAIN_TIMEOUT``) while the node still serves,
    then stops as gunicorn does. SIGQUIT and SIGINT (a quick stop, as ``runcluster`` and the
    tests stop a whole cluster) skip the hand-off: nodes stopping together must not drain into
    each other. The master's ``graceful_timeout`` covers the drain (``gunicorn_conf``)."""

    alive: bool
    cfg: Any
    log: Any
    _leaving = False

    def handle_exit(self, sig: Any, frame: Any) -> None:
        if self._leaving:
            return
        self._leaving = True
        self._spawn(self._leave_then_stop)

    def _spawn(self, target: Any) -> None:
        raise NotImplementedError

    def _leave_then_stop(self) -> None:
        try:
            from cacheapi import node

            node.current().leave()
        except Exception:
            self.log.exception("handing keys off on SIGTERM failed")
        finally:
            # What is left of the graceful stop waits for open connections, not for the drain.
            with contextlib.suppress(Exception):
                self.cfg.set("graceful_timeout", SHUTDOWN_GRACE)
            self.alive = False


SHUTDOWN_GRACE = 3


class GeventWorker(LeavesOnTerm, JSONErrors, ggevent.GeventWorker):
    """gunicorn's gevent worker with room kept for peers and timeouts for idle clients."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: dict[Any, _Connection] = {}  # greenlet serving it -> its state
        self.header_timeout = 5.0
        self.body_timeout = 30.0
        self.peer_connections = 0
        self.refused = 0  # client requests refused on a peer slot

    def _spawn(self, target: Any) -> None:
        gevent.spawn(target)  # out of the signal handler, so it may block

    def run(self) -> None:
        # The app is loaded (init_process) before run(), so Django's settings are readable.
        from cacheapi.settings import cluster_settings

        self.header_timeout = float(cluster_settings.HEADER_TIMEOUT)
        self.body_timeout = float(cluster_settings.BODY_TIMEOUT)
        self.peer_connections = int(cluster_settings.PEER_CONNECTIONS)
        self.worker_connections = self.cfg.worker_connections + self.peer_connections
        super().run()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        current = gevent.getcurrent()
        reserved = len(self.connections) >= self.cfg.worker_connections
        self.connections[current] = _Connection(reserved)
        try:
            super().handle(listener, client, addr)
        finally:
            del self.connections[current]

    def timeout_ctx(self) -> Any:
        """How long gunicorn waits for a request head: ``HEADER_TIMEOUT`` on a new connection,
        ``keepalive`` between the requests of a kept-alive one."""
        connection = self.connections.get(gevent.getcurrent())
        if connection is not None and connection.requests == 0:
            return gevent.Timeout(self.header_timeout, False)
        return super().timeout_ctx()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        connection = self.connections.get(gevent.getcurrent())
        if connection is not None:
            connection.requests += 1
            if connection.reserved and not self._from_peer(req):
                self._refuse(sock)
                raise StopIteration()
        sock.settimeout(self.body_timeout)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            with contextlib.suppress(OSError):  # between requests, gunicorn's keepalive applies
                sock.settimeout(None)

    def _from_peer(self, req: Any) -> bool:
        """A call from another node (the cluster secret) or a health probe."""
        if req.path == "/health":
            return True
        from cacheapi.api.auth import secrets_match
        from cacheapi.settings import cluster_settings

        for name, value in req.headers:
            if name == "X-CLUSTER-SECRET":
                return secrets_match(value, cluster_settings.SECRET)
        return False

    def _refuse(self, sock: Any) -> None:
        message = (
            "this node is at its connection limit (WORKER_CONNECTIONS); "
            "the connections left are kept for other nodes"
        )
        answer = json_error(503, "Service Unavailable", "overloaded", message, Retry_After="1")
        with contextlib.suppress(OSError):
            util.write_nonblock(sock, answer)
        self.refused += 1
        if self.refused % 1000 == 1:  # the first, then one line a thousand
            self.log.warning(
                "WORKER_CONNECTIONS reached: %d client requests refused on peer slots so far",
                self.refused,
            )


class ThreadWorker(LeavesOnTerm, JSONErrors, gthread.ThreadWorker):
    """gunicorn's gthread worker, with JSON errors."""

    def _spawn(self, target: Any) -> None:
        threading.Thread(target=target, name="leave", daemon=True).start()


def raise_open_files_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` (at most the hard limit); its
    workers inherit it. Returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard
