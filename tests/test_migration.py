"""The migrator's decisions and the hints' bookkeeping, in process: real stores, rings and
migrators, with the peer calls delivered straight into the other nodes' stores (the process
tests in test_replication.py and test_faults.py run the same code over real HTTP)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest

from cacheapi import errors
from cacheapi.hints import Hint, Hints
from cacheapi.store import Store
from nodes.migration import Migrator, _parts
from nodes.ring import Ring, RingNode
from tests.clocks import FakeClock


class Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value

    def close(self) -> None:
        pass


class Peers:
    """Delivers ``sync``, ``delete``, ``touch`` and ``scan`` calls into in-process stores;
    names in ``down`` fail as a dead node does."""

    def __init__(self, stores: dict[str, Store]) -> None:
        self.stores = stores
        self.rings: dict[str, Any] = {}
        self.down: set[str] = set()
        self.synced: dict[str, int] = {}

    def _check(self, node: RingNode) -> None:
        if node.name in self.down:
            raise errors.Unavailable(f"node {node.name} unavailable")

    def start_sync(self, node: RingNode, items: list[Any]) -> Done:
        self._check(node)
        self.synced[node.name] = self.synced.get(node.name, 0) + len(items)
        applied = self.stores[node.name].set_many(items)
        return Done(sum(1 for v in applied if v is not None))

    def start_delete(self, node: RingNode, key: str, version: Any = None) -> Done:
        self._check(node)
        return Done(self.stores[node.name].delete(key, version=version))

    def start_touch(self, node: RingNode, key: str, ttl: float | None) -> Done:
        self._check(node)
        return Done(self.stores[node.name].touch(key, ttl))

    def start_scan(self, node: RingNode, owner: str, version: int, cursor: int, limit: int) -> Done:
        """What the ``scan`` peer call answers, from the source's store and ring."""
        self._check(node)
        store, source_ring = self.stores[node.name], self.rings[node.name]()
        entries, after, layout = store.entries_from(cursor, limit)
        items = [
            (k, e.value, e.binary, store.remaining(e), e.version)
            for k, e in entries
            if any(o.name == owner for o in source_ring.owners(k))
        ]
        return Done((items, after, layout))


def ring(statuses: dict[str, str], version: int, replicas: int = 1) -> Ring:
    nodes = [RingNode(n, f"http://{n}", 1, s) for n, s in statuses.items()]
    return Ring(nodes, vnodes=64, replicas=replicas, version=version)


class Node:
    def __init__(self, name: str, peers: Peers, clock: FakeClock, moves: list[Any]) -> None:
        self.store = Store(node=name, clock=clock)
        peers.stores[name] = self.store
        peers.rings[name] = self.current
        self.ring: Ring | None = None

        def move(who: str, from_: Collection[str], to: str) -> bool:
            moves.append((who, to))
            return True

        self.migrator = Migrator(
            name=name,
            store=self.store,
            ring=lambda: self.current(),
            peers=peers,  # type: ignore[arg-type]
            move=move,
            pause=lambda: None,
        )

    def current(self) -> Ring:
        assert self.ring is not None
        return self.ring


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Node], Peers, list[Any]]:
    monkeypatch.setattr("nodes.migration.RECHECK_SECONDS", 0.0)  # no wait for the recheck
    clock = FakeClock()
    peers = Peers({})
    moves: list[Any] = []
    nodes = {name: Node(name, peers, clock, moves) for name in ("a", "b", "c")}
    return nodes, peers, moves


def settle(nodes: dict[str, Node], r: Ring) -> None:
    for node in nodes.values():
        node.ring = r
        node.migrator.step()


def test_keys_leaving_a_node_are_pushed_to_their_owner_before_they_are_dropped(cluster):
    """REPLICAS=1: c joined (it pulled) and goes up; b drops what c owns now, but only after
    sending c its copy: a write that reached b after c's pull is not lost."""
    nodes, _, _ = cluster
    settle(nodes, ring({"a": "up", "b": "up", "c": "joining"}, 1))
    two = ring({"a": "up", "b": "up"}, 1)
    keys = [f"k{i}" for i in range(300)]
    for key in keys:
        nodes[two.primary(key).name].store.set(key, b"1")
    up = ring({"a": "up", "b": "up", "c": "up"}, 2)
    moved = [k for k in keys if up.primary(k).name == "c"]
    assert 60 < len(moved) < 140
    settle(nodes, up)
    assert sorted(k for k in keys if nodes["c"].store.peek(k) is not None) == sorted(moved)
    assert all(nodes["a"].store.peek(k) is None and nodes["b"].store.peek(k) is None for k in moved)
    assert sum(len(n.store) for n in nodes.values()) == len(keys)


def test_a_failed_push_keeps_the_keys_and_the_pass_is_tried_again(cluster):
    nodes, peers, _ = cluster
    one = ring({"a": "up", "b": "draining"}, 1)
    settle(nodes, ring({"a": "up", "b": "up"}, 1))
    keys = [f"k{i}" for i in range(100)]
    for key in keys:
        nodes["b"].store.set(key, b"v")
    peers.down.add("a")
    nodes["b"].ring = one
    assert nodes["b"].migrator.step() is False  # a did not answer: nothing dropped
    assert len(nodes["b"].store) == 100
    peers.down.clear()
    assert nodes["b"].migrator.step() is True  # pushed, dropped, and disabled
    assert len(nodes["b"].store) == 0
    assert all(nodes["a"].store.peek(k) is not None for k in keys)


