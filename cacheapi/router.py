"""The router: the coordinator between the API and the stores of the ring.

The node that receives a request coordinates it. For each key the ring names its owners
(``REPLICAS`` distinct nodes, primary first); this node serves its own part from its store and
calls the others over the peer protocol (``cacheapi.peer.client``), whose calls are leaves on
the owner.

- **Writes** (set, delete, touch, batches) get one version stamped here (the store's hybrid
  logical clock) and go to every owner in parallel, all sent before any answer is read. The
  write is acknowledged once it reached at least one owner, and says how many (``copies``); a
  write that reached none is ``Unavailable`` (503), never a success. Owners apply last write
  wins on that version, deletes leave tombstones, so late or repeated copies change nothing.
- **Atomic operations** (add, compare-and-set, incr) run on the primary (the first owner that
  answers), which stamps the version; the coordinator then copies value, version and TTL left
  to the other owners.
- **Reads** go to the first owner that is ``up`` (a ``joining`` owner may still be filling
  in, so it is read last). If that owner does not answer within ``failover_timeout`` (a
  short wait: a frozen node must not cost every read the full forward timeout), the next owner
  is read at once, without waiting for the heartbeat. A miss falls back to a draining node
  that would own the key (it hands its keys off before it leaves).
- An owner that missed an acknowledged write (it did not answer) gets a *hint*, replayed
  when it answers again (``cacheapi.hints``), so it does not serve its older value after.
- Batches are grouped by owner and sent in parallel; a node that fails costs only its own keys,
  which are retried on their next owner (reads) or come back in ``failed``.

The router knows nothing of HTTP: outcomes are return values and the cache's own errors
(``cacheapi.errors``): ``Unavailable`` (no live owner answered), ``NotFound``,
``PreconditionFailed``, ``NotInteger``; the API maps them to statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cacheapi import errors, values
from cacheapi.hints import Hint, Hints
from cacheapi.peer.client import PeerClient, Pending
from cacheapi.store import Hit, SetItem, Store, StoreError, Version
from cacheapi.store.counters import CounterStore
from nodes.ring import Ring, RingNode, read_order
from ratelimit import algorithms
from ratelimit.algorithms import Decision
from ratelimit.rates import Rate

log = logging.getLogger(__name__)

Item = tuple[str, bytes, bool, float | None]  # key, value, binary, ttl
DEFAULT_FAILOVER_TIMEOUT = 0.25


@dataclass(frozen=True, slots=True)
class Written:
    """An acknowledged write: its version, and how many owners hold it."""

    version: Version
    copies: int


@dataclass
class BatchResult:
    count: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class BatchGet:
    values: dict[str, Any] = field(default_factory=dict)  # key -> wire value
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class EveryNode:
    """A cluster-wide call's answers by node name, and the nodes that did not answer."""

    answers: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _unanswered(exc: errors.CacheError) -> bool:
    """The owner did not answer (or not as a node should): it may have missed the write."""
    return isinstance(exc, errors.Unavailable | errors.BadGateway)


def _live(hit: Hit | None) -> Hit | None:
    return None if hit is None or (hit.ttl is not None and hit.ttl <= 0) else hit


