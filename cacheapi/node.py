"""This process's node: one typed object holding its store, ring view, peers and router.

A node is one gunicorn worker process, so there is exactly one ``Node`` per process. It is
built lazily on first use (never at import time), so management commands and tests that never
touch the store open nothing; ``start()`` (called by the WSGI entry point only) starts the
background tasks, so the sweeper runs in served processes, not in ``manage.py migrate``.
Nothing here imports gunicorn or gevent: ``cache_project.serving`` passes in what the server
provides.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cacheapi import stats as stats_module
from cacheapi.hints import Hints
from cacheapi.metrics import Recorder, recorder
from cacheapi.peer.client import PeerClient
from cacheapi.peer.server import InternalApp
from cacheapi.router import Router
from cacheapi.settings import cluster_settings
from cacheapi.store import Store
from cacheapi.store.counters import CounterStore
from nodes.membership import Membership
from nodes.migration import Migrator, peers_on_version, registry_move
from nodes.ring import Ring
from ratelimit import storages as ratelimit_storages

if TYPE_CHECKING:
    from cacheapi.api.streams import ClientStreams

log = logging.getLogger(__name__)
SWEEP_ROUNDS = 16  # most store sweeps in one tick of the sweeper
HINT_REPLAY_SECONDS = 0.5  # between rounds of hinted hand-off


class Node:
    """The store, ring view (membership), peer client and router of this process."""

    def __init__(
        self,
        *,
        name: str,
        store: Store,
        membership: Membership,
        peers: PeerClient,
        recorder: Recorder,
        max_batch_keys: int = 1000,
        counters: CounterStore | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.membership = membership
        self.peers = peers
        self.recorder = recorder
        self.router = Router(
            store=store,
            node=name,
            ring=lambda: membership.ring,
            peers=peers,
            on_forward=recorder.forward,
            failover_timeout=cluster_settings.FAILOVER_TIMEOUT,
            hints=Hints(batch_keys=max_batch_keys),
            counters=counters,
        )
        self.migrator = Migrator(
            name=name,
            store=store,
            ring=lambda: membership.ring,
            peers=peers,
            refresh=membership.refresh,
            hints=self.router.hints,
            batch_keys=max_batch_keys,
        )
        self._stop = threading.Event()

    @classmethod
    def from_settings(cls) -> Node:
        s = cluster_settings
        return cls(
            name=s.NODE_NAME,
            store=Store(
                max_bytes=s.MAX_BYTES,
                max_items=s.MAX_ITEMS,
                node=s.NODE_NAME,
                tombstone_ttl=s.TOMBSTONE_TTL,
            ),
            membership=Membership(
                node=s.NODE_NAME,
                url=s.NODE_URL,
                vnodes=s.VNODES,
                replicas=s.REPLICAS,
                interval=s.RING_RELOAD_INTERVAL,
            ),
            peers=PeerClient(
                secret=s.SECRET,
                timeout=s.FORWARD_TIMEOUT,
                ca_certs=s.CA_BUNDLE or None,
                retry_after=s.PEER_RETRY_SECONDS,
            ),
            recorder=recorder,
            max_batch_keys=s.MAX_BATCH_KEYS,
            counters=CounterStore(max_keys=s.COUNTER_MAX_KEYS),
        )

    @property
    def ring(self) -> Ring:
        return self.membership.ring

    @property
    def draining(self) -> bool:
        return self.membership.status == "draining"

    def stats(self) -> dict[str, Any]:
        """This node's counters, latencies and ring version (``GET /api/v1/stats``)."""
        stats = stats_module.node_stats(self.name, self.ring.version, self.store, self.recorder)
        stats["migration"] = self.migrator.stats.as_dict()
        hints = self.router.hints
        stats["hints"] = {
            "pending": sum(hints.pending().values()),
            "added": hints.added,
            "replayed": hints.replayed,
            "dropped": hints.dropped,
        }
        return stats

    def cluster_stats(self) -> dict[str, Any]:
        """Every node's stats and their sums; nodes that did not answer are listed."""
        done = self.router.on_every_node("stats", self.stats, lambda p, n: p.start_stats(n))
        return stats_module.cluster_stats(done.answers, done.failed)

    def start(self) -> None:
        """Start the ring watcher, the migrator and the expiry sweeper (served processes
        only). A process that starts while the registry still lists it ``up`` (its worker
        was restarted, with an empty store) rejoins as ``joining`` to pull its keys."""
        self.membership.listeners.append(self.migrator.ring_changed)
        ratelimit_storages.serve_in_node(lambda: current().router)  # the cluster storage's
        try:
            if registry_move(self.name, ["up"], "joining"):
                log.warning("started with an empty store while listed up: rejoining")
        except Exception:
            log.exception("could not check this node's status in the registry")
        self.membership.start()
        self.migrator.start()
        threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True).start()
        threading.Thread(target=self._replay_forever, name="hints", daemon=True).start()

    def _replay_forever(self) -> None:
        while not self._stop.wait(HINT_REPLAY_SECONDS):
            try:
                if self.router.hints.pending():
                    self.router.hints.replay(self.ring, self.peers, self.name)
            except Exception:
                log.exception("replaying hints failed")

    def leave(self) -> bool:
        """Hand every key off before this process exits (SIGTERM), within DRAIN_TIMEOUT."""
        timeout = cluster_settings.DRAIN_TIMEOUT
        if timeout <= 0:
            return False
        return self.migrator.leave(timeout, peers_on_version(self.peers, self.name))

    def stop(self) -> None:
        self._stop.set()
        self.migrator.stop()
        self.membership.stop()
        self.peers.close()

    def _sweep_forever(self) -> None:
        while not self._stop.wait(cluster_settings.SWEEP_INTERVAL):
            try:
                expired = self.sweep_once(cluster_settings.SWEEP_LIMIT)
                if expired:
                    log.debug("swept %d expired keys", expired)
            except Exception:  # the sweeper must outlive any one bad sweep
                log.exception("expiry sweep failed")

    def sweep_once(self, limit: int) -> int:
        """One tick of active expiry, as Redis does it: sweep ``limit`` ring slots, and again
        (at most ``SWEEP_ROUNDS`` times, yielding in between) while more than a quarter of a
        round had expired, so a burst of expiries is reclaimed within a few ticks while a
        quiet store costs one short sweep."""
        total = 0
        for _ in range(SWEEP_ROUNDS):
            expired = self.store.sweep(limit)
            total += expired
            if 4 * expired <= limit or self._stop.wait(0):
                break
        return total