def test_an_admin_drain_ends_disabled_once_the_store_is_empty(cluster):
    nodes, _, moves = cluster
    settle(nodes, ring({"a": "up", "b": "up", "c": "up"}, 1, replicas=2))
    for i in range(50):
        nodes["b"].store.set(f"k{i}", b"v")
    settle(nodes, ring({"a": "up", "b": "draining", "c": "up"}, 2, replicas=2))
    assert len(nodes["b"].store) == 0
    assert ("b", "disabled") in moves


def test_a_key_written_during_the_pass_is_pushed_again_not_dropped_stale(cluster):
    nodes, peers, _ = cluster
    settle(nodes, ring({"a": "up", "b": "up"}, 1))
    nodes["b"].store.set("k", b"old")
    original = peers.start_sync

    def sync_then_write(node: RingNode, items: list[Any]) -> Done:
        done = original(node, items)
        nodes["b"].store.set("k", b"new")  # a late coordinator's write lands on b meanwhile
        return done

    peers.start_sync = sync_then_write  # type: ignore[method-assign]
    nodes["b"].ring = ring({"a": "up", "b": "draining"}, 2)
    assert nodes["b"].migrator.step() is False
    assert nodes["b"].store.peek("k").value == b"new"  # not dropped: it changed
    peers.start_sync = original  # type: ignore[method-assign]
    nodes["b"].migrator.step()
    assert nodes["a"].store.peek("k").value == b"new"
    assert nodes["b"].store.peek("k") is None


@pytest.mark.parametrize(
    ("before", "after", "clears"),
    [
        ("up", "down", True),
        ("up", "joining", True),
        ("draining", "down", True),
        ("disabled", "joining", True),
        ("down", "joining", True),
        ("joining", "up", False),
        ("up", "draining", False),
        (None, "joining", False),  # a process that just started: empty anyway
    ],
)
def test_a_node_empties_its_store_when_it_was_left_out(cluster, before, after, clears):
    nodes, _, _ = cluster
    node = nodes["a"]
    node.store.set("k", b"v")
    node.migrator._last_status = before
    assert node.migrator._must_clear(after) is clears


def test_pushes_are_cut_by_count_and_bytes():
    items = [(f"k{i}", b"x" * 100, False, None, (1, 0, "a")) for i in range(10)]
    assert [len(p) for p in _parts(items, 4, 10_000)] == [4, 4, 2]
    assert [len(p) for p in _parts(items, 100, 250)] == [2, 2, 2, 2, 2]
    big = [("big", b"x" * 1000, False, None, (1, 0, "a"))]
    assert [len(p) for p in _parts(big + items[:1], 100, 500)] == [1, 1]  # alone, not refused


class TestHints:
    def test_a_touch_changes_a_pending_put_s_ttl_not_its_version(self) -> None:
        clock = FakeClock()
        hints = Hints(clock=clock)
        hints.add("b", "k", Hint("put", (1, 0, "a"), b"v1", False, None))
        hints.add("b", "k", Hint("touch", (5, 0, "a"), deadline=clock() + 10))
        [(key, hint)] = hints.take("b", 10, 1 << 20)
        assert (key, hint.kind, hint.version, hint.value) == ("k", "put", (1, 0, "a"), b"v1")
        assert hint.deadline == clock() + 10

    def test_a_touch_after_a_delete_is_dropped_and_a_newer_write_wins(self) -> None:
        hints = Hints()
        hints.add("b", "k", Hint("delete", (3, 0, "a")))
        hints.add("b", "k", Hint("touch", (4, 0, "a")))
        hints.add("b", "k", Hint("put", (2, 0, "a"), b"old"))  # older than the delete
        [(_, hint)] = hints.take("b", 10, 1 << 20)
        assert hint.kind == "delete"

    def test_hints_are_bounded_by_bytes(self) -> None:
        hints = Hints(max_bytes=1000)
        for i in range(5):
            hints.add("b", f"k{i}", Hint("put", (i + 1, 0, "a"), b"x" * 400))
        assert hints.pending() == {"b": 2}
        assert hints.dropped == 3
        assert [k for k, _ in hints.take("b", 10, 1 << 20)] == ["k3", "k4"]

    def test_replay_brings_a_stale_owner_up_to_date_and_skips_keys_it_no_longer_owns(self):
        clock = FakeClock()
        stores = {"a": Store(node="a", clock=clock), "b": Store(node="b", clock=clock)}
        peers = Peers(stores)
        r = ring({"a": "up", "b": "up"}, 1, replicas=2)
        stores["b"].set("k", b"old", version=(1, 0, "a"))
        stores["b"].set("gone", b"old", version=(1, 0, "a"))
        hints = Hints(clock=clock)
        hints.add("b", "k", Hint("put", (5, 0, "a"), b"new", False, clock() + 60))
        hints.add("b", "gone", Hint("delete", (6, 0, "a")))
        peers.down.add("b")
        assert hints.replay(r, peers, "a") == 0  # b does not answer: kept
        assert hints.pending() == {"b": 2}
        peers.down.clear()
        assert hints.replay(r, peers, "a") == 2
        assert stores["b"].peek("k").value == b"new"
        assert stores["b"].peek("gone") is None
        hints.add("b", "k", Hint("put", (7, 0, "a"), b"x", False, None))
        hints.replay(ring({"a": "up"}, 2), peers, "a")  # b left the ring: forgotten
        assert hints.pending() == {}
