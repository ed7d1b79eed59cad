"""This process's node: its store, ring view, router and background tasks.

Built lazily on first use (never at import time), so management commands and tests that never
touch the store open nothing. ``start_background()`` is called by the WSGI entry point only, so
the sweeper runs in served processes, not in ``manage.py migrate``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import gevent
from gevent import monkey
from gunicorn.workers.base_async import ALREADY_HANDLED

from cacheapi.metrics import recorder
from cacheapi.peer.client import PeerClient
from cacheapi.peer.server import InternalApp
from cacheapi.router import Router
from cacheapi.settings import cluster_settings
from cacheapi.store import Store
from nodes.membership import Membership

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _build() -> dict[str, Any]:
    s = cluster_settings
    store = Store(
        max_bytes=s.MAX_BYTES,
        max_items=s.MAX_ITEMS,
        node=s.NODE_NAME,
        tombstone_ttl=s.TOMBSTONE_TTL,
    )
    membership = Membership(
        node=s.NODE_NAME,
        url=s.NODE_URL,
        vnodes=s.VNODES,
        replicas=s.REPLICAS,
        interval=s.RING_RELOAD_INTERVAL,
    )
    peers = PeerClient(
        secret=s.SECRET,
        timeout=s.FORWARD_TIMEOUT,
        clock_now=store.clock,
        ring_version=lambda: membership.ring.version,
        ca_certs=s.CA_BUNDLE or None,
    )
    from cacheapi import metrics

    router = Router(
        store=store,
        node=s.NODE_NAME,
        ring=lambda: membership.ring,
        peers=peers,
        on_forward=metrics.count_forward,
    )
    return {"store": store, "membership": membership, "router": router}


def _get(name: str) -> Any:
    state = _state
    if not state:
        with _lock:
            if not _state:
                _state.update(_build())
    return _state[name]


def store() -> Store:
    return _get("store")


def router() -> Router:
    return _get("router")


def membership() -> Membership:
    return _get("membership")


def internal_app() -> InternalApp:
    """The WSGI app that serves peers' internal calls on this node's store.

    Under gunicorn's gevent worker it also serves streams (connections that peers upgrade and
    keep, one frame per call); other workers answer one HTTP request per call."""
    already_handled: object | None = None
    pause: Any = lambda seconds: None  # noqa: E731
    if monkey.is_module_patched("socket"):
        already_handled, pause = ALREADY_HANDLED, gevent.sleep
    return InternalApp(
        store,
        lambda: cluster_settings.SECRET,
        max_body=internal_max_body,
        ring_version=lambda: membership().ring.version,
        observe=recorder.observe,
        already_handled=already_handled,
        pause=pause,
    )


def internal_max_body() -> int:
    """The largest body of an internal call: JSON text escaped inside strings can double a
    client's batch (cacheapi.peer.server)."""
    return 2 * cluster_settings.MAX_REQUEST_BYTES + (1 << 20)


def is_draining() -> bool:
    return membership().status == "draining"


def reset() -> None:
    """Drop the node's state (tests, and after a settings change)."""
    with _lock:
        membership = _state.get("membership")
        if membership is not None:
            membership.stop()
        _state.clear()


def _sweep_forever(stop: threading.Event) -> None:
    while not stop.wait(cluster_settings.SWEEP_INTERVAL):
        try:
            expired = store().sweep(cluster_settings.SWEEP_LIMIT)
            if expired:
                log.debug("swept %d expired keys", expired)
        except Exception:  # the sweeper must outlive any one bad sweep
            log.exception("expiry sweep failed")


_stop = threading.Event()


def start_background() -> None:
    """Start the expiry sweeper and the ring watcher (served processes only)."""
    store()
    membership().start()
    threading.Thread(target=_sweep_forever, args=(_stop,), name="sweeper", daemon=True).start()
