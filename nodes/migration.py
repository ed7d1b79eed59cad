"""Moving keys when the ring changes: hand-off, re-replication, joining and draining.

Every node runs one ``Migrator`` (started by ``cacheapi.node.Node.start``). It keeps the ring
its store was last settled on, and whenever the ring changes it compares the owners of every
key it holds under both rings (a chunked scan of its store):

- **Push** (re-replication, weight changes, a drained or departed node): a key gained an
  owner that is ``up`` and was not an owner before. The first old owner still alive pushes it
  there (``sync``: value, TTL left and write version, so the newer version always wins), and
  so does every node that is about to drop its own copy. So when a node goes down, the
  surviving replica copies its keys to the next owner; when a node drains, it hands every key
  to the new owners itself.
- **Drop**: a key this node no longer owns is dropped once every new owner is ``up`` and the
  pushes it made were confirmed; dropping is not a delete (no tombstone, not counted).
- **Pull** (joining): a ``joining`` node owns keys it does not have yet. Reads go to the
  other owners first (``cacheapi.router.read_order``) while it pulls from every live node
  the entries it owns (the ``scan`` peer call, a stateless slot cursor), then it moves itself
  ``joining -> up`` in the registry. Nodes keep the copies a joining owner still needs, so a
  join never loses keys, and about 1/N of the keys move to the new node.
- A node that learns it was declared dead (its status went from ``up`` to ``down`` or
  ``joining`` while it was running: frozen, partitioned) empties its store before it pulls,
  so values deleted or overwritten meanwhile do not come back.
- **Draining** (the admin's action): the node pushes everything to the new owners, and once
  its store is empty it moves itself ``draining -> disabled``. On SIGTERM, ``leave`` does the
  same hand-off in the foreground, bounded, and ends ``down`` so that a restart rejoins.

Every call here is a coordinator's call to leaves (``sync``, ``scan``, ``stats``); none waits
on a node that waits on it. A pass that could not finish (a peer did not answer) is retried
from the last settled ring, so a later change cannot skip keys an earlier one had to move.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from cacheapi import errors
from cacheapi.peer.client import PeerClient, Pending
from cacheapi.store import Store, Version
from nodes.ring import Ring, RingNode

log = logging.getLogger(__name__)

ALIVE = frozenset({"up", "joining", "draining"})  # statuses of nodes that still serve
PUSH_BATCH = 500  # entries per sync call
SCAN_CHUNK = 1000  # store entries looked at between yields
PULL_SLOTS = 5000  # store slots one scan call walks on the peer
RETRY_SECONDS = 0.5  # between tries of an unfinished pass or pull

# Moves a node between statuses in the registry if it is in one of ``from``; True if it was.
StatusMove = Callable[[str, Collection[str], str], bool]


def registry_move(name: str, from_statuses: Collection[str], to: str) -> bool:
    from nodes.models import Node

    return bool(Node.objects.filter(name=name, status__in=list(from_statuses)).set_status(to))


def placement(ring: Ring) -> tuple[Any, ...]:
    """What decides where keys live and who serves them: equal placements move nothing."""
    nodes = tuple(sorted((n.name, n.weight, n.status) for n in ring.nodes if n.status in ALIVE))
    return nodes, ring.vnodes, ring.replicas


@dataclass
class MigrationStats:
    passes: int = 0
    pushed: int = 0  # entries sent to new owners
    pulled: int = 0  # entries received by pulling while joining
    dropped: int = 0  # entries let go after a hand-off
    failures: int = 0  # passes or pulls that had to be retried
    cleared: int = 0  # entries emptied after this node was declared dead
    last_pass_seconds: float = 0.0
    settled_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Migrator:
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        ring: Callable[[], Ring],
        peers: PeerClient,
        move: StatusMove = registry_move,
        refresh: Callable[[], Any] = lambda: None,
        pause: Callable[[], None] = lambda: time.sleep(0),
    ) -> None:
        self.name = name
        self.store = store
        self._ring = ring
        self.peers = peers
        self._move = move
        self._refresh = refresh  # reload the ring from the registry now
        self._pause = pause  # between chunks: let requests run
        self.settled: Ring | None = None
        self._last_status: str | None = None
        self.stats = MigrationStats()
        self.leaving = False  # set by leave(): the background loop stops deciding
        self._unfinished = False  # the last pass left keys to push: run it again
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one pass at a time
        self._thread: threading.Thread | None = None

    # -- the background loop --------------------------------------------------------------
    def ring_changed(self, old: Ring | None, new: Ring) -> None:
        """The membership's change hook: run a step soon."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="migrator", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        done = False
        while not self._stop.is_set():
            self._wake.wait(None if done else RETRY_SECONDS)
            self._wake.clear()
            if self._stop.is_set() or self.leaving:
                break
            try:
                done = self.step()
            except Exception:  # the loop must outlive one bad step
                log.exception("migration step failed; retrying")
                done = False

    def step(self) -> bool:
        """Bring this node's store in line with the current ring; True when nothing is left to
        do until the ring changes again."""
        with self._lock:
            ring = self._ring()
            me = ring.node(self.name)
            status = me.status if me is not None else None
            if self._declared_dead(status):
                self.stats.cleared += self.store.clear()
                self.settled = None  # nothing held: no old placement to compare with
                log.warning("this node was marked %s while running: emptied its store", status)
            self._last_status = status
            settled = self.settled
            if settled is None:
                self.settled, settled = ring, ring
            if placement(settled) != placement(ring) or self._unfinished:
                if not self._pass(settled, ring):
                    return False
                self.settled = ring
            self.stats.settled_version = ring.version
            if status == "joining":
                return self._join(ring)
            drained = status == "draining" and not self.leaving and len(self.store) == 0
            if drained and self._move(self.name, ["draining"], "disabled"):
                log.info("drained: every key handed off; this node is now disabled")
            return True

    def _declared_dead(self, status: str | None) -> bool:
        return self._last_status in ("up", "draining") and status in ("down", "joining")

    # -- pushing ----------------------------------------------------------------------------
    def _pass(self, old: Ring, new: Ring) -> bool:
        """Push what moved from ``old`` to ``new`` and drop what is no longer ours; False if
        some push failed (those keys are kept, and the pass is tried again)."""
        started = time.perf_counter()
        me = self.name
        alive = {n.name for n in new.nodes if n.status in ALIVE}
        up = {n.name for n in new.nodes if n.status == "up"}
        complete = True
        for chunk in self.store.scan(SCAN_CHUNK):
            pushes: dict[str, list[tuple[str, bytes, bool, float | None, Version]]] = {}
            leaving: dict[str, tuple[Version, list[str]]] = {}  # key -> version, its targets
            for key, entry in chunk:
                new_owners = [n.name for n in new.owners(key)]
                old_owners = [n.name for n in old.owners(key)]
                keep = me in new_owners
                if keep and new_owners == old_owners:
                    continue
                targets = [n for n in new_owners if n not in old_owners and n in up and n != me]
                if targets:
                    pusher = next((n for n in old_owners if n in alive), None)
                    if pusher == me or not keep:
                        ttl = self.store.remaining(entry)
                        if ttl is not None and ttl <= 0:
                            continue
                        item = (key, entry.value, entry.binary, ttl, entry.version)
                        for target in targets:
                            pushes.setdefault(target, []).append(item)
                    else:
                        targets = []
                if not keep and new_owners and all(n in up for n in new_owners):
                    leaving[key] = (entry.version, targets)
            failed_targets = self._push(new, pushes)
            if failed_targets:
                complete = False
            drops = [
                (key, version)
                for key, (version, targets) in leaving.items()
                if not failed_targets.intersection(targets)
            ]
            self.stats.dropped += self.store.discard(drops)
            self._pause()
        self.stats.passes += 1
        self.stats.last_pass_seconds = round(time.perf_counter() - started, 3)
        if not complete:
            self.stats.failures += 1
        self._unfinished = not complete
        log.info(
            "migration pass v%s -> v%s %s in %.3fs",
            old.version,
            new.version,
            "done" if complete else "incomplete",
            self.stats.last_pass_seconds,
        )
        return complete

    def _push(
        self,
        ring: Ring,
        pushes: dict[str, list[tuple[str, bytes, bool, float | None, Version]]],
    ) -> set[str]:
        """Send every push (all sent before any answer is read); the targets that failed."""
        failed: set[str] = set()
        pending: list[tuple[str, int, Pending[int]]] = []
        try:
            for name, items in pushes.items():
                node = ring.node(name)
                assert node is not None
                for start in range(0, len(items), PUSH_BATCH):
                    part = items[start : start + PUSH_BATCH]
                    try:
                        pending.append((name, len(part), self.peers.start_sync(node, part)))
                    except errors.CacheError as exc:
                        log.warning("pushing %d keys to %s failed: %s", len(part), name, exc)
                        failed.add(name)
            while pending:
                name, count, call = pending.pop(0)
                try:
                    call.result()
                    self.stats.pushed += count
                except errors.CacheError as exc:
                    log.warning("pushing %d keys to %s failed: %s", count, name, exc)
                    failed.add(name)
        finally:
            for _, _, call in pending:
                call.close()
        return failed

    # -- joining ------------------------------------------------------------------------------
    def _join(self, ring: Ring) -> bool:
        """Pull every entry this node owns from every live node, then go ``up``."""
        sources = [n for n in ring.nodes if n.name != self.name and n.status in ("up", "draining")]
        for source in sources:
            try:
                self.stats.pulled += self._pull(source, ring.version)
            except errors.CacheError as exc:
                log.info("pulling from %s: %s; trying again", source.name, exc)
                self.stats.failures += 1
                return False
        if self._move(self.name, ["joining"], "up"):
            log.info("joined: pulled from %d nodes; this node is now up", len(sources))
            self._refresh()
        return True

    def _pull(self, source: RingNode, version: int) -> int:
        cursor, layout, pulled = 0, None, 0
        for _ in range(3):  # the source's store was re-laid out (compaction): walk again
            while True:
                items, after, now_layout = self.peers.start_scan(
                    source, self.name, version, cursor, PULL_SLOTS
                ).result()
                if layout is None:
                    layout = now_layout
                if now_layout != layout:
                    break
                if items:
                    pulled += len(self.store.set_many(items))
                if after is None:
                    return pulled
                cursor = after
                self._pause()
            cursor, layout = 0, None
        return pulled

    # -- leaving on SIGTERM ------------------------------------------------------------------
    def leave(self, timeout: float, peers_seen: Callable[[Ring], bool]) -> bool:
        """Hand every key off before the process exits: mark this node ``draining``, wait (a
        little) until the live nodes see it, push everything, then mark it ``down`` so that a
        restart rejoins. Bounded by ``timeout``; True if every key was handed off."""
        self.leaving = True
        deadline = time.monotonic() + timeout
        try:
            self._move(self.name, ["up", "joining"], "draining")
        except Exception:
            log.exception("could not mark this node draining; leaving without a hand-off")
            return False
        done = False
        try:
            while time.monotonic() < deadline:
                self._refresh()
                ring = self._ring()
                me = ring.node(self.name)
                if me is None or me.status != "draining":
                    break  # an operator moved it meanwhile (disabled, removed)
                if not peers_seen(ring) and time.monotonic() < deadline - timeout / 2:
                    time.sleep(0.05)
                    continue
                with self._lock:
                    settled = self.settled or ring
                    if self._pass(settled, ring):
                        self.settled = ring
                        done = len(self.store) == 0 or not len(ring)
                        break
                time.sleep(RETRY_SECONDS)
        finally:
            try:
                self._move(self.name, ["draining"], "down")
            except Exception:
                log.exception("could not mark this node down after leaving")
        log.info("left the ring: %s", "every key handed off" if done else "hand-off incomplete")
        return done


def peers_on_version(peers: PeerClient, name: str) -> Callable[[Ring], bool]:
    """A check that every other live node reports at least ``ring.version`` (the ``stats``
    internal call): after that, no coordinator writes to a node that is leaving."""

    def seen(ring: Ring) -> bool:
        calls: list[Pending[dict[str, Any]]] = []
        others: Iterable[RingNode] = (n for n in ring.nodes if n.name != name and n.status in ALIVE)
        try:
            for node in others:
                calls.append(peers.start_stats(node))
            ok = True
            while calls:
                call = calls.pop(0)
                # A node that does not answer will not write to this one either.
                with contextlib.suppress(errors.CacheError, TypeError, ValueError):
                    ok = ok and int(call.result().get("ring_version", 0)) >= ring.version
            return ok
        except errors.CacheError:
            return False
        finally:
            for call in calls:
                call.close()

    return seen
