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
  ``joining`` while it was running: frozen, partitioned), or that is let back in from
  ``down`` or ``disabled``, empties its store before it pulls, so values deleted or
  overwritten meanwhile do not come back.
- A pass runs once more a few seconds later over the keys written since it began:
  coordinators still on the old ring (they reload within about a second) may have written
  to old owners only.
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

from django.db import close_old_connections, connection

from cacheapi import errors
from cacheapi.hints import Hints
from cacheapi.peer.client import PeerClient, Pending
from cacheapi.store import Store, Version
from nodes.ring import Ring, RingNode

log = logging.getLogger(__name__)

ALIVE = frozenset({"up", "joining", "draining"})  # statuses of nodes that still serve
PUSH_BATCH = 500  # entries per sync call, at most
PUSH_BYTES = 4 * 2**20  # bytes of values per sync call, at most (one bigger value goes alone)
RECHECK_SECONDS = 2.5  # a pass runs once more this long after it ran (coordinators lag ~1 s)
RECHECK_SKEW_MS = 5_000_000  # and looks at keys written since it began, less this (5 s, in us)
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
        hints: Hints | None = None,
        batch_keys: int = PUSH_BATCH,
    ) -> None:
        self.name = name
        self.store = store
        self._ring = ring
        self.peers = peers
        self._move = move
        self._refresh = refresh  # reload the ring from the registry now
        self._pause = pause  # between chunks: let requests run
        self.hints = hints  # this node's hints, replayed on the way out
        self.batch_keys = batch_keys  # the peers' MAX_BATCH_KEYS bounds a sync call
        # (old ring, new ring, pass start in wall ms, when) of the pass to run once more
        self._recheck: tuple[Ring, Ring, int, float] | None = None
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
                _close_connection()  # a registry that went away leaves a broken one behind
                done = False
            finally:
                close_old_connections()

    def step(self) -> bool:
        """Bring this node's store in line with the current ring; True when nothing is left to
        do until the ring changes again."""
        with self._lock:
            ring = self._ring()
            me = ring.node(self.name)
            status = me.status if me is not None else None
            if self._must_clear(status):
                self.stats.cleared += self.store.clear()
                self.settled = None  # nothing held: no old placement to compare with
                self._recheck = None
                log.warning("this node went %s -> %s: emptied its store", self._last_status, status)
            self._last_status = status
            settled = self.settled
            if settled is None:
                self.settled, settled = ring, ring
            if placement(settled) != placement(ring) or self._unfinished:
                started_ms = int(time.time() * 1_000_000)  # in versions' unit (microseconds)
                if not self._pass(settled, ring):
                    return False
                if placement(settled) != placement(ring):
                    self._recheck = (settled, ring, started_ms, time.monotonic() + RECHECK_SECONDS)
                self.settled = ring
            self.stats.settled_version = ring.version
            if not self._rechecked(ring):
                return False
            if status == "joining":
                return self._join(ring)
            if status == "draining" and not self.leaving:
                return self._drained()
            return True

    def _must_clear(self, status: str | None) -> bool:
        """This running node was marked dead (``up``/``draining`` -> ``down``/``joining``), or
        comes back into the ring from outside it (``down``/``disabled`` -> ``joining``): what
        it holds may be stale (deleted or overwritten meanwhile), so it starts empty and pulls.
        Not at process start: the store is empty then."""
        last = self._last_status
        if last in ("up", "draining"):
            return status in ("down", "joining")
        return last in ("down", "disabled") and status == "joining"

    def _rechecked(self, ring: Ring) -> bool:
        """Some time after a pass, run it once more over what changed since it began: writes
        from coordinators still on the old ring (they reload within about a second) may have
        reached old owners only. False while that is still to come."""
        recheck = self._recheck
        if recheck is None:
            return True
        old, new, since_ms, due = recheck
        if new.version != ring.version:
            self._recheck = None  # a newer change: its own pass covers it
            return True
        if time.monotonic() < due:
            return False
        if self._pass(old, new, since_ms=since_ms - RECHECK_SKEW_MS):
            self._recheck = None
            return True
        return False

    def _drained(self) -> bool:
        """A draining node whose keys all went moves itself to ``disabled``."""
        if len(self.store):
            self.store.sweep()  # expired entries still count in len()
        if len(self.store):
            self._unfinished = True  # left over (kept for a joining owner, written late)
            return False
        if self._move(self.name, ["draining"], "disabled"):
            log.info("drained: every key handed off; this node is now disabled")
        return True

    # -- pushing ----------------------------------------------------------------------------
    def _pass(
        self,
        old: Ring,
        new: Ring,
        *,
        since_ms: int | None = None,
        deadline: float | None = None,
    ) -> bool:
        """Push what moved from ``old`` to ``new`` and drop what is no longer ours; False if
        some push failed or a key changed meanwhile (those keys are kept, and the pass is tried
        again), or ``deadline`` passed. ``since_ms``: of the keys this node keeps, look only at
        those written since then (a recheck)."""
        started = time.perf_counter()
        me = self.name
        alive = {n.name for n in new.nodes if n.status in ALIVE}
        up = {n.name for n in new.nodes if n.status == "up"}
        complete = True
        for chunk in self.store.scan(SCAN_CHUNK):
            if deadline is not None and time.monotonic() > deadline:
                complete = False
                break
            pushes: dict[str, list[tuple[str, bytes, bool, float | None, Version]]] = {}
            leaving: dict[str, tuple[Version, list[str]]] = {}  # key -> version, its targets
            for key, entry in chunk:
                new_owners = [n.name for n in new.owners(key)]
                keep = me in new_owners
                if keep and since_ms is not None and entry.version[0] < since_ms:
                    continue
                old_owners = [n.name for n in old.owners(key)]
                if keep and new_owners == old_owners:
                    continue
                ttl = self.store.remaining(entry)
                if ttl is not None and ttl <= 0:
                    continue
                droppable = not keep and bool(new_owners) and all(n in up for n in new_owners)
                if droppable:
                    # Every new owner gets this copy before it goes: one of them may lack it
                    # (it missed a write), and the newer version wins there anyway.
                    targets = [n for n in new_owners if n != me]
                else:
                    targets = [n for n in new_owners if n not in old_owners and n in up]
                    pusher = next((n for n in old_owners if n in alive), None)
                    if keep and pusher != me:
                        targets = []  # the first live old owner pushes it
                item = (key, entry.value, entry.binary, ttl, entry.version)
                for target in targets:
                    pushes.setdefault(target, []).append(item)
                if droppable:
                    leaving[key] = (entry.version, targets)
            failed_targets = self._push(new, pushes)
            if failed_targets:
                complete = False
            drops = [
                (key, version)
                for key, (version, targets) in leaving.items()
                if not failed_targets.intersection(targets)
            ]
            dropped = self.store.discard(drops)
            self.stats.dropped += dropped
            if dropped < len(drops):
                complete = False  # written meanwhile: push the newer value, then drop it
            self._pause()
        self.stats.passes += 1
        self.stats.last_pass_seconds = round(time.perf_counter() - started, 3)
        if not complete:
            self.stats.failures += 1
        self._unfinished = not complete
        log.info(
            "migration pass v%s -> v%s%s %s in %.3fs",
            old.version,
            new.version,
            "" if since_ms is None else " (recheck)",
            "done" if complete else "incomplete",
            self.stats.last_pass_seconds,
        )
        return complete

    def _push(
        self,
        ring: Ring,
        pushes: dict[str, list[tuple[str, bytes, bool, float | None, Version]]],
    ) -> set[str]:
        """Send every push (all sent before any answer is read), in calls of at most
        ``batch_keys`` entries and about ``PUSH_BYTES``; the targets that failed."""
        failed: set[str] = set()
        pending: list[tuple[str, int, Pending[int]]] = []
        try:
            for name, items in pushes.items():
                node = ring.node(name)
                assert node is not None
                for part in _parts(items, min(PUSH_BATCH, self.batch_keys), PUSH_BYTES):
                    try:
                        pending.append((name, len(part), self.peers.start_sync(node, part)))
                    except errors.CacheError as exc:
                        log.warning("pushing %d keys to %s failed: %s", len(part), name, exc)
                        failed.add(name)
                        break
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
                if _refused(exc):
                    # Nothing listens there: the process is gone with what it held (a restart
                    # comes back empty), so waiting for it would pull nothing.
                    log.info("pulling from %s: nothing listens there; skipped", source.name)
                    continue
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
        raise errors.Unavailable(f"{source.name}'s store kept changing layout during the pull")

    # -- leaving on SIGTERM ------------------------------------------------------------------
    def leave(self, timeout: float, peers_seen: Callable[[Ring], bool]) -> bool:
        """Hand every key off before the process exits: mark this node ``draining``, wait (a
        little) until the live nodes see it, push everything, replay the hints it keeps, then
        mark it ``down`` so that a restart rejoins. Bounded by ``timeout``; True if every key
        was handed off."""
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
                if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    break
                try:
                    settled = self.settled or ring
                    if self._pass(settled, ring, deadline=deadline):
                        self.settled = ring
                        done = len(self.store) == 0 or not len(ring)
                        break
                finally:
                    self._lock.release()
                time.sleep(RETRY_SECONDS)
            if self.hints is not None:
                self.hints.replay(self._ring(), self.peers, self.name)
        finally:
            try:
                self._move(self.name, ["draining"], "down")
            except Exception:
                log.exception("could not mark this node down after leaving")
        log.info("left the ring: %s", "every key handed off" if done else "hand-off incomplete")
        return done


def _parts(items: list[Any], count: int, max_bytes: int) -> list[list[Any]]:
    """``items`` (whose second member is the value) cut into calls of at most ``count`` items
    and, past the first item of a call, ``max_bytes`` of values."""
    parts: list[list[Any]] = []
    part: list[Any] = []
    size = 0
    for item in items:
        if part and (len(part) >= count or size + len(item[1]) > max_bytes):
            parts.append(part)
            part, size = [], 0
        part.append(item)
        size += len(item[1])
    if part:
        parts.append(part)
    return parts


def _refused(exc: BaseException) -> bool:
    """The call failed because the peer refused the connection (no process listening)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _close_connection() -> None:
    try:
        connection.close()
    except Exception:
        log.debug("closing a broken registry connection failed", exc_info=True)


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
                    seen = int(call.result().get("ring_version", 0))
                    ok = ok and seen >= ring.version
            return ok
        except errors.CacheError:
            return False
        finally:
            for call in calls:
                call.close()

    return seen
