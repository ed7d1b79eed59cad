"""Hinted hand-off: writes an owner missed, kept by the coordinator and replayed later.

A replicated write is acknowledged once one owner took it (``cacheapi.router``). An owner that
did not answer in time (frozen for a moment, a stalled link, busy) but is not marked down
would otherwise keep its older value, and serve it once it answers again. So the coordinator
keeps a *hint* per (owner, key): the write it missed, with its version. A background task
(``Node``) replays hints to owners that answer again: puts as versioned ``sync`` writes, deletes
and touches with their versions, so a replay never undoes a newer write (last write wins on the
owner). Only the latest hint per key is kept (a touch only changes a pending put's TTL), and
each owner keeps at most ``limit`` hints and ``max_bytes`` of values (the oldest go first,
counted in ``dropped``). Hints for an
owner that left the ring, or for keys it no longer owns, are dropped: a node that comes back
after being marked down empties its store and pulls (``nodes.migration``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cacheapi import errors
from cacheapi.peer.client import PeerClient, Pending
from cacheapi.store import Version
from nodes.ring import Ring

log = logging.getLogger(__name__)

HINT_LIMIT = 100_000  # hints kept per owner
HINT_BYTES = 64 * 2**20  # bytes of values kept per owner
REPLAY_BATCH = 500  # hints per replayed call, at most
REPLAY_BYTES = 4 * 2**20  # bytes of values per replayed call, at most (one bigger value alone)


@dataclass(frozen=True, slots=True)
class Hint:
    kind: str  # "put", "delete" or "touch"
    version: Version
    value: bytes = b""
    binary: bool = False
    deadline: float | None = None  # monotonic time it expires (put, touch); None: never


class Hints:
    def __init__(
        self,
        limit: int = HINT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = HINT_BYTES,
        batch_keys: int = REPLAY_BATCH,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.batch_keys = batch_keys  # the peers' MAX_BATCH_KEYS bounds a replayed sync
        self.clock = clock
        self._by_node: dict[str, OrderedDict[str, Hint]] = {}
        self._bytes: dict[str, int] = {}  # values kept per owner
        self._lock = threading.Lock()
        self.added = self.replayed = self.dropped = 0

    def deadline(self, ttl: float | None) -> float | None:
        return None if ttl is None else self.clock() + ttl

    def add(self, node: str, key: str, hint: Hint) -> None:
        with self._lock:
            pending = self._by_node.setdefault(node, OrderedDict())
            old = pending.get(key)
            if hint.kind == "touch" and old is not None:
                if old.kind == "put":  # the value to bring back, with the newer TTL
                    self._replace(node, pending, key, replace(old, deadline=hint.deadline))
                return  # after a delete, a touch has nothing to touch
            if old is not None and old.kind != "touch" and old.version > hint.version:
                return  # a newer write is already waiting
            self._replace(node, pending, key, hint)
            self.added += 1
            size = self._bytes.get(node, 0)
            while pending and (len(pending) > self.limit or size > self.max_bytes):
                _, dropped = pending.popitem(last=False)
                size -= len(dropped.value)
                self.dropped += 1
            self._bytes[node] = size

    def _replace(self, node: str, pending: OrderedDict[str, Hint], key: str, hint: Hint) -> None:
        old = pending.get(key)
        self._bytes[node] = (
            self._bytes.get(node, 0) + len(hint.value) - (len(old.value) if old else 0)
        )
        pending[key] = hint
        pending.move_to_end(key)

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {node: len(keys) for node, keys in self._by_node.items() if keys}

    def take(self, node: str, count: int, max_bytes: int) -> list[tuple[str, Hint]]:
        """The oldest hints for ``node``: at most ``count``, and (after the first) at most
        ``max_bytes`` of values."""
        with self._lock:
            pending = self._by_node.get(node)
            taken: list[tuple[str, Hint]] = []
            size = 0
            while pending and len(taken) < count:
                key, hint = next(iter(pending.items()))
                if taken and size + len(hint.value) > max_bytes:
                    break
                del pending[key]
                size += len(hint.value)
                taken.append((key, hint))
            self._bytes[node] = self._bytes.get(node, 0) - size
            return taken

    def clear(self) -> None:
        """Forget every hint (the cluster was flushed: nothing to bring back)."""
        with self._lock:
            self._by_node.clear()
            self._bytes.clear()

    def give_back(self, node: str, taken: list[tuple[str, Hint]]) -> None:
        for key, hint in taken:
            self.add(node, key, hint)
        with self._lock:
            self.added -= len(taken)

    def forget(self, node: str) -> int:
        with self._lock:
            dropped = len(self._by_node.pop(node, {}))
            self._bytes.pop(node, None)
            self.dropped += dropped
            return dropped

    def replay(self, ring: Ring, peers: PeerClient, me: str) -> int:
        """One round: send each live owner's hints (a batch per owner, all sent before any
        answer is read); an owner that fails gets them back for the next round. Returns how
        many were replayed."""
        done = 0
        for name in list(self.pending()):
            node = ring.node(name)
            if node is None or not node.in_ring or name == me:
                self.forget(name)
                continue
            taken = self.take(name, min(REPLAY_BATCH, self.batch_keys), REPLAY_BYTES)
            still_owned = [(k, h) for k, h in taken if any(o.name == name for o in ring.owners(k))]
            with self._lock:
                self.dropped += len(taken) - len(still_owned)
            try:
                self._send(peers, node, still_owned)
            except errors.CacheError as exc:
                log.info("replaying %d hints to %s: %s; later", len(still_owned), name, exc)
                self.give_back(name, still_owned)
                continue
            done += len(still_owned)
            with self._lock:
                self.replayed += len(still_owned)
        return done

    def _send(self, peers: PeerClient, node: object, hints: list[tuple[str, Hint]]) -> None:
        """The puts as one ``sync`` call, deletes and touches one call each. The first call is
        answered before the others go out: for a peer that timed out lately it is the one
        trial call the peer client lets through."""
        now = self.clock()
        puts = []
        sends: list[Callable[[], Pending[Any]]] = []
        for key, hint in hints:
            ttl = None if hint.deadline is None else hint.deadline - now
            if ttl is not None and ttl <= 0:
                if hint.kind == "put":
                    continue  # expired meanwhile: nothing to bring back
                ttl = 0.001
            if hint.kind == "put":
                puts.append((key, hint.value, hint.binary, ttl, hint.version))
            elif hint.kind == "delete":
                sends.append(functools.partial(peers.start_delete, node, key, hint.version))
            else:
                sends.append(functools.partial(peers.start_touch, node, key, ttl))
        if puts:
            sends.insert(0, functools.partial(peers.start_sync, node, puts))
        if not sends:
            return
        sends.pop(0)().result()
        calls: list[Pending[Any]] = []
        try:
            for send in sends:
                calls.append(send())
            while calls:
                calls.pop(0).result()
        finally:
            for call in calls:
                call.close()