class Router:
    def __init__(
        self,
        *,
        store: Store,
        node: str,
        ring: Callable[[], Ring],
        peers: PeerClient | None = None,
        on_forward: Callable[[str, str], None] | None = None,
        failover_timeout: float = DEFAULT_FAILOVER_TIMEOUT,
        hints: Hints | None = None,
        counters: CounterStore | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self._ring = ring
        self.peers = peers
        self._on_forward = on_forward or (lambda op, node: None)
        self.failover_timeout = failover_timeout
        self.hints = hints if hints is not None else Hints()
        self.counters = counters if counters is not None else CounterStore()
        # Replicated writes acknowledged, and the owner copies they missed (hints kept).
        self.writes = 0
        self.missed_copies = 0
        self._ring_before: tuple[Ring, Ring] | None = None

    @property
    def ring(self) -> Ring:
        return self._ring()

    def owner(self, key: str) -> RingNode | None:
        """The key's primary, or None when this node serves it."""
        primary = self.ring.primary(key)
        if primary is None:
            raise errors.Unavailable("the ring has no live node to own this key")
        if primary.name == self.node:
            return None
        return primary

    def owners(self, key: str, ring: Ring | None = None) -> list[RingNode]:
        """The key's owners, primary first; Unavailable if the ring has no live node."""
        found = (ring or self.ring).owners(key)
        if not found:
            raise errors.Unavailable("the ring has no live node to own this key")
        return found

    def _remote(self, op: str, node: RingNode) -> PeerClient:
        if self.peers is None:
            raise errors.Unavailable(f"node {node.name} owns this key and forwarding is off")
        self._on_forward(op, node.name)
        return self.peers

    # Reads.
    def get(self, key: str) -> Hit | None:
        """The live value with its TTL left and version, or None on a miss."""
        ring = self.ring
        owners = read_order(self.owners(key, ring))
        failure: errors.CacheError | None = None
        for i, node in enumerate(owners):
            last = i == len(owners) - 1
            if node.name == self.node:
                hit = self.store.read(key)
            else:
                try:
                    timeout = None if last else self.failover_timeout
                    hit = self._remote("get", node).get(node, key, timeout)
                except errors.Joining:
                    if not last:
                        continue  # a miss on a node still pulling: the next owner may have it
                    hit = None
                except (errors.Unavailable, errors.BadGateway) as exc:
                    failure = failure or exc
                    continue
            if hit is None and not last and node.status == "joining":
                continue  # it may not have the key yet
            if hit is None:
                return _live(self._read_elsewhere(ring, key, {o.name for o in owners}))
            return _live(hit)
        if failure is None:
            return None
        raise failure

    def _before(self, ring: Ring) -> Ring | None:
        """Who held keys before the current moves: ``ring`` with its draining nodes still
        members and its joining ones not yet; None when nothing is moving."""
        if not any(n.status in ("draining", "joining") for n in ring.nodes):
            return None
        cached = self._ring_before
        if cached is None or cached[0] is not ring:
            moved = {"draining": "up", "joining": "down"}
            nodes = [
                RingNode(n.name, n.url, n.weight, moved[n.status]) if n.status in moved else n
                for n in ring.nodes
            ]
            cached = (ring, Ring(nodes, vnodes=ring.vnodes, replicas=ring.replicas))
            self._ring_before = cached
        return cached[1]

    def _read_elsewhere(self, ring: Ring, key: str, tried: set[str]) -> Hit | None:
        """A miss on the owners while keys move: ask the nodes that held the key before (a
        draining node not done handing off, the old owner of a joining node's key)."""
        before = self._before(ring)
        if before is None:
            return None
        for node in before.owners(key):
            if node.name in tried:
                continue
            try:
                hit = (
                    self.store.read(key)
                    if node.name == self.node
                    else self._remote("get", node).get(node, key, self.failover_timeout)
                )
            except (errors.Unavailable, errors.BadGateway):
                continue
            if hit is not None:
                return hit
        return None

    # Writes: to every owner at once, with the coordinator's version.
    def _replicate(
        self,
        op: str,
        owners: Sequence[RingNode],
        local_fn: Callable[[], Any],
        remote_fn: Callable[[PeerClient, RingNode], Pending[Any]],
        hint: tuple[str, Hint] | None = None,
    ) -> list[Any]:
        """Run ``local_fn`` if this node is among ``owners`` and ``remote_fn`` on the others,
        all sent before any answer is read; the answers of the owners that confirmed.
        Unavailable (or the owners' own error) when none did. An acknowledged write that an
        owner missed (it did not answer) leaves ``hint`` (key, what it missed) for it."""
        pending: list[Pending[Any]] = []
        answers: list[Any] = []
        failure: errors.CacheError | None = None
        missed: list[str] = []
        try:
            mine = False
            for node in owners:
                if node.name == self.node:
                    mine = True
                    continue
                try:
                    pending.append(remote_fn(self._remote(op, node), node))
                except errors.CacheError as exc:
                    failure = failure or exc
                    if _unanswered(exc):
                        missed.append(node.name)
            if mine:
                answers.append(local_fn())
            while pending:
                part = pending.pop(0)
                try:
                    answers.append(part.result())
                except errors.CacheError as exc:
                    log.warning("%s on %s failed: %s", op, part.node.name, exc)
                    failure = failure or exc
                    if _unanswered(exc):
                        missed.append(part.node.name)
        finally:
            for part in pending:
                part.close()
        if not answers:
            if isinstance(failure, errors.Relayed | errors.BadGateway):
                raise failure
            raise errors.Unavailable(f"{op}: no owner could be written ({failure})")
        self.writes += 1
        self.missed_copies += len(missed)
        if hint is not None:
            for name in missed:
                self.hints.add(name, *hint)
        return answers

    def set(self, key: str, value: bytes, binary: bool, ttl: float | None) -> Written:
        version = self.store.hlc.now()
        return self._copy(self.owners(key), "set", key, value, binary, ttl, version)

    def _copy(
        self,
        owners: Sequence[RingNode],
        op: str,
        key: str,
        value: bytes,
        binary: bool,
        ttl: float | None,
        version: Version,
    ) -> Written:
        answers = self._replicate(
            op,
            owners,
            lambda: self.store.set(key, value, binary=binary, ttl=ttl, version=version),
            lambda p, node: p.start_put(node, key, value, binary, ttl, version),
            (key, Hint("put", version, value, binary, self.hints.deadline(ttl))),
        )
        return Written(version, len(answers))

    def _on_primary(
        self, op: str, key: str, here: Callable[[], Any], there: Callable[[RingNode], Any]
    ) -> tuple[Any, list[RingNode]]:
        """Run an atomic operation on the first owner that answers (up ones first): its
        result, and the other owners, to copy the outcome to."""
        owners = read_order(self.owners(key))
        failure: errors.CacheError | None = None
        for i, node in enumerate(owners):
            others = owners[:i] + owners[i + 1 :]
            if node.name == self.node:
                return here(), others
            try:
                return there(node), others
            except errors.Unavailable as exc:
                failure = failure or exc
        raise failure or errors.Unavailable(f"{op}: no owner of {key!r} answered")

    def _after_primary(
        self,
        others: Sequence[RingNode],
        key: str,
        value: bytes,
        binary: bool,
        ttl: float | None,
        version: Version,
    ) -> Written:
        if not others:
            return Written(version, 1)
        try:
            copied = self._copy(others, "copy", key, value, binary, ttl, version)
        except errors.CacheError as exc:
            log.warning("copying %r to the other owners failed: %s", key, exc)
            return Written(version, 1)
        return Written(version, 1 + copied.copies)

    def add(self, key: str, value: bytes, binary: bool, ttl: float | None) -> Written:
        """Store only if absent; PreconditionFailed if the key exists."""
        version, others = self._on_primary(
            "add",
            key,
            lambda: self.store.add(key, value, binary=binary, ttl=ttl),
            lambda node: self._remote("add", node).set(
                node, key, value, binary, ttl, if_absent=True
            ),
        )
        if version is None:
            raise errors.PreconditionFailed(f"key {key!r} already exists")
        return self._after_primary(others, key, value, binary, ttl, version)

    def cas(
        self, key: str, value: bytes, binary: bool, ttl: float | None, expected: Version | None
    ) -> Written:
        """Replace only if the key still has version ``expected`` (None: whatever version it
        has now, i.e. only if it exists); PreconditionFailed otherwise."""
        if expected is None:
            current = self.get(key)
            if current is None:
                raise errors.PreconditionFailed(f"key {key!r} does not exist")
            expected = current.version
        want = expected
        version, others = self._on_primary(
            "cas",
            key,
            lambda: self.store.cas(key, value, want, binary=binary, ttl=ttl),
            lambda node: self._remote("cas", node).set(
                node, key, value, binary, ttl, if_version=want
            ),
        )
        if version is None:
            raise errors.PreconditionFailed(f"key {key!r} is missing or has another version")
        return self._after_primary(others, key, value, binary, ttl, version)

    def delete(self, key: str) -> int:
        """Remove the key from every owner (a versioned tombstone on each); the copies that
        confirmed. NotFound if no owner had it."""
        version = self.store.hlc.now()
        answers = self._replicate(
            "delete",
            self.owners(key),
            lambda: self.store.delete(key, version=version),
            lambda p, node: p.start_delete(node, key, version),
            (key, Hint("delete", version)),
        )
        if not any(answers):
            raise errors.NotFound(f"no key {key!r}")
        return len(answers)

    def touch(self, key: str, ttl: float | None) -> int:
        """Give the key a new TTL on every owner (its value and version stay); the copies that
        confirmed. NotFound if no owner had it."""
        answers = self._replicate(
            "touch",
            self.owners(key),
            lambda: self.store.touch(key, ttl),
            lambda p, node: p.start_touch(node, key, ttl),
            (key, Hint("touch", self.store.hlc.now(), deadline=self.hints.deadline(ttl))),
        )
        if not any(answers):
            raise errors.NotFound(f"no key {key!r}")
        return len(answers)

    def incr(self, key: str, delta: int) -> tuple[int, Written]:
        """The new value and its write; NotFound if absent, NotInteger if not an integer."""

        def here() -> tuple[int, Version, float | None] | None:
            result = self.store.incr(key, delta)
            if result is None:
                return None
            entry = self.store.peek(key)
            return (*result, None if entry is None else self.store.remaining(entry))

        try:
            result, others = self._on_primary(
                "incr", key, here, lambda node: self._remote("incr", node).incr(node, key, delta)
            )
        except StoreError as exc:
            raise errors.from_store_error(exc) from exc
        except errors.Relayed as exc:
            if exc.code == errors.NotInteger.code:
                raise errors.NotInteger(exc.message) from exc
            raise
        if result is None:
            raise errors.NotFound(f"no key {key!r}")
        value, version, ttl = result
        if ttl is not None and ttl <= 0:
            ttl = 0.001  # it expired just now; the copies expire with it
        written = self._after_primary(others, key, str(value).encode(), False, ttl, version)
        return value, written

    # Rate-limit counters: on the key's first live owner, in its counter store.
    def ratelimit(
        self,
        key: str,
        algorithm: str,
        rate: Rate,
        cost: int = 1,
        burst: int | None = None,
        reset: bool = False,
    ) -> Decision:
        """One atomic check of ``algorithm`` on counter ``key`` (or, with ``reset``, forget
        it), on the key's primary (the next owner when it does not answer: the count starts
        again there)."""
        check = algorithms.reset_check if reset else algorithms.get(algorithm)
        owners = read_order(self.owners(key))
        failure: errors.CacheError | None = None
        for i, node in enumerate(owners):
            last = i == len(owners) - 1
            if node.name == self.node:
                return self.counters.check(key, check, rate, cost, burst)  # type: ignore[no-any-return]
            try:
                peers = self._remote("ratelimit", node)
                timeout = None if last else self.failover_timeout
                return peers.ratelimit(node, key, algorithm, rate, cost, burst, timeout, reset)
            except (errors.Unavailable, errors.BadGateway) as exc:
                failure = failure or exc
        raise failure or errors.Unavailable(f"no owner of counter {key!r} answered")

    def sync_here(self, items: Iterable[SetItem]) -> tuple[int, int]:
        """Versioned writes into this node's own store (``POST /sync``, migration); an older
        version never replaces a newer one. Returns (stored, skipped)."""
        applied = self.store.set_many(items)
        stored = sum(1 for v in applied if v is not None)
        return stored, len(applied) - stored

    # Batches: grouped by owner, remote groups in parallel, local group meanwhile.
    def _fan_out(
        self,
        op: str,
        groups: dict[str, list[str]],
        ring: Ring,
        local_fn: Callable[[list[str]], Any],
        remote_fn: Callable[[PeerClient, RingNode, list[str]], Pending[Any]],
        timeout_for: Callable[[RingNode], float | None] = lambda node: None,
        missed: dict[str, list[str]] | None = None,
    ) -> tuple[list[tuple[list[str], Any]], list[str]]:
        """Run ``local_fn`` on this node's group and ``remote_fn`` on each other node's.

        Every remote part is sent before any answer is read, so the owners work in parallel
        (and in parallel with the local part) without a thread per part; each answer is read
        within its own timeout. Returns ([(keys, result)], failed keys)."""
        groups = dict(groups)
        mine = groups.pop(self.node, None)
        results: list[tuple[list[str], Any]] = []
        failed: list[str] = []
        pending: list[tuple[list[str], Pending[Any]]] = []
        try:
            for name, group in groups.items():
                node = ring.node(name)
                assert node is not None
                try:
                    pending.append((group, remote_fn(self._remote(op, node), node, group)))
                except errors.CacheError as exc:
                    log.warning("batch %s on %s failed for %d keys: %s", op, name, len(group), exc)
                    failed.extend(group)
                    if missed is not None and _unanswered(exc):
                        missed[name] = group
            if mine:
                results.append((mine, local_fn(mine)))
            while pending:
                group, part = pending.pop(0)
                try:
                    results.append((group, part.result()))
                except errors.CacheError as exc:
                    log.warning(
                        "batch %s on %s failed for %d keys: %s", op, part.node.name, len(group), exc
                    )
                    failed.extend(group)
                    if missed is not None and _unanswered(exc):
                        missed[part.node.name] = group
        finally:
            for _, part in pending:  # unread when the local part raised
                part.close()
        return results, failed

    def _by_owner(
        self, ring: Ring, keys: Iterable[str], every: bool
    ) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Keys grouped by every owner (``every``) or by their first reader; and how many
        owners each key has."""
        groups: dict[str, list[str]] = {}
        owners: dict[str, int] = {}
        for key in keys:
            found = ring.owners(key)
            owners[key] = len(found)
            for node in found if every else read_order(found)[:1]:
                groups.setdefault(node.name, []).append(key)
        return groups, owners

    def get_many(self, keys: Sequence[str]) -> BatchGet:
        ring = self.ring
        if not len(ring):
            log.warning("batch get_many: the ring has no live node; %d keys failed", len(keys))
            return BatchGet(failed=list(keys))
        local: list[dict[str, Any]] = []

        def here(group: list[str]) -> dict[str, Any]:
            local.append(self.store.values_many(group, values.to_wire))
            return local[-1]

        def there(p: PeerClient, node: RingNode, group: list[str]) -> Pending[dict[str, Any]]:
            return p.start_get_many(node, group, timeout_for(node))

        def timeout_for(node: RingNode) -> float | None:
            return self.failover_timeout if ring.replicas > 1 and len(ring) > 1 else None

        plain = not any(n.status in ("joining", "draining") for n in ring.nodes)
        if plain:
            groups = ring.group_by_owner(keys)
        else:
            groups, _ = self._by_owner(ring, keys, every=False)
        results, failed = self._fan_out("get_many", groups, ring, here, there, timeout_for)
        if plain and len(results) == 1 and local and not failed and len(results[0][0]) == len(keys):
            # Every key was this node's: the store answered them in key order already.
            part = local[0]
            return BatchGet(values=part, missing=[k for k in keys if k not in part], failed=[])
        found: dict[str, Any] = {}
        for _, part in results:
            found.update(part)
        if failed or not plain:
            failed = self._get_many_again(ring, keys, found, failed, plain, here)
        failed_set = set(failed)
        return BatchGet(
            values={k: found[k] for k in keys if k in found},
            missing=[k for k in keys if k not in found and k not in failed_set],
            failed=failed,
        )

    def _get_many_again(
        self,
        ring: Ring,
        keys: Sequence[str],
        found: dict[str, Any],
        failed: list[str],
        plain: bool,
        here: Callable[[list[str]], dict[str, Any]],
    ) -> list[str]:
        """Second tries of a batch read: keys whose first reader failed go to their next
        owner; misses on a joining reader, and (once) on draining owners, are asked again.
        Fills ``found``; returns the keys no owner answered for."""
        tried: dict[str, set[str]] = {}
        for key in keys:
            first = read_order(ring.owners(key))[:1]
            tried[key] = {first[0].name} if first else set()
        failed_set = set(failed)
        retry = [k for k in keys if k not in found]
        for _ in range(ring.replicas):
            groups: dict[str, list[str]] = {}
            for key in retry:
                owners = read_order(ring.owners(key))
                if key not in failed_set and not any(
                    o.status == "joining" and o.name in tried[key] for o in owners
                ):
                    continue  # an up owner said it is missing: a miss
                untried = [o for o in owners if o.name not in tried[key]]
                if untried:
                    tried[key].add(untried[0].name)
                    groups.setdefault(untried[0].name, []).append(key)
            if not groups:
                break
            last = {
                name for name, group in groups.items()
                if all(len(tried[k]) == len(ring.owners(k)) for k in group)
            }  # fmt: skip

            def there(
                p: PeerClient, node: RingNode, group: list[str], last: set[str] = last
            ) -> Pending[dict[str, Any]]:
                # The last owner a key has gets the full timeout, as a single read does.
                timeout = None if node.name in last else self.failover_timeout
                return p.start_get_many(node, group, timeout)

            results, again = self._fan_out("get_many", groups, ring, here, there)
            for group, part in results:
                found.update(part)
                failed_set.difference_update(group)
            failed_set.update(again)
            retry = [k for k in retry if k not in found]
        if not plain:
            for key in [k for k in keys if k not in found]:
                hit = _live(self._read_elsewhere(ring, key, tried[key]))
                if hit is not None:
                    found[key] = values.to_wire(hit.value, hit.binary)
                    failed_set.discard(key)
        return [k for k in keys if k in failed_set and k not in found]

    def set_many(self, items: Sequence[Item]) -> BatchResult:
        by_key = {item[0]: item for item in items}  # the last write of a key wins
        version = self.store.hlc.now()
        ring = self.ring

        def here(group: list[str]) -> int:
            stored = self.store.set_many(
                (k, by_key[k][1], by_key[k][2], by_key[k][3], version) for k in group
            )
            return len(stored)

        def there(peers: PeerClient, node: RingNode, group: list[str]) -> Pending[int]:
            return peers.start_set_many(node, [by_key[k] for k in group], version)

        def hint(key: str) -> Hint:
            _, value, binary, ttl = by_key[key]
            return Hint("put", version, value, binary, self.hints.deadline(ttl))

        return self._write_many("set_many", ring, list(by_key), here, there, hint)[0]

    def _write_many(
        self,
        op: str,
        ring: Ring,
        keys: list[str],
        here: Callable[[list[str]], Any],
        there: Callable[[PeerClient, RingNode, list[str]], Pending[Any]],
        hint: Callable[[str], Hint],
    ) -> tuple[BatchResult, list[tuple[list[str], Any]]]:
        """A batch write to every owner of each key: the keys that reached at least one
        owner are counted, the others are ``failed``; an owner that missed keys others took
        gets hints. Also returns each owner's answer."""
        if not len(ring):
            log.warning("batch %s: the ring has no live node; %d keys failed", op, len(keys))
            return BatchResult(failed=keys), []
        groups, _ = self._by_owner(ring, keys, every=True)
        missed: dict[str, list[str]] = {}
        results, _failed = self._fan_out(op, groups, ring, here, there, missed=missed)
        reached: set[str] = set()
        for group, _answer in results:
            reached.update(group)
        self.writes += len(reached)
        for name, group in missed.items():
            for key in group:
                if key in reached:
                    self.missed_copies += 1
                    self.hints.add(name, key, hint(key))
        failed = [k for k in keys if k not in reached]
        return BatchResult(count=len(reached), failed=failed), results

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        version = self.store.hlc.now()
        ring = self.ring
        removed: set[str] = set()

        def here(group: list[str]) -> list[str]:
            gone = [k for k in group if self.store.delete(k, version=version)]
            removed.update(gone)
            return gone

        def there(peers: PeerClient, node: RingNode, group: list[str]) -> Pending[list[str]]:
            return peers.start_delete_many(node, group, version)

        keys = list(dict.fromkeys(keys))
        result, answers = self._write_many(
            "delete_many", ring, keys, here, there, lambda key: Hint("delete", version)
        )
        for _, gone in answers:
            removed.update(gone)
        result.count = len(removed)
        return result

    # Cluster-wide calls.
    def on_every_node(
        self,
        op: str,
        local_fn: Callable[[], Any],
        remote_fn: Callable[[PeerClient, RingNode], Pending[Any]],
    ) -> EveryNode:
        """Run ``local_fn`` here and ``remote_fn`` on every other node (disabled nodes are
        skipped: an operator took them out), all sent before any answer is read."""
        result = EveryNode()
        pending: list[Pending[Any]] = []
        try:
            for member in self.ring.nodes:
                if member.name == self.node or member.status == "disabled":
                    continue
                try:
                    pending.append(remote_fn(self._remote(op, member), member))
                except errors.CacheError as exc:
                    log.warning("%s on %s failed: %s", op, member.name, exc)
                    result.failed.append(member.name)
            result.answers[self.node] = local_fn()
            while pending:
                part = pending.pop(0)
                try:
                    result.answers[part.node.name] = part.result()
                except errors.CacheError as exc:
                    log.warning("%s on %s failed: %s", op, part.node.name, exc)
                    result.failed.append(part.node.name)
        finally:
            for part in pending:
                part.close()
        return result

    def clear_here(self) -> int:
        """Empty this node's store and forget its hints (nothing flushed may come back)."""
        self.hints.clear()
        return self.store.clear()

    def flush(self) -> tuple[int, list[str]]:
        """Empty every node's store; (entries removed, nodes that did not answer)."""
        done = self.on_every_node("clear", self.clear_here, lambda p, n: p.start_clear(n))
        return sum(done.answers.values()), done.failed
