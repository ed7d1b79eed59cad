"""A small keep-alive HTTP/1.1 client for node-to-node calls.

Peers call each other on every forwarded request, so the client's own cost is part of what
forwarding costs. urllib3 (on http.client, which parses headers with the email package) spent
about 330 us of CPU per call on this machine; this client sends one pre-assembled request and
reads the answer with two buffered reads, for a fraction of that (bench/results/cluster.md).
It speaks only what our nodes answer: a status line, headers, and a body framed by
Content-Length or chunked encoding. Idle connections are pooled per peer (LIFO); one that the
peer has closed meanwhile is noticed before reuse and replaced, so a call is never sent twice.
Works with gevent's patched sockets and with real threads.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from cacheapi.peer import frames

MAX_HEADER_LINE = 65536
log = logging.getLogger(__name__)


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)`` for the frames of every call: one ``send`` takes a small frame
    whole, and under gevent that skips ``sendall``'s own ``getsockopt`` per call; what a send
    leaves (a full socket buffer) goes by ``sendall``, within the socket's timeout."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class TransportError(OSError):
    """The peer could not be reached, or broke the connection or the protocol."""


class StreamsRefused(Exception):
    """No stream to send on now: the peer refused streams lately, or none is open yet (one is
    being opened in the background). The caller sends the call as an HTTP request instead."""


STREAM_RETRY_SECONDS = 60.0  # after a refused upgrade, ask again this much later
# Reuse an idle connection only while the peer surely still keeps it: gunicorn closes idle
# keep-alive connections after 30 s, an owner closes an idle stream after 60 s
# (cacheapi.peer.server.STREAM_IDLE_SECONDS). A connection closed just as a call goes out would
# fail that call, so connections are retired well before.
HTTP_MAX_IDLE_SECONDS = 20.0
STREAM_MAX_IDLE_SECONDS = 45.0


class Headers:
    """Response headers by lower-case name; ``get`` takes any case and defaults to ""."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str] | None = None) -> None:
        self._items: dict[str, str] = items if items is not None else {}  # lower-case names

    def __setitem__(self, name: str, value: str) -> None:
        self._items[name.lower()] = value

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def get(self, name: str, default: str = "") -> str:
        return self._items.get(name.lower(), default)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    data: bytes


