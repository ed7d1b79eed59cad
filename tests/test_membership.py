"""This node's view of the ring (``nodes.membership.Membership``).

Unit tests inject a fake registry (``loader`` and ``version_reader``) and need no database;
the last tests read the real registry, once in the test's thread and once from the watcher.
Nothing sleeps a fixed time: waits poll a condition against a deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from django.db import DatabaseError

from nodes.membership import Membership
from nodes.ring import Ring, RingNode
from tests.processes import wait_for as poll_until

ME = "n1"
ME_URL = "http://127.0.0.1:8001"
DEADLINE = 10.0


def wait_for(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    poll_until(condition, timeout=timeout, interval=0.005)


def rn(name: str, weight: int = 1, status: str = "up") -> RingNode:
    return RingNode(name, f"http://{name}.example", weight=weight, status=status)


class FakeRegistry:
    """A registry in memory: the nodes, a version, call counts and a switch to break it."""

    def __init__(self, *nodes: RingNode) -> None:
        self.nodes = list(nodes)
        self.version = 1 if nodes else 0
        self.loads = 0
        self.reads = 0
        self.broken: Exception | None = None
        self._lock = threading.Lock()

    def change(self, *nodes: RingNode) -> None:
        with self._lock:
            self.nodes = list(nodes)
            self.version += 1

    def load(self) -> Ring:
        with self._lock:
            self.loads += 1
            if self.broken is not None:
                raise self.broken
            return Ring(self.nodes, vnodes=8, replicas=2, version=self.version)

    def read_version(self) -> int:
        with self._lock:
            self.reads += 1
            if self.broken is not None:
                raise self.broken
            return self.version


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(rn(ME), rn("n2"))


@pytest.fixture
def make_membership() -> Iterator[Callable[..., Membership]]:
    """Memberships over a fake registry; every watcher is stopped at the end."""
    made: list[Membership] = []

    def make(registry: FakeRegistry, **options: object) -> Membership:
        m = Membership(
            node=ME,
            url=ME_URL,
            vnodes=8,
            replicas=2,
            loader=registry.load,
            version_reader=registry.read_version,
            **options,  # type: ignore[arg-type]
        )
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def names(ring: Ring) -> list[str]:
    return [n.name for n in ring.nodes]


# -- loading --------------------------------------------------------------------------------------


def test_nothing_is_loaded_before_first_use(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    make_membership(registry)
    assert (registry.loads, registry.reads) == (0, 0)


def test_first_access_loads_once(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry)
    ring = m.ring
    assert (ring.version, names(ring)) == (1, [ME, "n2"])
    assert m.ring is ring
    assert registry.loads == 1


def test_concurrent_first_access_loads_once(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry)
    rings: list[Ring] = []
    threads = [threading.Thread(target=lambda: rings.append(m.ring)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert registry.loads == 1
    assert len({id(r) for r in rings}) == 1


def test_empty_registry_gives_a_standalone_ring(make_membership: Callable[..., Membership]) -> None:
    registry = FakeRegistry()
    m = make_membership(registry)
    ring = m.ring
    assert ring.version == 0
    assert ring.nodes == (RingNode(ME, ME_URL, weight=1, status="up"),)
    assert [n.name for n in ring.owners("any-key")] == [ME]
    assert (ring.replicas, ring.vnodes) == (2, 8)
    assert m.status == "up"
    assert m.refresh() is False  # still empty, still standalone


def test_standalone_without_a_url_has_a_placeholder() -> None:
    m = Membership(node=ME, loader=lambda: Ring([]), version_reader=lambda: 0)
    assert m.ring.nodes == (RingNode(ME, "http://127.0.0.1"),)


def test_registry_emptied_later_gives_a_standalone_ring(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry)
    assert m.ring.version == 1
    registry.change()
    assert m.refresh() is True
    assert (m.ring.version, names(m.ring)) == (0, [ME])


# -- refresh ---------------------------------------------------------------------------------------


def test_refresh_reloads_only_when_the_version_moved(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry)
    first = m.ring
    assert m.refresh() is False
    assert m.refresh() is False
    assert m.ring is first
    assert (registry.loads, registry.reads) == (1, 2)

    registry.change(rn(ME), rn("n2", weight=3), rn("n3"))
    assert m.refresh() is True
    assert (m.ring.version, names(m.ring)) == (2, [ME, "n2", "n3"])
    assert m.ring.node("n2") == rn("n2", weight=3)
    assert registry.loads == 2
    assert m.reloads == 1

    assert m.refresh() is False
    assert registry.loads == 2


def test_refresh_before_first_access_loads(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry)
    assert m.refresh() is True
    assert m.ring.version == 1
    assert registry.loads == 1


@pytest.mark.parametrize("failing", ["loader", "version_reader"])
def test_a_broken_registry_keeps_the_last_good_ring(
    registry: FakeRegistry, make_membership: Callable[..., Membership], failing: str
) -> None:
    m = make_membership(registry)
    good = m.ring
    registry.change(rn(ME), rn("n3"))
    if failing == "loader":
        registry.read_version = lambda: registry.version  # type: ignore[method-assign]
    registry.broken = DatabaseError("registry unreachable")

    assert m.refresh() is False
    assert m.refresh() is False
    assert m.ring is good
    assert m.reload_errors == 2

    registry.broken = None
    assert m.refresh() is True
    assert (m.ring.version, names(m.ring)) == (2, [ME, "n3"])
    assert m.reload_errors == 2


def test_first_load_failing_serves_standalone_until_a_refresh_succeeds(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    registry.broken = DatabaseError("no such table: nodes_node")
    m = make_membership(registry)
    ring = m.ring
    assert (ring.version, names(ring)) == (0, [ME])
    assert m.reload_errors == 1
    assert registry.loads == 1

    assert m.refresh() is False
    assert m.reload_errors == 2
    assert m.ring is ring

    registry.broken = None
    assert m.refresh() is True
    assert (m.ring.version, names(m.ring)) == (1, [ME, "n2"])


def test_a_failed_refresh_before_first_access_tries_the_registry_once(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    registry.broken = DatabaseError("registry unreachable")
    m = make_membership(registry)
    assert m.refresh() is False
    assert (m.reload_errors, registry.reads, registry.loads) == (1, 1, 0)
    registry.broken = None
    assert m.ring.version == 1


@pytest.mark.parametrize("status", ["up", "joining", "draining", "down", "disabled"])
def test_status_is_this_nodes_status_in_the_ring(
    make_membership: Callable[..., Membership], status: str
) -> None:
    registry = FakeRegistry(rn(ME, status=status), rn("n2"))
    m = make_membership(registry)
    assert m.status == status


def test_status_follows_a_reload(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry)
    assert m.status == "up"
    registry.change(rn(ME, status="draining"), rn("n2"))
    m.refresh()
    assert m.status == "draining"


def test_a_node_missing_from_the_registry_counts_as_up(
    make_membership: Callable[..., Membership],
) -> None:
    m = make_membership(FakeRegistry(rn("n2"), rn("n3")))
    assert m.status == "up"
    assert m.ring.node(ME) is None


# -- the watcher thread ----------------------------------------------------------------------------


def test_watcher_picks_up_a_change_and_stops(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry, interval=0.01)
    assert m.ring.version == 1
    m.start()
    thread = m._thread
    assert thread is not None
    assert thread.is_alive()
    assert thread.daemon
    assert thread.name == "ring-watcher"
    m.start()  # idempotent
    assert m._thread is thread

    wait_for(lambda: registry.reads >= 2)  # it polls
    assert registry.loads == 1  # ... without reloading an unchanged ring

    registry.change(rn(ME), rn("n2", weight=2))
    wait_for(lambda: m.ring.version == 2)
    assert m.ring.node("n2") == rn("n2", weight=2)

    m.stop()
    assert not thread.is_alive()  # stop() waits for the thread
    assert m._thread is None


def test_watcher_survives_a_registry_outage(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry, interval=0.01)
    good = m.ring
    registry.broken = DatabaseError("registry unreachable")
    m.start()
    wait_for(lambda: m.reload_errors >= 3)
    assert m.ring is good
    registry.change(rn(ME), rn("n4"))
    registry.broken = None
    wait_for(lambda: m.ring.version == 2)
    assert names(m.ring) == [ME, "n4"]


def test_watcher_restarts_after_stop(
    registry: FakeRegistry, make_membership: Callable[..., Membership]
) -> None:
    m = make_membership(registry, interval=0.01)
    m.start()
    first = m._thread
    m.stop()
    m.start()
    second = m._thread
    assert first is not None
    assert second is not None
    assert second is not first
    assert not first.is_alive()
    registry.change(rn(ME), rn("n5"))
    wait_for(lambda: m.ring.version == 2)
    assert second.is_alive()
    assert not first.is_alive()  # never two watchers at once


# -- the real registry -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_registry_weight_change_is_seen_by_refresh() -> None:
    from nodes.models import Node, RingVersion

    Node.objects.create(name=ME, url=ME_URL)
    other = Node.objects.create(name="n2", url="http://n2.example")
    m = Membership(node=ME, url=ME_URL, vnodes=8, replicas=1)
    assert (m.ring.version, names(m.ring)) == (RingVersion.current(), [ME, "n2"])
    assert m.refresh() is False

    other.weight = 3
    other.save()
    assert m.refresh() is True
    assert m.ring.version == RingVersion.current() == 3
    assert m.ring.node("n2") == RingNode("n2", "http://n2.example", weight=3)

    Node.objects.filter(name=ME).set_status(Node.Status.DRAINING)
    assert m.refresh() is True
    assert m.status == "draining"


@pytest.mark.django_db(transaction=True)
def test_registry_change_is_seen_by_the_watcher_thread() -> None:
    from nodes.models import Node

    Node.objects.create(name=ME, url=ME_URL)
    other = Node.objects.create(name="n2", url="http://n2.example")
    m = Membership(node=ME, url=ME_URL, vnodes=8, replicas=1, interval=0.01)
    try:
        assert m.ring.version == 2
        m.start()
        other.weight = 4
        other.save()
        wait_for(lambda: m.ring.version == 3)
        assert m.ring.node("n2") == RingNode("n2", "http://n2.example", weight=4)
    finally:
        m.stop()
    assert m._thread is None


def test_watcher_survives_an_unexpected_error(
    registry: FakeRegistry,
    make_membership: Callable[..., Membership],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing a broken connection can fail too; the thread must keep watching."""
    import nodes.membership

    calls = {"n": 0}

    def flaky_close() -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise DatabaseError("server closed the connection unexpectedly")

    monkeypatch.setattr(nodes.membership, "close_old_connections", flaky_close)
    m = make_membership(registry, interval=0.01)
    assert m.ring.version == 1
    m.start()
    wait_for(lambda: calls["n"] >= 3)
    registry.change(rn(ME), rn("n6"))
    wait_for(lambda: m.ring.version == 2)
    assert m._thread is not None
    assert m._thread.is_alive()
    assert m.reload_errors >= 2