_lock = threading.Lock()
_current: Node | None = None


def current() -> Node:
    """This process's node, built on first use."""
    node = _current
    if node is None:
        with _lock:
            node = _current
            if node is None:
                node = _set_current(Node.from_settings())
    return node


def _set_current(node: Node) -> Node:
    global _current
    _current = node
    return node


def reset() -> None:
    """Drop this process's node (tests, and after a settings change)."""
    global _current
    with _lock:
        node, _current = _current, None
    if node is not None:
        node.stop()


def internal_app(
    *, already_handled: object | None = None, pause: Callable[[float], None] | None = None
) -> InternalApp:
    """The WSGI app that serves peers' internal calls on this process's node.

    ``already_handled`` is the server's marker for "the app kept the connection" (gunicorn's
    async workers honour it): with it, the app also serves streams, one frame per call, and
    ``pause`` (``gevent.sleep``) lets other connections run after each framed answer; without
    it, peers send one HTTP request per call."""
    return InternalApp(
        lambda: current().store,
        lambda: cluster_settings.SECRET,
        max_body=internal_max_body,
        ring_version=lambda: current().ring.version,
        ring=lambda: current().ring,
        name=lambda: current().name,
        clear=lambda: current().router.clear_here(),
        counters=lambda: current().router.counters,
        stats=lambda: current().stats(),
        observe=recorder.observe,
        already_handled=already_handled,
        pause=pause or (lambda seconds: None),
    )


def internal_max_body() -> int:
    """The largest body of an internal call: JSON text escaped inside strings can double a
    client's batch (cacheapi.peer.server)."""
    return 2 * cluster_settings.MAX_REQUEST_BYTES + (1 << 20)


def stream_app(
    *, already_handled: object | None = None, pause: Callable[[float], None] | None = None
) -> ClientStreams:
    """The WSGI app that serves clients' streams (``/api/v1/stream``) on this node's router;
    as ``internal_app``, streams need the server's ``already_handled`` marker."""
    from cacheapi.api.streams import ClientStreams

    return ClientStreams(
        lambda: current().router,
        max_body=lambda: cluster_settings.MAX_REQUEST_BYTES,
        ring_version=lambda: current().ring.version,
        observe=recorder.observe,
        already_handled=already_handled,
        pause=pause or (lambda seconds: None),
        idle_seconds=lambda: cluster_settings.STREAM_IDLE_SECONDS,
    )
