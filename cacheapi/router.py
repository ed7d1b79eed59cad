"""The router: between the views and the stores of the ring.

The node that receives a request coordinates it. For each key the router asks the ring for its
primary: this node serves it from its own store, any other is called with an internal request
(``cacheapi.peers``). Internal requests (``local=True``) are leaves: served here, never forwarded.
Batches are grouped by primary and sent to those nodes in parallel; a node that fails costs only
its own keys, which come back in ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cacheapi import errors, values
from cacheapi.peer.client import PeerClient, PeerUnavailable, Pending
from cacheapi.store import Entry, Store
from cacheapi.store.versions import Version
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


class Router:
    def __init__(
        self,
        *,
        store: Store,
        node: str,
        ring: Callable[[], Ring],
        peers: PeerClient | None = None,
        executor: ThreadPoolExecutor | None = None,
        on_forward: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self._ring = ring
        self.peers = peers
        self._executor = executor
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

    def _call(self, op: str, node: RingNode, fn: Callable[[PeerClient], Any]) -> Any:
        try:
            return fn(self._remote(op, node))
        except PeerUnavailable as exc:
            raise errors.Unavailable(str(exc)) from exc

    # Single keys. ``local``: an internal request, served from this store only.
    def get(self, key: str, *, local: bool = False) -> Entry | None:
        node = None if local else self.owner(key)
        if node is None:
            return self.store.get(key)
        return self._call("get", node, lambda p: p.get(node, key))

    def set(
        self, key: str, value: bytes, binary: bool, ttl: float | None, *, local: bool = False
    ) -> Version:
        node = None if local else self.owner(key)
        if node is None:
            version = self.store.set(key, value, binary=binary, ttl=ttl)
            assert version is not None  # unversioned writes always apply
            return version
        return self._call("set", node, lambda p: p.set(node, key, value, binary, ttl))

    def add(
        self, key: str, value: bytes, binary: bool, ttl: float | None, *, local: bool = False
    ) -> Version | None:
        node = None if local else self.owner(key)
        if node is None:
            return self.store.add(key, value, binary=binary, ttl=ttl)
        return self._call(
            "add", node, lambda p: p.set(node, key, value, binary, ttl, if_absent=True)
        )

    def cas(
        self,
        key: str,
        value: bytes,
        binary: bool,
        ttl: float | None,
        expected: Version,
        *,
        local: bool = False,
    ) -> Version | None:
        node = None if local else self.owner(key)
        if node is None:
            return self.store.cas(key, value, expected, binary=binary, ttl=ttl)
        return self._call(
            "cas", node, lambda p: p.set(node, key, value, binary, ttl, if_version=expected)
        )

    def delete(self, key: str, *, local: bool = False) -> bool:
        node = None if local else self.owner(key)
        if node is None:
            return self.store.delete(key)
        return self._call("delete", node, lambda p: p.delete(node, key))

    def touch(self, key: str, ttl: float | None, *, local: bool = False) -> bool:
        node = None if local else self.owner(key)
        if node is None:
            return self.store.touch(key, ttl)
        return self._call("touch", node, lambda p: p.touch(node, key, ttl))

    def incr(self, key: str, delta: int, *, local: bool = False) -> tuple[int, Version] | None:
        node = None if local else self.owner(key)
        if node is None:
            return self.store.incr(key, delta)
        return self._call("incr", node, lambda p: p.incr(node, key, delta))

    # Batches: grouped by primary, remote groups in parallel, local group meanwhile.
    def _fan_out(
        self,
        op: str,
        keys: Iterable[str],
        local_fn: Callable[[list[str]], Any],
        remote_fn: Callable[[PeerClient, RingNode, list[str]], Pending[Any]],
        *,
        local: bool,
    ) -> tuple[list[tuple[list[str], Any]], list[str]]:
        """Run ``local_fn`` on this node's keys and ``remote_fn`` per other owner.

        Every remote part is sent before any answer is read, so the owners work in parallel
        (and in parallel with the local part) without a thread per part; each answer is read
        within its own timeout. Returns ([(keys, result)], failed keys)."""
        if local:
            keys = list(keys)
            return [(keys, local_fn(keys))], []
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
                except (PeerUnavailable, errors.CacheError) as exc:
                    log.warning("batch %s on %s failed for %d keys: %s", op, name, len(group), exc)
                    failed.extend(group)
            if mine:
                results.append((mine, local_fn(mine)))
            while pending:
                group, part = pending.pop(0)
                try:
                    results.append((group, part.result()))
                except (PeerUnavailable, errors.CacheError) as exc:
                    log.warning(
                        "batch %s on %s failed for %d keys: %s", op, part.node.name, len(group), exc
                    )
                    failed.extend(group)
        finally:
            for _, part in pending:  # unread when the local part raised
                part.close()
        return results, failed

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fanout")
        return self._executor

    def on_every_node(
        self, local_fn: Callable[[], Any], method: str, path: str
    ) -> tuple[dict[str, Any], list[str]]:
        """Run ``local_fn`` here and the same internal call on every other node, in parallel
        (disabled nodes are skipped: an operator took them out). Returns (answers, failed)."""
        ring = self.ring
        others = [n for n in ring.nodes if n.name != self.node and n.status != "disabled"]
        pending = []
        for member in others:
            peers = self._remote(method.lower(), member)
            pending.append((member, self._pool().submit(peers.call, member, method, path)))
        answers: dict[str, Any] = {self.node: local_fn()}
        failed: list[str] = []
        for member, future in pending:
            try:
                answers[member.name] = future.result()
            except (PeerUnavailable, errors.CacheError, values.DecodeError) as exc:
                log.warning("%s %s on %s failed: %s", method, path, member.name, exc)
                failed.append(member.name)
        return answers, failed

    def get_many(self, keys: Sequence[str], *, local: bool = False) -> BatchGet:
        def here(group: list[str]) -> dict[str, Any]:
            found = self.store.get_many(group)
            return {k: values.to_wire(e.value, e.binary) for k, e in found.items()}

        results, failed = self._fan_out(
            "get_many",
            keys,
            here,
            lambda p, node, group: p.start_get_many(node, group),
            local=local,
        )
        found: dict[str, Any] = {}
        for _, part in results:
            found.update(part)
        failed_set = set(failed)
        return BatchGet(
            values={k: found[k] for k in keys if k in found},
            missing=[k for k in keys if k not in found and k not in failed_set],
            failed=failed,
        )

    def set_many(self, items: Sequence[Item], *, local: bool = False) -> BatchResult:
        by_key = {item[0]: item for item in items}  # the last write of a key wins

        def here(group: list[str]) -> int:
            stored = self.store.set_many(
                (k, by_key[k][1], by_key[k][2], by_key[k][3], None) for k in group
            )
            return sum(1 for v in stored if v is not None)

        def there(peers: PeerClient, node: RingNode, group: list[str]) -> Pending[int]:
            return peers.start_set_many(node, [by_key[k] for k in group])

        results, failed = self._fan_out("set_many", list(by_key), here, there, local=local)
        return BatchResult(count=sum(n for _, n in results), failed=failed)

    def delete_many(self, keys: Sequence[str], *, local: bool = False) -> BatchResult:
        results, failed = self._fan_out(
            "delete_many",
            keys,
            self.store.delete_many,
            lambda p, node, group: p.start_delete_many(node, group),
            local=local,
        )
        return BatchResult(count=sum(n for _, n in results), failed=failed)
