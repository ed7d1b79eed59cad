"""The keep-alive HTTP/1.1 client against a real local raw-socket server whose answers each
test scripts byte for byte."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from cacheapi.peer.transport import Headers, Pool, Transport, TransportError
from tests.processes import wait_for as poll_until

TIMEOUT = 0.3  # the client's socket timeout in these tests
WAIT = 2.0  # how long a test waits for something that should happen at once


@dataclass(frozen=True)
class Seen:
    """One request as the server received it, and the connection (numbered from 0) it came on."""

    conn: int
    method: str
    path: str
    headers: list[tuple[str, str]]  # as sent: order and spelling kept
    body: bytes


@dataclass
class Reply:
    """What the server does with one request."""

    data: bytes | list[bytes] = b""  # raw bytes; a list is sent piece by piece
    close: bool = False  # close the connection after sending
    half_close: bool = False  # stop sending (FIN) after sending, but keep reading requests
    hang: bool = False  # never answer (until the server stops)
    gap: float = 0.0  # seconds between pieces: a peer that trickles its answer


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def echo(request: Seen) -> Reply:
    return Reply(ok(request.path.encode(), "Content-Type: text/plain"))


class ScriptedServer:
    """A threaded raw-socket HTTP server on 127.0.0.1 that records every request and answers
    with the scripted replies in order (then echoes the request path)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.replies: deque[Reply] = deque()
        self.default: Callable[[Seen], Reply] = echo
        self._lock = threading.Lock()
        self._requests: list[Seen] = []
        self._socks: list[socket.socket] = []
        self._finished: set[int] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    # -- what tests use -------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._requests)

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._socks)

    def wait_finished(self, conn: int) -> None:
        """Until the server has closed its end of connection ``conn``."""

        def finished() -> bool:
            with self._lock:
                return conn in self._finished

        poll_until(finished, timeout=WAIT, interval=0.002)

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(WAIT)
        self.listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(WAIT)
        for sock in socks:
            sock.close()
        assert not self._acceptor.is_alive()
        assert not any(thread.is_alive() for thread in threads)

    # -- the server itself ----------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.listener], [], [], 0.02)
            if not readable:
                continue
            sock, _ = self.listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                conn = len(self._socks)
                self._socks.append(sock)
                thread = threading.Thread(target=self._serve, args=(conn, sock), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: int, sock: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                request = self._read_request(conn, sock, buf)
                if request is None:
                    return
                with self._lock:
                    self._requests.append(request)
                    reply = self.replies.popleft() if self.replies else None
                reply = reply or self.default(request)
                if reply.hang:
                    self._stop.wait()
                    return
                pieces = reply.data if isinstance(reply.data, list) else [reply.data]
                for index, piece in enumerate(pieces):
                    if index and reply.gap:
                        time.sleep(reply.gap)  # the scripted trickle itself, not a wait
                    sock.sendall(piece)
                if reply.close:
                    return
                if reply.half_close:
                    sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        finally:
            sock.close()
            with self._lock:
                self._finished.add(conn)

    @staticmethod
    def _read_request(conn: int, sock: socket.socket, buf: bytearray) -> Seen | None:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        end = buf.index(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        method, path, version = lines[0].split(" ")
        assert version == "HTTP/1.1"
        headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        length = int(next((v for n, v in headers if n.lower() == "content-length"), "0"))
        while len(buf) < length:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return Seen(conn, method, path, headers, body)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pool(server: ScriptedServer) -> Iterator[Pool]:
    p = Pool(server.url, timeout=TIMEOUT, ssl_context=None)
    yield p
    p.close()


def wait_readable(pool: Pool) -> None:
    """Until the pooled idle connection has seen the server's FIN (without consuming it)."""
    assert len(pool._idle) == 1
    readable, _, _ = select.select([pool._idle[0].sock], [], [], WAIT)
    assert readable, "the server's close never reached the client"


# -- requests as the server sees them -------------------------------------------------------


def test_get_sends_exact_head(server: ScriptedServer, pool: Pool) -> None:
    server.script(Reply(ok(b"hello", "X-Value-Type: binary", 'ETag: "v3"')))
    response = pool.request("GET", "/keys/a%20b?x=1", {"Accept": "application/octet-stream"})

    assert response.status == 200
    assert response.data == b"hello"
    assert response.headers.get("etag") == '"v3"'
    assert response.headers.get("X-Value-Type") == "binary"
    [seen] = server.requests
    assert (seen.method, seen.path, seen.body) == ("GET", "/keys/a%20b?x=1", b"")
    assert seen.headers == [
        ("Host", f"127.0.0.1:{server.port}"),
        ("Accept", "application/octet-stream"),
        ("Content-Length", "0"),
    ]


def test_post_sends_headers_and_body(server: ScriptedServer, pool: Pool) -> None:
    body = b'{"value": "x\\r\\n"}\r\n\r\nGET /not-a-request HTTP/1.1\r\n\r\n\x00\xff'
    server.script(Reply(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"))
    response = pool.request(
        "POST", "/keys/k", {"Content-Type": "application/json", "X-Hops": "1"}, body
    )

    assert (response.status, response.data) == (201, b"{}")
    [seen] = server.requests
    assert (seen.method, seen.path, seen.body) == ("POST", "/keys/k", body)
    assert seen.headers == [
        ("Host", f"127.0.0.1:{server.port}"),
        ("Content-Type", "application/json"),
        ("X-Hops", "1"),
        ("Content-Length", str(len(body))),
    ]


# -- keep-alive and connection reuse --------------------------------------------------------


def test_two_calls_reuse_one_connection(server: ScriptedServer, pool: Pool) -> None:
    assert pool.request("GET", "/one", {}).data == b"/one"
    assert pool.request("PUT", "/two", {}, b"x").data == b"/two"

    assert [(r.conn, r.path) for r in server.requests] == [(0, "/one"), (0, "/two")]
    assert server.accepted == 1


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(Reply(ok(b"bye", "Connection: close"), close=True), id="close-and-closes"),
        pytest.param(Reply(ok(b"bye", "Connection: Close")), id="close-but-stays-open"),
        pytest.param(Reply(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye"), id="http-1.0"),
    ],
)
def test_connection_close_makes_next_call_reconnect(
    server: ScriptedServer, pool: Pool, first: Reply
) -> None:
    server.script(first)
    assert pool.request("GET", "/first", {}).data == b"bye"
    assert pool._idle == []
    assert pool.request("GET", "/second", {}).data == b"/second"

    assert [(r.conn, r.path) for r in server.requests] == [(0, "/first"), (1, "/second")]


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(Reply(ok(b"one"), close=True), id="closed"),
        # The server stops sending but would still read (and record) a request sent on the
        # stale connection: so a call that went out twice would show here.
        pytest.param(Reply(ok(b"one"), half_close=True), id="half-closed"),
    ],
)
def test_dropped_idle_connection_is_replaced_without_resending(
    server: ScriptedServer, pool: Pool, first: Reply
) -> None:
    server.script(first)
    assert pool.request("GET", "/first", {}).data == b"one"
    wait_readable(pool)  # the connection sits in the pool, closed by the server

    response = pool.request("POST", "/second", {}, b"once")

    assert response.data == b"/second"
    assert [(r.conn, r.path, r.body) for r in server.requests] == [
        (0, "/first", b""),
        (1, "/second", b"once"),
    ]
    assert len(pool._idle) == 1
    assert pool.request("GET", "/third", {}).data == b"/third"
    assert server.requests[-1].conn == 1


# -- framing -------------------------------------------------------------------------------


def test_chunked_answer_with_trailer(server: ScriptedServer, pool: Pool) -> None:
    server.script(
        Reply(
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nX-A: 1\r\n\r\n",
                b"5\r\nhello\r\n",
                b"1;ext=yes\r\n \r\n",
                b"A\r\n0123\r\n6789\r\n",  # a chunk whose data contains CRLF
                b"1a\r\n" + b"z" * 26 + b"\r\n",
                b"0\r\nX-Checksum: abc\r\nX-More: 2\r\n\r\n",
            ]
        )
    )
    response = pool.request("GET", "/chunked", {})

    assert response.status == 200
    assert response.data == b"hello 0123\r\n6789" + b"z" * 26
    assert response.headers.get("x-a") == "1"
    # The trailer was consumed entirely: the connection serves the next call correctly.
    assert pool.request("GET", "/next", {}).data == b"/next"
    assert [r.conn for r in server.requests] == [0, 0]


@pytest.mark.parametrize(
    ("method", "head"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX-TTL: 9\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("DELETE", b"HTTP/1.1 204 No Content\r\nX-TTL: 9\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nX-TTL: 9\r\n\r\n"),
    ],
    ids=["head", "head-chunked", "204", "304"],
)
def test_bodyless_answers_leave_connection_reusable(
    server: ScriptedServer, pool: Pool, method: str, head: bytes
) -> None:
    server.script(Reply(head))
    response = pool.request(method, "/k", {})

    assert response.data == b""
    assert response.status == int(head.split()[1])
    assert len(pool._idle) == 1
    assert pool.request("GET", "/after", {}).data == b"/after"
    assert [(r.method, r.conn) for r in server.requests] == [(method, 0), ("GET", 0)]


def test_body_framed_by_connection_close(server: ScriptedServer, pool: Pool) -> None:
    server.script(
        Reply(
            [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"part1,", b"part2"],
            close=True,
        )
    )
    response = pool.request("GET", "/eof", {})

    assert (response.status, response.data) == (200, b"part1,part2")
    assert pool._idle == []
    assert pool.request("GET", "/next", {}).data == b"/next"
    assert [r.conn for r in server.requests] == [0, 1]


# -- failures ------------------------------------------------------------------------------


def test_server_that_never_answers_times_out(server: ScriptedServer, pool: Pool) -> None:
    server.script(Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(TransportError) as excinfo:
        pool.request("GET", "/slow", {})
    elapsed = time.monotonic() - started

    assert TIMEOUT * 0.8 <= elapsed < 1.5
    assert isinstance(excinfo.value, OSError)
    assert isinstance(excinfo.value.__cause__, TimeoutError)
    assert [r.path for r in server.requests] == ["/slow"]
    assert pool._idle == []


def test_a_trickling_peer_is_bounded_by_the_timeout_for_the_whole_answer(
    server: ScriptedServer, pool: Pool
) -> None:
    # Every piece arrives well within the timeout, but the answer as a whole does not.
    head = [b"HTTP/1.1 200 OK\r\n"] + [b"X-Slow-%d: 1\r\n" % i for i in range(20)]
    server.script(Reply(data=[*head, b"Content-Length: 0\r\n\r\n"], gap=TIMEOUT / 3))
    started = time.monotonic()
    with pytest.raises(TransportError):
        pool.request("GET", "/trickle", {})
    assert time.monotonic() - started < TIMEOUT * 2


def test_connection_refused() -> None:
    # Bound but not listening: connecting is refused, and nothing else can take the port.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}", timeout=TIMEOUT, ssl_context=None)
        started = time.monotonic()
        with pytest.raises(TransportError) as excinfo:
            pool.request("GET", "/", {})
    assert time.monotonic() - started < 1.5
    assert isinstance(excinfo.value.__cause__, ConnectionRefusedError)
    assert pool._idle == []


@pytest.mark.parametrize(
    "broken",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        b"",
    ],
    ids=["content-length", "mid-chunk", "between-chunks", "mid-headers", "no-answer"],
)
def test_close_mid_answer_fails_and_is_not_reused(
    server: ScriptedServer, pool: Pool, broken: bytes
) -> None:
    server.script(Reply(broken, close=True))
    started = time.monotonic()
    with pytest.raises(TransportError):
        pool.request("POST", "/broken", {}, b"payload")
    assert time.monotonic() - started < 1.0  # noticed by the close, not by the timeout
    assert pool._idle == []

    assert pool.request("GET", "/next", {}).data == b"/next"
    assert [(r.conn, r.path) for r in server.requests] == [(0, "/broken"), (1, "/next")]


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 OK fine\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
    ],
    ids=["not-http", "bad-status", "bad-length"],
)
def test_protocol_garbage_is_a_transport_error(
    server: ScriptedServer, pool: Pool, garbage: bytes
) -> None:
    server.script(Reply(garbage))
    with pytest.raises(TransportError):
        pool.request("GET", "/junk", {})
    assert pool._idle == []


