"""The router: the coordinator between the API and the stores of the ring.

The node that receives a request coordinates it. For each key the router asks the ring for its
primary: this node serves it from its own store, any other is called over the peer protocol
(``cacheapi.peer.client``), whose calls are leaves on the owner. Batches are grouped by primary
and sent to those nodes in parallel; a node that fails costs only its own keys, which come back
in ``failed``. Cluster-wide calls (stats, flush) go to every node the same way.

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
from cacheapi.peer.client import PeerClient, Pending
from cacheapi.store import Hit, SetItem, Store, StoreError, Version
from nodes.ring import Ring, RingNode

log = logging.getLogger(__name__)

Item = tuple[str, bytes, bool, float | None]  # key, value, binary, ttl


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


class Router:
    def __init__(
        self,
        *,
        store: Store,
        node: str,
        ring: Callable[[], Ring],
        peers: PeerClient | None = None,
        on_forward: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self._ring = ring
        self.peers = peers
        self._on_forward = on_forward or (lambda op, node: None)

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

    def _remote(self, op: str, node: RingNode) -> PeerClient:
        if self.peers is None:
            raise errors.Unavailable(f"node {node.name} owns this key and forwarding is off")
        self._on_forward(op, node.name)
        return self.peers

    # Single keys.
    def get(self, key: str) -> Hit | None:
        """The live value with its TTL left and version, or None on a miss."""
        node = self.owner(key)
        hit = self.store.read(key) if node is None else self._remote("get", node).get(node, key)
        if hit is None or (hit.ttl is not None and hit.ttl <= 0):
            return None
        return hit

    def set(self, key: str, value: bytes, binary: bool, ttl: float | None) -> Version:
        node = self.owner(key)
        if node is None:
            version = self.store.set(key, value, binary=binary, ttl=ttl)
        else:
            version = self._remote("set", node).set(node, key, value, binary, ttl)
        assert version is not None  # unconditional writes always apply
        return version

    def add(self, key: str, value: bytes, binary: bool, ttl: float | None) -> Version:
        """Store only if absent; PreconditionFailed if the key exists."""
        node = self.owner(key)
        if node is None:
            version = self.store.add(key, value, binary=binary, ttl=ttl)
        else:
            peers = self._remote("add", node)
            version = peers.set(node, key, value, binary, ttl, if_absent=True)
        if version is None:
            raise errors.PreconditionFailed(f"key {key!r} already exists")
        return version

    def cas(
        self, key: str, value: bytes, binary: bool, ttl: float | None, expected: Version | None
    ) -> Version:
        """Replace only if the key still has version ``expected`` (None: whatever version it
        has now, i.e. only if it exists); PreconditionFailed otherwise."""
        if expected is None:
            current = self.get(key)
            if current is None:
                raise errors.PreconditionFailed(f"key {key!r} does not exist")
            expected = current.version
        node = self.owner(key)
        if node is None:
            version = self.store.cas(key, value, expected, binary=binary, ttl=ttl)
        else:
            peers = self._remote("cas", node)
            version = peers.set(node, key, value, binary, ttl, if_version=expected)
        if version is None:
            raise errors.PreconditionFailed(f"key {key!r} is missing or has another version")
        return version

    def delete(self, key: str) -> None:
        """Remove the key; NotFound if it was absent."""
        node = self.owner(key)
        if node is None:
            deleted = self.store.delete(key)
        else:
            deleted = self._remote("delete", node).delete(node, key)
        if not deleted:
            raise errors.NotFound(f"no key {key!r}")

    def touch(self, key: str, ttl: float | None) -> None:
        """Give the key a new TTL; NotFound if it is absent."""
        node = self.owner(key)
        if node is None:
            touched = self.store.touch(key, ttl)
        else:
            touched = self._remote("touch", node).touch(node, key, ttl)
        if not touched:
            raise errors.NotFound(f"no key {key!r}")

    def incr(self, key: str, delta: int) -> tuple[int, Version]:
        """The new value and version; NotFound if absent, NotInteger if not an integer."""
        node = self.owner(key)
        try:
            if node is None:
                result = self.store.incr(key, delta)
            else:
                result = self._remote("incr", node).incr(node, key, delta)
        except StoreError as exc:
            raise errors.from_store_error(exc) from exc
        except errors.Relayed as exc:
            if exc.code == errors.NotInteger.code:
                raise errors.NotInteger(exc.message) from exc
            raise
        if result is None:
            raise errors.NotFound(f"no key {key!r}")
        return result

    def sync_here(self, items: Iterable[SetItem]) -> tuple[int, int]:
        """Versioned writes into this node's own store (``POST /sync``, migration); an older
        version never replaces a newer one. Returns (stored, skipped)."""
        applied = self.store.set_many(items)
        stored = sum(1 for v in applied if v is not None)
        return stored, len(applied) - stored

    # Batches: grouped by primary, remote groups in parallel, local group meanwhile.
    def _fan_out(
        self,
        op: str,
        keys: Iterable[str],
        local_fn: Callable[[list[str]], Any],
        remote_fn: Callable[[PeerClient, RingNode, list[str]], Pending[Any]],
    ) -> tuple[list[tuple[list[str], Any]], list[str]]:
        """Run ``local_fn`` on this node's keys and ``remote_fn`` per other owner.

        Every remote part is sent before any answer is read, so the owners work in parallel
        (and in parallel with the local part) without a thread per part; each answer is read
        within its own timeout. Returns ([(keys, result)], failed keys)."""
        ring = self.ring
        keys = list(keys)
        groups = ring.group_by_owner(keys)
        if not groups:  # no live owner at all (every node down, draining or disabled)
            log.warning("batch %s: the ring has no live node; %d keys failed", op, len(keys))
            return [], keys
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
        finally:
            for _, part in pending:  # unread when the local part raised
                part.close()
        return results, failed

    def get_many(self, keys: Sequence[str]) -> BatchGet:
        local: list[dict[str, Any]] = []

        def here(group: list[str]) -> dict[str, Any]:
            to_wire = values.to_wire
            local.append({k: to_wire(v, b) for k, (v, b) in self.store.values_many(group).items()})
            return local[0]

        results, failed = self._fan_out(
            "get_many", keys, here, lambda p, node, group: p.start_get_many(node, group)
        )
        if len(results) == 1 and local and not failed and len(results[0][0]) == len(keys):
            # Every key was this node's: the store answered them in key order already.
            part = local[0]
            return BatchGet(values=part, missing=[k for k in keys if k not in part], failed=[])
        found: dict[str, Any] = {}
        for _, part in results:
            found.update(part)
        failed_set = set(failed)
        return BatchGet(
            values={k: found[k] for k in keys if k in found},
            missing=[k for k in keys if k not in found and k not in failed_set],
            failed=failed,
        )

    def set_many(self, items: Sequence[Item]) -> BatchResult:
        by_key = {item[0]: item for item in items}  # the last write of a key wins

        def here(group: list[str]) -> int:
            stored = self.store.set_many(
                (k, by_key[k][1], by_key[k][2], by_key[k][3], None) for k in group
            )
            return sum(1 for v in stored if v is not None)

        def there(peers: PeerClient, node: RingNode, group: list[str]) -> Pending[int]:
            return peers.start_set_many(node, [by_key[k] for k in group])

        results, failed = self._fan_out("set_many", list(by_key), here, there)
        return BatchResult(count=sum(n for _, n in results), failed=failed)

    def delete_many(self, keys: Sequence[str]) -> BatchResult:
        results, failed = self._fan_out(
            "delete_many",
            keys,
            self.store.delete_many,
            lambda p, node, group: p.start_delete_many(node, group),
        )
        return BatchResult(count=sum(n for _, n in results), failed=failed)

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

    def flush(self) -> tuple[int, list[str]]:
        """Empty every node's store; (entries removed, nodes that did not answer)."""
        done = self.on_every_node("clear", self.store.clear, lambda p, n: p.start_clear(n))
        return sum(done.answers.values()), done.failed
