"""This node's view of the ring, read from the registry and never per request.

Loaded when first needed, then reloaded by a background thread when the registry's ring
version changes (one cheap query a second). If the registry is unreachable the node keeps
routing by its last good ring, logs it and counts it (``reload_errors``). A registry with no
nodes at all means a standalone node: the ring is this node alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import close_old_connections, connection, connections

from nodes.ring import Ring, RingNode

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self,
        *,
        node: str,
        url: str = "",
        vnodes: int = 160,
        replicas: int = 1,
        interval: float = 1.0,
        loader: Callable[[], Ring] | None = None,
        version_reader: Callable[[], int] | None = None,
    ) -> None:
        self.node = node
        self.url = url
        self.vnodes = vnodes
        self.replicas = replicas
        self.interval = interval
        self._loader = loader or self._load_from_registry
        self._version_reader = version_reader or self._read_version
        self._ring: Ring | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload_errors = 0
        self.reloads = 0
        # Called with (old ring or None, new ring) after each change, in the thread that saw it.
        self.listeners: list[Callable[[Ring | None, Ring], None]] = []

    # -- the registry ---------------------------------------------------------------------
    def _load_from_registry(self) -> Ring:
        from nodes.models import load_ring

        return load_ring(vnodes=self.vnodes, replicas=self.replicas)

    @staticmethod
    def _read_version() -> int:
        from nodes.models import RingVersion

        return RingVersion.current()

    def standalone(self) -> Ring:
        me = RingNode(name=self.node, url=self.url or "http://127.0.0.1", weight=1, status="up")
        return Ring([me], vnodes=self.vnodes, replicas=self.replicas, version=0)

    # -- the view ---------------------------------------------------------------------------
    @property
    def ring(self) -> Ring:
        ring = self._ring
        if ring is None:
            with self._lock:
                if self._ring is None:
                    self._ring = self._load_or_fallback()
                ring = self._ring
        return ring

    def _load_or_fallback(self) -> Ring:
        try:
            ring = self._loader()
        except Exception:
            log.exception("could not load the ring from the registry; serving as a standalone node")
            self.reload_errors += 1
            return self.standalone()
        return ring if ring.nodes else self.standalone()

    def refresh(self) -> bool:
        """Reload if the registry's version moved; True if the ring changed."""
        try:
            version = self._version_reader()
            current = self._ring
            if current is not None and version == current.version and current.nodes:
                return False
            ring = self._loader()
        except Exception:
            self.reload_errors += 1
            # self._ring, not self.ring: the property would try the registry a second time.
            log.warning(
                "registry unreachable; keeping ring version %s",
                getattr(self._ring, "version", None),
                exc_info=True,
            )
            _close_broken_connection()
            return False
        if not ring.nodes:
            ring = self.standalone()
        old = self._ring
        changed = old is None or ring.version != old.version
        with self._lock:
            self._ring = ring
        if changed:
            for listener in self.listeners:
                try:
                    listener(old, ring)
                except Exception:
                    log.exception("a ring change listener failed")
            self.reloads += 1
            log.info(
                "ring version %s: %s",
                ring.version,
                ", ".join(f"{n.name}={n.status}/{n.weight}" for n in ring.nodes),
            )
        return changed

    @property
    def status(self) -> str:
        me = self.ring.node(self.node)
        return me.status if me is not None else "up"

    # -- the watcher thread -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="ring-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                # One bad round must not end the thread: the node would route by a frozen ring.
                try:
                    self.refresh()
                    close_old_connections()
                except Exception:
                    self.reload_errors += 1
                    log.exception("ring watcher round failed; retrying")
        finally:
            connections.close_all()  # this thread's connections only; none left behind

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watcher and wait for it, so a later start() cannot leave two running."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def _close_broken_connection() -> None:
    try:
        connection.close()
    except Exception:
        log.debug("closing a broken registry connection failed", exc_info=True)
