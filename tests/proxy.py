"""A small TCP proxy the fault tests put between processes, to break a link on purpose.

Modes, switchable while connections are open:

- ``pass``: bytes flow both ways;
- ``stall``: the link hangs: new connections are accepted and nothing is forwarded, and open
  ones stop forwarding (as a frozen switch or a full buffer would);
- ``drop``: connections are reset, open ones included, and new ones are closed at once.

``only`` narrows a fault to the connections whose first bytes start with one of the given
prefixes (e.g. ``b"POST /internal/"``): the others pass, so a heartbeat's ``GET /health`` can
see a node that its peers cannot reach (a partition).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from tests.processes import free_port


class Proxy:
    def __init__(self, target_port: int, only: tuple[bytes, ...] = ()) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.only = only
        self.mode = "pass"
        self._changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "stall", "drop")
        with self._changed:
            self.mode = mode
            self._changed.notify_all()
        if mode == "drop":
            with self._lock:
                for sock in list(self._sockets):
                    _reset(sock)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)
        with self._changed:
            self._changed.notify_all()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _applies(self, first: bytes) -> bool:
        return not self.only or first.startswith(self.only)

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        try:
            first = client.recv(65536)
        except OSError:
            client.close()
            return
        if not first:
            client.close()
            return
        faulty = self._applies(first)
        if faulty and self.mode == "drop":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, client, faulty), daemon=True).start()
        self._pump(client, upstream, faulty, first)

    def _pump(
        self, src: socket.socket, dst: socket.socket, faulty: bool, first: bytes = b""
    ) -> None:
        data = first
        try:
            while True:
                if data:
                    self._wait_while_stalled(faulty)
                    if faulty and self.mode == "drop":
                        raise OSError("dropped")
                    dst.sendall(data)
                data = src.recv(65536)
                if not data:
                    break
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._sockets.discard(sock)

    def _wait_while_stalled(self, faulty: bool) -> None:
        if not faulty:
            return
        with self._changed:
            while self.mode == "stall" and not self._closed:
                self._changed.wait()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a broken link does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def proxy_to(port: int, only: tuple[bytes, ...] = ()) -> Iterator[Proxy]:
    proxy = Proxy(port, only)
    try:
        yield proxy
    finally:
        proxy.close()
