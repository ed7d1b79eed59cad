"""The process's ``Node`` object without a server: the expiry sweeper's rounds."""

import pytest

from cacheapi.metrics import Recorder
from cacheapi.node import SWEEP_ROUNDS, Node
from cacheapi.peer.client import PeerClient
from cacheapi.store import Store
from nodes.membership import Membership
from nodes.ring import Ring
from tests.clocks import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(clock: FakeClock):
    peers = PeerClient(secret="s", timeout=1.0)
    made = Node(
        name="n1",
        store=Store(clock=clock, entry_overhead=0),
        membership=Membership(node="n1", loader=lambda: Ring([]), version_reader=lambda: 0),
        peers=peers,
        recorder=Recorder(),
    )
    yield made
    peers.close()


def test_a_burst_of_expiries_is_reclaimed_in_rounds(node: Node, clock: FakeClock) -> None:
    for i in range(1000):
        node.store.set(f"k{i}", b"1", ttl=1 if i < 900 else None)
    clock.advance(2)
    # 100 slots a round, 90% expired: it keeps going, so one tick frees far more than 100.
    assert node.sweep_once(100) == 900
    assert len(node.store) == 100


def test_rounds_are_bounded(node: Node, clock: FakeClock) -> None:
    for i in range(10 * SWEEP_ROUNDS):
        node.store.set(f"k{i}", b"1", ttl=1)
    clock.advance(2)
    assert node.sweep_once(5) == 5 * SWEEP_ROUNDS


def test_a_quiet_store_costs_one_round(node: Node, clock: FakeClock) -> None:
    for i in range(1000):
        node.store.set(f"k{i}", b"1", ttl=1 if i % 10 == 0 else None)
    clock.advance(2)
    # A tenth of a round expired: under a quarter, so one round and done.
    assert node.sweep_once(100) == 10