class _Connection:
    __slots__ = ("idle_since", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.idle_since = time.monotonic()

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()

    def dropped(self) -> bool:
        """Readable while idle means the peer closed it (or sent junk): not reusable."""
        sock = self.sock
        if not isinstance(sock, ssl.SSLSocket):
            try:  # one non-blocking peek: cheaper than select, above all under gevent
                sock.settimeout(0)
                sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return False  # nothing to read: still open
            except OSError:
                return True
            except ValueError:
                pass  # a TLS socket of another class ("non-zero flags not allowed"): poll it
            else:
                return True  # b"" (closed by the peer) or bytes nobody asked for
        try:  # TLS cannot peek; ask the poller
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class Pool:
    """Keep-alive connections to one peer (scheme://host:port)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        max_idle: int = 32,
        keep_http: bool = True,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.encode("latin-1")
        self.timeout = timeout
        self._ssl = ssl_context
        self._idle: list[_Connection] = []
        self._idle_streams: list[_Connection] = []
        self._streams_refused_until = 0.0
        self._opening_stream = False
        self._lock = threading.Lock()
        # Whether a connection left over from a refused upgrade is kept for HTTP calls (peers
        # make them here; a CacheClient makes its HTTP calls elsewhere and would only leak it).
        self._keep_http = keep_http
        self._max_idle = max_idle

    def _connect(self) -> _Connection:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            context = self._ssl or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=self.host)
        return _Connection(sock)

    def _checkout(self) -> _Connection:
        conn = self._idle_connection(self._idle, HTTP_MAX_IDLE_SECONDS)
        return conn if conn is not None else self._connect()

    def _idle_connection(self, idle: list[_Connection], max_age: float) -> _Connection | None:
        """The most recently used idle connection still fit for a call, or None."""
        while True:
            with self._lock:
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            if time.monotonic() - conn.idle_since < max_age and not conn.dropped():
                conn.sock.settimeout(self.timeout)
                return conn
            conn.close()

    def _checkin(self, conn: _Connection, *, stream: bool = False) -> None:
        idle = self._idle_streams if stream else self._idle
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Call:
        """Send a request now; its answer is read by ``Call.response()``, due within
        ``timeout`` (the pool's by default). Several calls sent before any answer is read run
        on their peers in parallel, with no thread per call."""
        head = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: " + self.host_header]
        head += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
        head.append(b"Content-Length: %d" % len(body or b""))
        payload = b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")
        try:
            conn = self._checkout()
        except OSError as exc:  # refused, unreachable, connect timeout, TLS handshake
            raise TransportError(f"{self.host}:{self.port}: {exc}") from exc
        return self._put(conn, payload, method, timeout=timeout)

    def _put(
        self,
        conn: _Connection,
        payload: bytes,
        method: str,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Call:
        """Write a request on ``conn``; its answer is due within the timeout from now."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            send_all(conn.sock, payload)
        except OSError as exc:
            conn.close()
            raise TransportError(f"{self.host}:{self.port}: {exc}") from exc
        return Call(self, conn, method, deadline, stream=stream)

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Response:
        return self.send(method, path, headers, body).response()

    # Streams: a connection upgraded once (``upgrade`` request: path and headers, answered
    # 101) then carries one call after another as frames, with no HTTP to parse per call.
    def send_frame(
        self,
        upgrade: tuple[str, Mapping[str, str], str],
        op: str,
        body: bytes,
        timeout: float | None = None,
        *,
        open_now: bool = False,
    ) -> Call:
        """Send one framed call on an idle stream to this peer; read it with
        ``Call.response()``.

        ``upgrade`` is (path, headers, protocol). Raises StreamsRefused when there is no idle
        stream (one is then opened in the background; with ``open_now``, one is opened here
        first) or the peer refused the upgrade within the last ``STREAM_RETRY_SECONDS``; the
        caller sends the call as HTTP instead."""
        if time.monotonic() < self._streams_refused_until:
            raise StreamsRefused(f"{self.host}:{self.port} does not upgrade to streams")
        conn = self._idle_connection(self._idle_streams, STREAM_MAX_IDLE_SECONDS)
        if conn is None and open_now:
            conn = self._open_stream(upgrade)
        if conn is None:
            # Opening a stream takes a round trip (the upgrade's 101), which must not hold up
            # a batch's sends: this call goes as HTTP, and a stream opens in the background.
            self._open_stream_later(upgrade)
            raise StreamsRefused(f"no idle stream to {self.host}:{self.port} yet")
        return self._put(conn, frames.encode_request(op, body), "", stream=True, timeout=timeout)

    def _open_stream_later(self, upgrade: tuple[str, Mapping[str, str], str]) -> None:
        """Open one stream in a background thread (a greenlet under gevent), one at a time."""
        with self._lock:
            if self._opening_stream:
                return
            self._opening_stream = True

        def run() -> None:
            try:
                self._checkin(self._open_stream(upgrade), stream=True)
            except (OSError, StreamsRefused) as exc:
                log.debug("no stream to %s:%s: %s", self.host, self.port, exc)
            finally:
                with self._lock:
                    self._opening_stream = False

        threading.Thread(target=run, name="open-stream", daemon=True).start()

    def _open_stream(self, upgrade: tuple[str, Mapping[str, str], str]) -> _Connection:
        path, headers, protocol = upgrade
        head = [f"POST {path} HTTP/1.1".encode("latin-1"), b"Host: " + self.host_header]
        head += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
        head += [f"Upgrade: {protocol}".encode("latin-1"), b"Connection: Upgrade"]
        head.append(b"Content-Length: 0")
        conn = self._connect()
        try:
            conn.sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
            reader = _DeadlineReader(conn, time.monotonic() + self.timeout)
            response, keep = _read_response(reader, "POST")
        except (OSError, ValueError) as exc:
            conn.close()
            raise TransportError(f"{self.host}:{self.port}: {exc}") from exc
        if response.status == 101:
            conn.sock.settimeout(self.timeout)
            return conn
        if keep and response.status >= 200 and self._keep_http:  # clean for HTTP: reuse it
            self._checkin(conn)
        else:
            conn.close()
        self._streams_refused_until = time.monotonic() + STREAM_RETRY_SECONDS
        raise StreamsRefused(f"{self.host}:{self.port} answered {response.status} to the upgrade")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            idle += self._idle_streams
            self._idle_streams = []
        for conn in idle:
            conn.close()


class Call:
    """A request on the wire. ``response()`` reads its answer (within the timeout counted from
    the send) and gives the connection back; ``close()`` drops a call that will not be read."""

    __slots__ = ("_conn", "_deadline", "_method", "_pool", "_stream")

    def __init__(
        self, pool: Pool, conn: _Connection, method: str, deadline: float, *, stream: bool = False
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._method = method
        self._deadline = deadline
        self._stream = stream

    def response(self) -> Response:
        conn = self._conn
        if conn is None:
            raise RuntimeError("this call's answer was already read, or the call was dropped")
        self._conn = None
        pool = self._pool
        reader = _DeadlineReader(conn, self._deadline)
        try:
            if self._stream:
                response, keep = _read_frame(reader), True
            else:
                response, keep = _read_response(reader, self._method)
        except (OSError, ValueError) as exc:
            conn.close()
            raise TransportError(f"{pool.host}:{pool.port}: {exc}") from exc
        except BaseException:  # e.g. the greenlet killed mid-read: the stream is unusable
            conn.close()
            raise
        if keep:
            pool._checkin(conn, stream=self._stream)
        else:
            conn.close()
        return response

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# Past its deadline a read may still take what has already arrived: a batch reads its parts
# one after another, and the answer of a fast owner read after a slow one's timeout is not late.
LATE_READ_GRACE = 0.001


class _DeadlineReader:
    """Reads that share one deadline: each read may wait only for the time left (or
    ``LATE_READ_GRACE`` once it has passed), so a peer that trickles its headers cannot hold
    the caller much past ``timeout`` in all."""

    __slots__ = ("_conn", "_deadline")

    def __init__(self, conn: _Connection, deadline: float) -> None:
        self._conn = conn
        self._deadline = deadline

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        self._conn.sock.settimeout(max(remaining, LATE_READ_GRACE))

    def readline(self, limit: int = -1) -> bytes:
        self._arm()
        return self._conn.reader.readline(limit)

    def read(self, size: int = -1) -> bytes:
        self._arm()
        return self._conn.reader.read(size)


def _readline(reader: object) -> bytes:
    line = reader.readline(MAX_HEADER_LINE + 1)  # type: ignore[attr-defined]
    if not line:
        raise TransportError("connection closed by the peer")
    if len(line) > MAX_HEADER_LINE:
        raise TransportError("header line too long")
    return line


def _read_response(reader: object, method: str) -> tuple[Response, bool]:
    status_line = _readline(reader)
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise TransportError(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    headers = Headers()
    while True:
        line = _readline(reader)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and parts[0] != b"HTTP/1.0"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b""), keep
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return Response(status, headers, _read_chunked(reader)), keep
    length = headers.get("content-length")
    if not length:  # framed by the connection closing
        return Response(status, headers, reader.read()), False  # type: ignore[attr-defined]
    data = reader.read(int(length))  # type: ignore[attr-defined]
    if len(data) != int(length):
        raise TransportError("connection closed mid-body")
    return Response(status, headers, data), keep


def _read_frame(reader: object) -> Response:
    """One answer frame (``cacheapi.peer.frames`` has the layout)."""
    head = reader.read(frames.ANSWER_HEAD.size)  # type: ignore[attr-defined]
    if len(head) < frames.ANSWER_HEAD.size:
        raise TransportError("connection closed by the peer")
    length, status, meta_length = frames.answer_sizes(head)
    rest = reader.read(length - 4)  # type: ignore[attr-defined]
    if len(rest) != length - 4:
        raise TransportError("connection closed mid-frame")
    meta, body = frames.decode_answer_rest(rest, meta_length)
    return Response(status, Headers(meta), body)


def _read_chunked(reader: object) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int(_readline(reader).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while _readline(reader) not in (b"\r\n", b"\n"):
                pass  # trailers
            return b"".join(chunks)
        chunk = reader.read(size)  # type: ignore[attr-defined]
        if len(chunk) != size:
            raise TransportError("connection closed mid-chunk")
        chunks.append(chunk)
        _readline(reader)


class Transport:
    """One pool per peer URL."""

    def __init__(
        self, *, timeout: float, ca_certs: str | None = None, keep_http: bool = True
    ) -> None:
        self.timeout = timeout
        self._keep_http = keep_http
        self._ssl = ssl.create_default_context(cafile=ca_certs) if ca_certs else None
        self._pools: dict[str, Pool] = {}
        self._lock = threading.Lock()

    def pool(self, base_url: str) -> Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            with self._lock:
                pool = self._pools.get(base_url)
                if pool is None:
                    pool = Pool(
                        base_url,
                        timeout=self.timeout,
                        ssl_context=self._ssl,
                        keep_http=self._keep_http,
                    )
                    self._pools[base_url] = pool
        return pool

    def send(
        self,
        base_url: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Call:
        return self.pool(base_url).send(method, path, headers, body, timeout)

    def send_frame(
        self,
        base_url: str,
        upgrade: tuple[str, Mapping[str, str], str],
        op: str,
        body: bytes,
        timeout: float | None = None,
        *,
        open_now: bool = False,
    ) -> Call:
        return self.pool(base_url).send_frame(upgrade, op, body, timeout, open_now=open_now)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def timed_out(exc: BaseException) -> bool:
    """The call failed because the peer did not answer in time (not refused or reset)."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)