# -- headers -------------------------------------------------------------------------------


def test_headers_get_is_case_insensitive_with_empty_default() -> None:
    headers = Headers()
    headers["X-Value-Type"] = "binary"

    assert headers.get("x-value-type") == "binary"
    assert headers.get("X-VALUE-TYPE") == "binary"
    assert headers.get("X-Value-Type") == "binary"
    assert "x-VALUE-type" in headers
    assert headers.get("X-TTL") == ""
    assert headers.get("X-TTL", "none") == "none"
    assert "X-TTL" not in headers


def test_response_headers_are_case_insensitive(server: ScriptedServer, pool: Pool) -> None:
    server.script(Reply(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\nx-ttl:  12.5 \r\n\r\nok"))
    response = pool.request("GET", "/h", {})

    assert response.data == b"ok"
    assert response.headers.get("X-TTL") == "12.5"
    assert response.headers.get("Content-Length") == "2"
    assert response.headers.get("ETag") == ""


# -- pools and threads ---------------------------------------------------------------------


def test_concurrent_threads_get_their_own_answers(server: ScriptedServer) -> None:
    transport = Transport(timeout=WAIT)
    threads, calls = 8, 25
    start = threading.Barrier(threads)
    wrong: list[tuple[str, int, bytes]] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(calls):
                path = f"/t{n}/c{i}"
                response = transport.send(server.url, "GET", path, {"X-Thread": str(n)}).response()
                if response.status != 200 or response.data != path.encode():
                    wrong.append((path, response.status, response.data))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(5)
        assert not any(w.is_alive() for w in workers)
        assert errors == []
        assert wrong == []
        seen = server.requests
        assert sorted(r.path for r in seen) == sorted(
            f"/t{n}/c{i}" for n in range(threads) for i in range(calls)
        )
        assert 1 <= server.accepted <= threads  # connections were reused, never shared
        assert len(transport._pools) == 1
        assert transport.pool(server.url) is transport.pool(server.url)
    finally:
        transport.close()


def test_transport_close_closes_idle_connections(server: ScriptedServer) -> None:
    transport = Transport(timeout=TIMEOUT)
    assert transport.send(server.url, "GET", "/a", {}).response().data == b"/a"
    idle = transport.pool(server.url)._idle
    assert len(idle) == 1

    transport.close()

    server.wait_finished(0)  # the server saw the client hang up
    assert transport._pools == {}
    assert idle == [] or idle[0].sock.fileno() == -1


# ----------------------------------------------------------------- Call: send now, read later


def _call_on_socketpair(deadline_in: float):
    from cacheapi.peer.transport import Call, _Connection

    ours, theirs = socket.socketpair()
    pool = Pool("http://127.0.0.1:9", timeout=TIMEOUT, ssl_context=None)
    call = Call(pool, _Connection(ours), "POST", time.monotonic() + deadline_in)
    return pool, call, theirs


def test_an_answer_that_arrived_before_its_late_read_is_still_read():
    """A batch reads its parts in turn: the answer of a fast owner, read after a slow owner
    used up the timeout, is not late."""
    pool, call, theirs = _call_on_socketpair(-1.0)  # the deadline passed a second ago
    with theirs:
        theirs.sendall(ok(b"fast", "Content-Type: text/plain"))
        response = call.response()
    assert (response.status, response.data) == (200, b"fast")
    assert len(pool._idle) == 1  # the connection went back to the pool


def test_a_late_read_of_an_answer_not_there_fails_at_once():
    pool, call, theirs = _call_on_socketpair(-1.0)
    with theirs:
        started = time.monotonic()
        with pytest.raises(TransportError):
            call.response()
        assert time.monotonic() - started < WAIT
    assert pool._idle == []  # a connection in an unknown state is closed, not pooled


def test_a_call_is_read_once_and_a_dropped_call_not_at_all():
    pool, call, theirs = _call_on_socketpair(TIMEOUT)
    with theirs:
        theirs.sendall(ok(b"x"))
        call.response()
        with pytest.raises(RuntimeError):
            call.response()
    pool, call, theirs = _call_on_socketpair(TIMEOUT)
    with theirs:
        call.close()
        call.close()
        with pytest.raises(RuntimeError):
            call.response()
        assert theirs.recv(1) == b""  # dropped: the connection was closed
    assert pool._idle == []


def test_idle_check_by_peek():
    from cacheapi.peer.transport import _Connection

    ours, theirs = socket.socketpair()
    conn = _Connection(ours)
    assert not conn.dropped()  # open and quiet
    theirs.sendall(b"junk")
    assert conn.dropped()  # bytes nobody asked for
    theirs.close()
    ours2, theirs2 = socket.socketpair()
    theirs2.close()
    assert _Connection(ours2).dropped()  # closed by the peer
    conn.close()
    _Connection(ours2).close()


def test_a_stream_is_never_opened_in_the_send_phase():
    """Opening a stream waits for the peer's 101; a batch's sends must not. With no idle
    stream the call is refused at once (the caller sends it as HTTP) and a stream is opened
    in the background, even toward a peer that never answers."""
    from cacheapi.peer.transport import StreamsRefused

    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts nothing, ever
        port = listener.getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}", timeout=TIMEOUT, ssl_context=None)
        started = time.monotonic()
        with pytest.raises(StreamsRefused):
            pool.send_frame(("/internal/v1/stream", {}, "cache-internal/1"), "get", b"{}")
        assert time.monotonic() - started < TIMEOUT / 2
        poll_until(lambda: not pool._opening_stream, timeout=WAIT)  # gave up after TIMEOUT
        assert pool._idle_streams == []


def test_connections_idle_too_long_are_retired_not_reused():
    from cacheapi.peer import transport
    from cacheapi.peer.transport import _Connection

    pool = Pool("http://127.0.0.1:9", timeout=TIMEOUT, ssl_context=None)
    fresh, stale = socket.socketpair(), socket.socketpair()
    young, old = _Connection(fresh[0]), _Connection(stale[0])
    pool._checkin(old)
    pool._checkin(young)
    old.idle_since -= transport.HTTP_MAX_IDLE_SECONDS + 1
    assert pool._idle_connection(pool._idle, transport.HTTP_MAX_IDLE_SECONDS) is young
    assert pool._idle_connection(pool._idle, transport.HTTP_MAX_IDLE_SECONDS) is None
    assert stale[1].recv(1) == b""  # the stale one was closed
    young.close()
    for s in (*fresh, stale[1]):
        s.close()


def test_owners_keep_idle_streams_longer_than_coordinators_reuse_them():
    from cacheapi.peer import server as internal
    from cacheapi.peer import transport

    assert transport.STREAM_MAX_IDLE_SECONDS + 10 <= internal.STREAM_IDLE_SECONDS
