"""The store and its write versions, without Django: a fake clock stands in for time."""

import re
import sys
import threading
from collections import Counter
from contextlib import suppress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cacheapi.store import (
    ENTRY_OVERHEAD,
    Entry,
    IntegerOverflow,
    NotInteger,
    Store,
    StoreError,
    ValueTooLarge,
    records,
)
from cacheapi.store.versions import HybridClock, Version, format_version, parse_version
from tests.clocks import FakeClock

WALL_START = 1_732_540_000.0  # seconds; the HLC's wall clock in these tests
WALL_MS = int(WALL_START * 1_000_000)  # versions count microseconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL_START)


@pytest.fixture
def store(clock: FakeClock, wall: FakeClock) -> Store:
    return Store(
        clock=clock, hlc=HybridClock("n1", wall=wall), tombstone_ttl=60.0, entry_overhead=0
    )


def make_store(clock: FakeClock, **kwargs) -> Store:
    """A store charging no per-entry overhead, so that tests can pin byte arithmetic
    (``TestEntryOverhead`` covers the default)."""
    kwargs.setdefault("entry_overhead", 0)
    return Store(clock=clock, hlc=HybridClock("n1", wall=FakeClock(WALL_START)), **kwargs)


def size(key: str, value: bytes) -> int:
    """What the store charges for an entry without overhead: a non-ASCII key counts twice."""
    key_bytes = len(key.encode("utf-8"))
    return (key_bytes if key.isascii() else 2 * key_bytes) + len(value)


def counters(store: Store) -> dict[str, int]:
    stats = store.stats()
    return {name: stats[name] for name in ("hits", "misses", "sets", "deletes", "expirations")}


# Versions and the hybrid logical clock.


class TestVersionText:
    def test_format_matches_the_documented_form(self) -> None:
        assert format_version((1732540000000, 0, "n1")) == "1732540000000-0-n1"

    @pytest.mark.parametrize(
        ("text", "version"),
        [
            ("1732540000000-0-n1", (1732540000000, 0, "n1")),
            ("0-0-a", (0, 0, "a")),
            ("5-12-node-a-1", (5, 12, "node-a-1")),  # dashes in the node name
            ("7-3-10.0.0.1:8001", (7, 3, "10.0.0.1:8001")),
            ("1-2--", (1, 2, "-")),
        ],
    )
    def test_parse(self, text: str, version: Version) -> None:
        assert parse_version(text) == version
        assert format_version(version) == text

    @given(
        ms=st.integers(0, 2**63 - 1),
        counter=st.integers(0, 2**32 - 1),
        node=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    )
    def test_round_trip(self, ms: int, counter: int, node: str) -> None:
        version = (ms, counter, node)
        assert parse_version(format_version(version)) == version

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "1-2",
            "1-2-",
            "-1-2-n1",
            "1--2-n1",
            "a-2-n1",
            "1-b-n1",
            "1.5-2-n1",
            "+1-2-n1",
            "01-2-n1",
            "1-02-n1",
            " 1-2-n1",
            "1-2-n1 ",
            "1-2-n 1",
            "1-2-n1\n",
            "1-2-nœud",
            "\u0661-2-n1",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to us
            "12345678901234567890-0-n1",  # 20 digits
        ],
    )
    def test_parse_refuses_malformed_text(self, text: str) -> None:
        with pytest.raises(ValueError, match="Invalid version"):
            parse_version(text)

    @pytest.mark.parametrize(
        "text",
        [
            f"{2**63}-0-n1",  # 19 digits, past a signed 64-bit integer
            f"1-{2**32}-n1",  # a counter past 32 bits
            "9999999999999999999-9999999999999999999-n1",
        ],
    )
    def test_parse_refuses_numbers_a_record_cannot_hold(self, text: str) -> None:
        with pytest.raises(ValueError, match="out of range"):
            parse_version(text)

    @pytest.mark.parametrize("value", [None, b"1-2-n1", 12])
    def test_parse_refuses_non_strings(self, value: object) -> None:
        with pytest.raises(ValueError, match="Invalid version"):
            parse_version(value)


class TestHybridClock:
    def test_versions_increase_within_one_microsecond(self, wall: FakeClock) -> None:
        hlc = HybridClock("n1", wall=wall)
        assert [hlc.now() for _ in range(3)] == [
            (WALL_MS, 0, "n1"),
            (WALL_MS, 1, "n1"),
            (WALL_MS, 2, "n1"),
        ]
        wall.advance(0.005)
        assert hlc.now() == (WALL_MS + 5000, 0, "n1")

    def test_monotonic_when_the_wall_clock_goes_backwards(self, wall: FakeClock) -> None:
        hlc = HybridClock("n1", wall=wall)
        first = hlc.now()
        wall.advance(-3600)  # an NTP step back by an hour
        later = [hlc.now() for _ in range(3)]
        assert later == [(WALL_MS, 1, "n1"), (WALL_MS, 2, "n1"), (WALL_MS, 3, "n1")]
        assert first < later[0]
        wall.advance(3600 + 0.001)  # the wall clock catches up: counter restarts
        assert hlc.now() == (WALL_MS + 1000, 0, "n1")

    def test_observe_pushes_the_clock_ahead(self, wall: FakeClock) -> None:
        hlc = HybridClock("n1", wall=wall)
        remote = (WALL_MS + 10_000_000, 5, "n2")  # a peer whose clock runs 10 s ahead
        hlc.observe(remote)
        assert hlc.now() == (WALL_MS + 10_000_000, 6, "n1")
        assert hlc.now() > remote

    def test_observe_breaks_ties_without_the_node_name(self, wall: FakeClock) -> None:
        hlc = HybridClock("a", wall=wall)
        remote = (WALL_MS, 7, "zzz")  # same ms; "zzz" > "a" would win a tie on the name
        hlc.observe(remote)
        assert hlc.now() == (WALL_MS, 8, "a")
        assert hlc.now() > remote

    def test_observing_an_older_version_changes_nothing(self, wall: FakeClock) -> None:
        hlc = HybridClock("n1", wall=wall)
        hlc.now()
        hlc.now()
        hlc.observe((WALL_MS - 1, 99, "n2"))
        assert hlc.now() == (WALL_MS, 2, "n1")

    def test_concurrent_callers_get_distinct_increasing_versions(self, wall: FakeClock) -> None:
        hlc = HybridClock("n1", wall=wall)
        barrier = threading.Barrier(8)
        results: list[list[Version]] = [[] for _ in range(8)]

        def worker(out: list[Version]) -> None:
            barrier.wait()
            out.extend(hlc.now() for _ in range(500))

        threads = [threading.Thread(target=worker, args=(out,)) for out in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(out == sorted(out) for out in results)
        assert len({v for out in results for v in out}) == 8 * 500

    @pytest.mark.parametrize("node", ["", "n 1", "nœud", "n1\n"])
    def test_refuses_node_names_that_do_not_round_trip(self, node: str) -> None:
        with pytest.raises(ValueError, match="Invalid node name"):
            HybridClock(node)


# Single-key operations.


class TestHybridClockLimits:
    def test_counter_rolls_over_into_the_next_millisecond(self, wall: FakeClock) -> None:
        hlc = HybridClock("n1", wall=wall)
        hlc.observe((WALL_MS, 2**32 - 1, "n2"))
        assert hlc.now() == (WALL_MS + 1, 0, "n1")

    def test_store_refuses_versions_out_of_range(self, store: Store) -> None:
        for version in [(2**63, 0, "n2"), (1, 2**32, "n2"), (-1, 0, "n2")]:
            with pytest.raises(ValueError, match="out of range"):
                store.set("k", b"1", version=version)
        assert store.peek("k") is None


class TestGetSetPeek:
    def test_set_then_get(self, store: Store) -> None:
        version = store.set("k", b'{"a": 1}')
        assert version == (WALL_MS, 0, "n1")
        assert store.get("k") == Entry(b'{"a": 1}', False, None, version)
        assert store.get("missing") is None
        assert counters(store) == {
            "hits": 1,
            "misses": 1,
            "sets": 1,
            "deletes": 0,
            "expirations": 0,
        }

    def test_binary_flag_and_replacement(self, store: Store) -> None:
        first = store.set("k", b"\x00\xff", binary=True)
        assert store.peek("k") == Entry(b"\x00\xff", True, None, first)
        second = store.set("k", b"[1,2,3]")
        assert second > first
        assert store.peek("k") == Entry(b"[1,2,3]", False, None, second)
        assert store.stats()["bytes"] == size("k", b"[1,2,3]")
        assert len(store) == 1

    def test_entries_are_immutable(self, store: Store) -> None:
        store.set("k", b"1")
        entry = store.get("k")
        with pytest.raises(AttributeError):
            entry.value = b"2"

    def test_peek_counts_nothing(self, store: Store) -> None:
        store.set("k", b"1")
        assert store.peek("k").value == b"1"
        assert store.peek("nope") is None
        assert counters(store)["hits"] == counters(store)["misses"] == 0

    def test_ttl_sets_expires_at_on_the_injected_clock(
        self, store: Store, clock: FakeClock
    ) -> None:
        store.set("int", b"1", ttl=30)
        store.set("float", b"1", ttl=0.5)
        assert store.peek("int").expires_at == 1030.0
        assert store.peek("float").expires_at == 1000.5
        assert store.clock is clock

    def test_lazy_expiry_on_get(self, store: Store, clock: FakeClock) -> None:
        store.set("k", b"1", ttl=10)
        clock.advance(9.999)
        assert store.get("k") is not None
        clock.advance(0.001)  # expired exactly at expires_at
        assert store.peek("k") is None
        assert len(store) == 1  # peek leaves it for get or sweep
        assert store.get("k") is None
        assert len(store) == 0
        assert store.stats()["bytes"] == 0
        assert counters(store) == {
            "hits": 1,
            "misses": 1,
            "sets": 1,
            "deletes": 0,
            "expirations": 1,
        }

    def test_remaining(self, store: Store, clock: FakeClock) -> None:
        store.set("k", b"1", ttl=10)
        store.set("forever", b"1")
        entry = store.peek("k")
        assert store.remaining(entry) == 10.0
        clock.advance(4)
        assert store.remaining(entry) == 6.0
        clock.advance(7)
        assert store.remaining(entry) == -1.0
        assert store.remaining(store.peek("forever")) is None

    @pytest.mark.parametrize("ttl", [0, -1, 0.0, -0.5, float("nan"), float("inf"), True, 10**400])
    def test_bad_ttl_is_refused_everywhere(self, store: Store, ttl: object) -> None:
        store.set("k", b"1")
        with pytest.raises(ValueError, match="ttl"):
            store.set("k", b"2", ttl=ttl)
        with pytest.raises(ValueError, match="ttl"):
            store.add("new", b"2", ttl=ttl)
        with pytest.raises(ValueError, match="ttl"):
            store.touch("k", ttl)
        with pytest.raises(ValueError, match="ttl"):
            store.set_many([("new", b"2", False, ttl, None)])
        assert store.peek("k") == Entry(b"1", False, None, (WALL_MS, 0, "n1"))
        assert len(store) == 1

    def test_wrong_types_are_refused(self, store: Store) -> None:
        with pytest.raises(TypeError, match="ttl"):
            store.set("k", b"1", ttl="5")
        with pytest.raises(TypeError, match="value"):
            store.set("k", "text")
        with pytest.raises(TypeError, match="key"):
            store.set(b"k", b"1")
        assert len(store) == 0


class TestConditionalWrites:
    def test_add_only_when_absent(self, store: Store) -> None:
        first = store.add("k", b"1")
        assert first is not None
        assert store.add("k", b"2") is None
        assert store.peek("k") == Entry(b"1", False, None, first)
        assert store.stats()["sets"] == 1

    def test_add_over_an_expired_entry(self, store: Store, clock: FakeClock) -> None:
        store.set("k", b"1", ttl=5)
        clock.advance(5)
        version = store.add("k", b"2", binary=True, ttl=7)
        assert store.peek("k") == Entry(b"2", True, 1012.0, version)
        assert counters(store)["expirations"] == 1

    def test_cas(self, store: Store) -> None:
        first = store.set("k", b"1")
        assert store.cas("k", b"2", (WALL_MS, 99, "n1")) is None
        assert store.cas("missing", b"2", first) is None
        second = store.cas("k", b"2", first, ttl=3)
        assert second is not None
        assert second > first
        assert store.peek("k") == Entry(b"2", False, 1003.0, second)
        assert store.cas("k", b"3", first) is None  # stale now
        assert store.peek("k").value == b"2"
        assert store.stats()["sets"] == 2

    def test_cas_on_an_expired_entry_fails(self, store: Store, clock: FakeClock) -> None:
        version = store.set("k", b"1", ttl=1)
        clock.advance(1)
        assert store.cas("k", b"2", version) is None
        assert len(store) == 0

    def test_delete(self, store: Store, clock: FakeClock) -> None:
        store.set("k", b"1")
        store.set("gone", b"1", ttl=1)
        assert store.delete("k") is True
        assert store.delete("k") is False
        clock.advance(1)
        assert store.delete("gone") is False  # expired: not a live entry
        assert counters(store) == {
            "hits": 0,
            "misses": 0,
            "sets": 2,
            "deletes": 1,
            "expirations": 1,
        }
        assert store.stats()["bytes"] == 0

    def test_touch(self, store: Store, clock: FakeClock) -> None:
        first = store.set("k", b"1", ttl=5)
        clock.advance(4)
        assert store.touch("k", 10) is True
        entry = store.peek("k")
        assert entry.value == b"1"
        assert entry.expires_at == 1014.0
        assert entry.version == first  # the value did not change, nor does its version
        clock.advance(9)
        assert store.get("k") is not None  # would have expired at 1005 without the touch
        assert store.touch("k", None) is True
        assert store.peek("k").expires_at is None
        assert store.touch("missing", 5) is False
        assert store.stats()["sets"] == 1  # touch is not a set

    def test_touch_cannot_revive_an_expired_entry(self, store: Store, clock: FakeClock) -> None:
        store.set("k", b"1", ttl=5)
        clock.advance(5)
        assert store.touch("k", 100) is False
        assert store.peek("k") is None


class TestIncr:
    def test_incr_and_decr(self, store: Store) -> None:
        first = store.set("n", b"10")
        assert store.incr("missing") is None
        value, second = store.incr("n")
        assert value == 11
        assert second > first
        assert store.incr("n", 5)[0] == 16
        value, third = store.incr("n", -20)
        assert value == -4
        assert store.peek("n") == Entry(b"-4", False, None, third)
        assert store.stats()["sets"] == 4
        assert store.stats()["bytes"] == size("n", b"-4")

    def test_incr_keeps_the_deadline(self, store: Store, clock: FakeClock) -> None:
        store.set("n", b"0", ttl=10)
        clock.advance(4)
        assert store.incr("n") == (1, store.peek("n").version)
        assert store.peek("n").expires_at == 1010.0
        assert store.remaining(store.peek("n")) == 6.0
        clock.advance(6)
        assert store.incr("n") is None
        assert store.sweep() == 0  # the lazy path already removed it
        assert store.stats()["expirations"] == 1

    @pytest.mark.parametrize(
        "value", [b"1.5", b'"x"', b" 1", b"1 ", b"", b"-", b"1e3", b"true", b"null", b"[1]"]
    )
    def test_not_integer(self, store: Store, value: bytes) -> None:
        version = store.set("n", value)
        with pytest.raises(NotInteger):
            store.incr("n")
        assert store.peek("n") == Entry(value, False, None, version)
        assert store.stats()["sets"] == 1

    def test_binary_is_not_integer(self, store: Store) -> None:
        store.set("n", b"1", binary=True)
        with pytest.raises(NotInteger):
            store.incr("n")
        assert store.peek("n").value == b"1"

    def test_overflow_changes_nothing(self, store: Store) -> None:
        top = str(2**63 - 1).encode()
        store.set("n", str(2**63 - 2).encode())
        assert store.incr("n")[0] == 2**63 - 1
        with pytest.raises(IntegerOverflow):
            store.incr("n")
        assert store.peek("n").value == top
        store.set("low", str(-(2**63)).encode())
        with pytest.raises(IntegerOverflow):
            store.incr("low", -1)
        assert store.incr("low", 2**64 - 1)[0] == 2**63 - 1
        store.set("huge", b"1" * 30)
        with pytest.raises(IntegerOverflow):
            store.incr("huge", -(10**29))
        assert store.stats()["sets"] == 5

    @pytest.mark.parametrize("delta", [True, 1.0, "1", None])
    def test_delta_must_be_an_int(self, store: Store, delta: object) -> None:
        store.set("n", b"1")
        with pytest.raises(TypeError, match="delta"):
            store.incr("n", delta)
        assert store.peek("n").value == b"1"


# Batches, scan, sweep, clear and stats.


class TestBatches:
    def test_get_many(self, store: Store, clock: FakeClock) -> None:
        store.set("a", b"1")
        store.set("b", b"2", ttl=1)
        store.set("c", b"3")
        clock.advance(1)
        found = store.get_many(iter(["a", "b", "c", "x"]))
        assert {key: entry.value for key, entry in found.items()} == {"a": b"1", "c": b"3"}
        assert counters(store) == {
            "hits": 2,
            "misses": 2,
            "sets": 3,
            "deletes": 0,
            "expirations": 1,
        }

    def test_values_many_matches_get_many(self, clock: FakeClock) -> None:
        def filled() -> Store:
            s = make_store(clock, max_items=4)
            s.set("a", b"1")
            s.set("b", b"2", ttl=1)
            s.set("c", b"\x00", binary=True)
            s.set("d", b"4")
            return s

        start = clock()
        one, other = filled(), filled()
        clock.advance(1)
        keys = ["a", "b", "c", "x"]
        entries = one.get_many(keys)
        assert other.values_many(iter(keys)) == {k: (e.value, e.binary) for k, e in entries.items()}
        assert other.values_many(keys) == {"a": (b"1", False), "c": (b"\x00", True)}
        assert counters(one) == {"hits": 2, "misses": 2, "sets": 4, "deletes": 0, "expirations": 1}
        assert counters(other)["hits"] == 4
        assert counters(other)["misses"] == 4  # b (expired) and x, in both calls
        # Both set the reference bits of what they found, and only those (white-box).
        for s in (one, other):
            bits = {k: s._refs[records.slot(s._data[k])] for k in ("a", "c", "d")}
            assert bits == {"a": 1, "c": 1, "d": 0}
        assert clock() == start + 1

    def test_set_many(self, store: Store, clock: FakeClock) -> None:
        versions = store.set_many(
            [
                ("a", b"1", False, None, None),
                ("b", b"\x01", True, 5, None),
                ("a", b"2", False, 2.5, None),
            ]
        )
        assert versions == [(WALL_MS, 0, "n1"), (WALL_MS, 1, "n1"), (WALL_MS, 2, "n1")]
        assert store.peek("a") == Entry(b"2", False, 1002.5, versions[2])
        assert store.peek("b") == Entry(b"\x01", True, 1005.0, versions[1])
        assert store.stats()["sets"] == 3
        assert store.stats()["bytes"] == size("a", b"2") + size("b", b"\x01")

    def test_set_many_is_all_or_nothing_on_a_too_large_item(self, clock: FakeClock) -> None:
        store = make_store(clock, max_bytes=10)
        store.set("a", b"old")
        before = store.stats()
        with pytest.raises(ValueTooLarge):
            store.set_many([("a", b"new", False, None, None), ("b", b"x" * 10, False, None, None)])
        assert store.peek("a").value == b"old"
        assert store.peek("b") is None
        assert store.stats() == before

    def test_set_many_applies_last_write_wins_per_item(self, store: Store) -> None:
        store.set("a", b"live", version=(WALL_MS, 5, "n2"))
        versions = store.set_many(
            [
                ("a", b"older", False, None, (WALL_MS, 4, "n2")),
                ("b", b"new", False, None, (WALL_MS, 1, "n2")),
            ]
        )
        assert versions == [None, (WALL_MS, 1, "n2")]
        assert store.peek("a").value == b"live"
        assert store.peek("b").value == b"new"

    def test_delete_many(self, store: Store) -> None:
        store.set_many([(k, b"1", False, None, None) for k in "abc"])
        assert store.delete_many(["a", "c", "x", "a"]) == 2
        assert [key for chunk in store.scan() for key, _ in chunk] == ["b"]
        assert store.stats()["deletes"] == 2

    def test_clear(self, store: Store) -> None:
        store.set("a", b"1")
        store.set("b", b"2")
        store.get("a")
        store.delete("gone", version=(WALL_MS + 1000, 0, "n2"))
        assert store.clear() == 2
        assert len(store) == 0
        stats = store.stats()
        assert (stats["items"], stats["bytes"], stats["hits"], stats["sets"]) == (0, 0, 1, 2)
        # The tombstone went too: an older replicated write applies again.
        assert store.set("gone", b"1", version=(WALL_MS, 0, "n2")) == (WALL_MS, 0, "n2")

    def test_stats_has_exactly_the_documented_keys(self, clock: FakeClock) -> None:
        store = make_store(clock, max_bytes=1000, max_items=10)
        assert store.stats() == {
            "hits": 0,
            "misses": 0,
            "sets": 0,
            "deletes": 0,
            "evictions": 0,
            "expirations": 0,
            "items": 0,
            "bytes": 0,
            "max_bytes": 1000,
            "max_items": 10,
        }


class TestScan:
    def test_chunks_cover_every_live_entry(self, store: Store, clock: FakeClock) -> None:
        for i in range(7):
            store.set(f"k{i}", str(i).encode())
        store.set("dead", b"x", ttl=1)
        clock.advance(1)
        chunks = list(store.scan(chunk_size=3))
        assert [[key for key, _ in chunk] for chunk in chunks] == [
            ["k0", "k1", "k2"],
            ["k3", "k4", "k5"],
            ["k6"],
        ]
        assert chunks[0][1][1] == store.peek("k1")

    def test_lock_is_free_between_chunks(self, store: Store) -> None:
        for i in range(6):
            store.set(f"k{i}", b"1")
        seen = []
        for chunk in store.scan(chunk_size=2):
            seen.extend(key for key, _ in chunk)
            # Writing here would deadlock if scan held the lock while yielding.
            store.delete("k3")
            store.set("late", b"1")  # not in the snapshot
        assert seen == ["k0", "k1", "k2", "k4", "k5"]

    def test_bad_chunk_size_fails_at_the_call(self, store: Store) -> None:
        with pytest.raises(ValueError, match="chunk_size"):
            store.scan(chunk_size=0)


class TestSweep:
    def test_removes_only_what_is_due(self, store: Store, clock: FakeClock) -> None:
        store.set("short", b"1", ttl=1)
        store.set("long", b"1", ttl=10)
        store.set("forever", b"1")
        assert store.sweep() == 0
        clock.advance(1)
        assert store.sweep() == 1
        assert sorted(key for chunk in store.scan() for key, _ in chunk) == ["forever", "long"]
        assert store.stats()["expirations"] == 1
        assert store.stats()["bytes"] == size("long", b"1") + size("forever", b"1")

    def test_limit(self, store: Store, clock: FakeClock) -> None:
        for i in range(5):
            store.set(f"k{i}", b"1", ttl=1 + i / 10)
        clock.advance(10)
        assert store.sweep(limit=2) == 2
        assert len(store) == 3
        assert store.sweep(limit=0) == 0
        assert store.sweep() == 3
        assert store.stats()["expirations"] == 5

    def test_rewritten_keys_leave_stale_rows_that_are_skipped(
        self, store: Store, clock: FakeClock
    ) -> None:
        store.set("a", b"1", ttl=1)
        store.set("a", b"2", ttl=5)  # the (1001, "a") row is stale now
        store.set("b", b"1", ttl=1)
        store.set("b", b"2")  # no TTL any more
        store.set("c", b"1", ttl=1)
        store.delete("c")
        clock.advance(2)
        assert store.sweep() == 0
        assert store.peek("a").value == b"2"
        assert store.peek("b").value == b"2"
        clock.advance(3)
        assert store.sweep() == 1
        assert store.peek("a") is None

    def test_touch_and_incr_keep_the_sweep_right(self, store: Store, clock: FakeClock) -> None:
        store.set("t", b"1", ttl=1)
        store.touch("t", 3)
        store.set("n", b"1", ttl=2)
        store.incr("n")
        clock.advance(2)
        assert store.sweep() == 1
        assert store.peek("n") is None
        assert store.peek("t") is not None
        clock.advance(1)
        assert store.sweep() == 1
        assert len(store) == 0

    def test_overwrites_keep_one_ring_slot(self, store: Store) -> None:
        for i in range(5000):
            store.set("k", str(i).encode(), ttl=1 + i)
        # White-box: a replaced entry keeps its slot in the eviction ring.
        assert len(store._ring) == 1
        assert store.sweep() == 0

    def test_bounded_sweeps_resume_and_cover_the_ring(self, store: Store, clock: FakeClock) -> None:
        for i in range(10):
            store.set(f"k{i}", b"1", ttl=1 if i % 2 else None)
        clock.advance(2)
        # Four slots at a time: 2, 2, then 1 of the odd keys, wherever the cursor wraps.
        assert [store.sweep(limit=4) for _ in range(3)] == [2, 2, 1]
        assert sorted(k for chunk in store.scan() for k, _ in chunk) == [
            f"k{i}" for i in range(0, 10, 2)
        ]
        assert store.sweep(limit=100) == 0

    def test_deletes_compact_the_ring(self, store: Store) -> None:
        for i in range(5000):
            store.set(f"k{i}", b"1")
        for i in range(0, 5000, 5):  # keep every fifth key
            for j in range(1, 5):
                store.delete(f"k{i + j}")
        # White-box: once free slots pass half the ring (and 1024), it is rebuilt.
        assert len(store._ring) <= 2 * len(store) + 1024
        assert len(store._free) <= len(store._ring) // 2 + 1024
        kept = [f"k{i}" for i in range(0, 5000, 5)]
        assert all(store.peek(k) is not None for k in kept)
        assert len(store) == 1000
        store.set("new", b"1")  # a slot after compaction is still right
        store.delete("k0")
        assert store.peek("new") is not None
        assert store.peek("k5") is not None


# LRU order and the two bounds.


class TestIncrGrowth:
    def test_incr_that_outgrows_the_store_is_refused_and_changes_nothing(
        self, clock: FakeClock
    ) -> None:
        store = make_store(clock, max_bytes=2)  # "k" and one digit, exactly
        store.set("k", b"9")
        with pytest.raises(ValueTooLarge):
            store.incr("k")  # "10" would not fit even alone
        assert store.peek("k").value == b"9"
        assert store.stats()["bytes"] == 2


class TestEntryOverhead:
    """By default an entry costs its key, its value and ``ENTRY_OVERHEAD`` bytes, so that
    ``max_bytes`` bounds the memory a node uses even for tiny entries."""

    def test_default_overhead_is_counted(self, clock: FakeClock) -> None:
        store = Store(clock=clock)
        store.set("k", b"12")
        assert store.stats()["bytes"] == 3 + ENTRY_OVERHEAD
        store.set("k", b"1234")  # a replacement adjusts by the value's change
        assert store.stats()["bytes"] == 5 + ENTRY_OVERHEAD
        store.delete("k")
        assert store.stats()["bytes"] == 0

    def test_overhead_bounds_the_number_of_tiny_entries(self, clock: FakeClock) -> None:
        store = Store(clock=clock, max_bytes=100 * (ENTRY_OVERHEAD + 6))
        for i in range(1000):
            store.set(f"k{i:04d}", b"1")  # 5 + 1 + overhead each
        assert len(store) == 100
        assert store.stats()["evictions"] == 900
        assert store.stats()["bytes"] <= store.max_bytes

    def test_an_entry_larger_than_the_node_names_the_overhead(self, clock: FakeClock) -> None:
        store = Store(clock=clock, max_bytes=ENTRY_OVERHEAD + 5, entry_overhead=ENTRY_OVERHEAD)
        store.set("k", b"1234")  # 1 + 4 + overhead: fits exactly
        with pytest.raises(ValueTooLarge, match=f"and {ENTRY_OVERHEAD} of bookkeeping"):
            store.set("k", b"12345")
        assert store.peek("k").value == b"1234"

    @pytest.mark.parametrize("bad", [-1, True, 1.5, None])
    def test_overhead_must_be_a_natural_number(self, bad: object) -> None:
        with pytest.raises(ValueError, match="entry_overhead"):
            Store(entry_overhead=bad)


class TestClockEviction:
    """Eviction approximates LRU with CLOCK: a read since the hand last passed spares an entry
    once; with no reads, entries go in the order they were written."""

    def test_a_read_entry_gets_a_second_chance_once(self, clock: FakeClock) -> None:
        store = make_store(clock, max_items=3)
        for key in "abc":
            store.set(key, b"1")
        store.get("a")
        store.set("d", b"1")  # the hand clears a's bit and takes b
        store.set("e", b"1")  # then c
        assert sorted(k for chunk in store.scan() for k, _ in chunk) == ["a", "d", "e"]
        store.set("f", b"1")  # a was not read again: it goes now
        assert store.peek("a") is None

    def test_a_hot_key_survives_a_stream_of_new_keys(self, clock: FakeClock) -> None:
        store = make_store(clock, max_items=10)
        for i in range(1000):
            store.set(f"k{i}", b"1")
            store.get("hot") if i else store.set("hot", b"1")
        assert store.peek("hot") is not None
        assert len(store) == 10
        assert store.stats()["evictions"] == 991

    def test_an_expired_entry_goes_before_a_referenced_one(self, clock: FakeClock) -> None:
        store = make_store(clock, max_items=2)
        store.set("a", b"1")
        store.set("b", b"1", ttl=1)
        store.get("a")
        store.get("b")
        clock.advance(1)
        store.set("c", b"1")
        assert store.peek("a") is not None
        assert store.peek("b") is None
        assert (store.stats()["evictions"], store.stats()["expirations"]) == (0, 1)


class TestLru:
    def test_least_recently_used_goes_first(self, clock: FakeClock) -> None:
        store = make_store(clock, max_items=3)
        for key in "abc":
            store.set(key, b"1")
        store.set("d", b"1")
        assert store.peek("a") is None
        assert [key for chunk in store.scan() for key, _ in chunk] == ["b", "c", "d"]
        assert store.stats()["evictions"] == 1

    @pytest.mark.parametrize(
        "refresh",
        [
            lambda s: s.get("a"),
            lambda s: s.get_many(["a"]),
            lambda s: s.set("a", b"2"),
            lambda s: s.cas("a", b"2", s.peek("a").version),
            lambda s: s.incr("a"),
            lambda s: s.touch("a", 100),
        ],
        ids=["get", "get_many", "set", "cas", "incr", "touch"],
    )
    def test_access_refreshes(self, clock: FakeClock, refresh) -> None:
        store = make_store(clock, max_items=3)
        for key in "abc":
            store.set(key, b"1")
        refresh(store)
        store.set("d", b"1")
        assert store.peek("a") is not None
        assert store.peek("b") is None

    def test_peek_and_failed_writes_do_not_refresh(self, clock: FakeClock) -> None:
        store = make_store(clock, max_items=3)
        for key in "abc":
            store.set(key, b"1")
        store.peek("a")
        store.add("a", b"2")
        store.cas("a", b"2", (0, 0, "x"))
        store.set("a", b"2", version=(0, 0, "old"))
        store.set("d", b"1")
        assert store.peek("a") is None

    def test_bytes_bound_counts_keys(self, clock: FakeClock) -> None:
        store = make_store(clock, max_bytes=30)
        store.set("key1", b"12345")  # 4 bytes of key + 5
        assert store.stats()["bytes"] == 9
        store.set("k2", b"1" * 14)  # 16 -> 25
        store.set("k3", b"1" * 3)  # 5 -> 30: fits exactly
        assert store.stats()["evictions"] == 0
        store.set("k4", b"1")  # 3 -> 33: the oldest goes
        assert store.peek("key1") is None
        assert store.stats()["bytes"] == 24
        assert store.stats()["evictions"] == 1

    def test_a_non_ascii_key_counts_twice(self, clock: FakeClock) -> None:
        # CPython keeps a UTF-8 copy inside such a str once it has been encoded.
        store = make_store(clock, max_bytes=30)
        store.set("ключ", b"12345")  # 8 bytes of UTF-8, charged 16, + 5
        assert store.stats()["bytes"] == 21
        store.delete("ключ")
        assert store.stats()["bytes"] == 0

    def test_growing_a_value_evicts_others_not_itself(self, clock: FakeClock) -> None:
        store = make_store(clock, max_bytes=20)
        store.set("a", b"1" * 9)
        store.set("b", b"1" * 9)
        store.set("b", b"1" * 19)  # exactly max_bytes alone
        assert [key for chunk in store.scan() for key, _ in chunk] == ["b"]
        assert store.stats()["bytes"] == 20
        assert store.stats()["evictions"] == 1

    def test_both_bounds_at_once(self, clock: FakeClock) -> None:
        store = make_store(clock, max_bytes=12, max_items=2)
        store.set("a", b"1")
        store.set("b", b"1")
        store.set("c", b"1")  # items bound
        store.set("d", b"1" * 10)  # bytes bound: 2 + 11 > 12
        assert [key for chunk in store.scan() for key, _ in chunk] == ["d"]
        assert store.stats()["evictions"] == 3

    def test_an_expired_victim_counts_as_expiration(self, clock: FakeClock) -> None:
        store = make_store(clock, max_items=1)
        store.set("a", b"1", ttl=1)
        clock.advance(1)
        store.set("b", b"1")
        assert (store.stats()["evictions"], store.stats()["expirations"]) == (0, 1)

    def test_too_large_keeps_the_old_value_and_counters(self, clock: FakeClock) -> None:
        store = make_store(clock, max_bytes=10)
        version = store.set("k", b"old")
        before = store.stats()
        with pytest.raises(ValueTooLarge, match="takes 11 bytes"):
            store.set("k", b"x" * 10)  # 1 + 10 bytes; the key counts
        with pytest.raises(ValueTooLarge):
            store.add("big", b"x" * 20)
        with pytest.raises(ValueTooLarge):
            store.cas("k", b"x" * 20, version)
        with pytest.raises(ValueTooLarge):
            store.set("k", b"x" * 20, version=(WALL_MS + 1, 0, "n2"))
        assert store.peek("k") == Entry(b"old", False, None, version)
        assert store.peek("big") is None
        assert store.stats() == before
        assert store.set("k", b"x" * 9) is not None  # 10 bytes: fits exactly

    def test_bad_bounds_are_refused(self) -> None:
        with pytest.raises(ValueError, match="max_bytes"):
            Store(max_bytes=0)
        with pytest.raises(ValueError, match="max_items"):
            Store(max_items=-1)


# Write versions in the store: last write wins, tombstones.


class TestVersionedWrites:
    def test_newer_explicit_version_applies_older_is_ignored(self, store: Store) -> None:
        assert store.set("k", b"v5", version=(WALL_MS, 5, "n2")) == (WALL_MS, 5, "n2")
        assert store.set("k", b"v4", version=(WALL_MS, 4, "n2")) is None
        assert store.set("k", b"same", version=(WALL_MS, 5, "n2")) is None
        assert store.peek("k") == Entry(b"v5", False, None, (WALL_MS, 5, "n2"))
        assert store.set("k", b"v6", ttl=3, version=(WALL_MS, 5, "n3")) == (WALL_MS, 5, "n3")
        assert store.peek("k") == Entry(b"v6", False, 1003.0, (WALL_MS, 5, "n3"))
        assert store.stats()["sets"] == 2

    def test_explicit_versions_are_observed(self, store: Store) -> None:
        ahead = (WALL_MS + 60_000, 3, "n2")
        assert store.set("k", b"remote", version=ahead) == ahead
        local = store.set("k", b"local")  # must beat the remote write it followed
        assert local == (WALL_MS + 60_000, 4, "n1")
        assert store.delete("k", version=(WALL_MS + 90_000, 0, "n3")) is True
        assert store.set("k", b"local") == (WALL_MS + 90_000, 1, "n1")

    def test_an_expired_entry_does_not_block_an_older_version(
        self, store: Store, clock: FakeClock
    ) -> None:
        store.set("k", b"new", ttl=1, version=(WALL_MS, 9, "n2"))
        clock.advance(1)
        assert store.set("k", b"old", version=(WALL_MS, 1, "n2")) == (WALL_MS, 1, "n2")
        assert store.stats()["expirations"] == 1

    def test_versioned_delete_spares_a_newer_write(self, store: Store) -> None:
        store.set("k", b"new", version=(WALL_MS, 9, "n2"))
        assert store.delete("k", version=(WALL_MS, 9, "n2")) is False
        assert store.delete("k", version=(WALL_MS, 3, "n2")) is False
        assert store.peek("k").value == b"new"
        assert store.delete("k", version=(WALL_MS, 10, "n2")) is True
        assert store.stats()["deletes"] == 1

    def test_tombstone_blocks_resurrection_until_it_expires(
        self, store: Store, clock: FakeClock
    ) -> None:
        store.set("k", b"v1", version=(WALL_MS, 1, "n2"))
        assert store.delete("k", version=(WALL_MS, 5, "n2")) is True
        # A replicated write from before the delete arrives late: refused.
        assert store.set("k", b"v3", version=(WALL_MS, 3, "n3")) is None
        assert store.set_many([("k", b"v4", False, None, (WALL_MS, 4, "n3"))]) == [None]
        assert store.peek("k") is None
        assert (len(store), store.stats()["bytes"]) == (0, 0)  # tombstones take no room
        clock.advance(59.9)
        assert store.set("k", b"v3", version=(WALL_MS, 3, "n3")) is None
        clock.advance(0.1)
        assert store.sweep() == 0  # drops the tombstone; no entry expired
        assert store.set("k", b"v3", version=(WALL_MS, 3, "n3")) == (WALL_MS, 3, "n3")

    def test_tombstone_expires_lazily_too(self, store: Store, clock: FakeClock) -> None:
        store.delete("k", version=(WALL_MS, 5, "n2"))  # absent key: the tombstone still counts
        assert store.set("k", b"old", version=(WALL_MS, 4, "n2")) is None
        clock.advance(60)
        assert store.set("k", b"old", version=(WALL_MS, 4, "n2")) == (WALL_MS, 4, "n2")

    def test_newer_write_after_a_tombstone_applies(self, store: Store) -> None:
        store.delete("k", version=(WALL_MS, 5, "n2"))
        assert store.set("k", b"v6", version=(WALL_MS, 6, "n2")) == (WALL_MS, 6, "n2")
        assert store.delete("k") is True
        # The newer write replaced the tombstone; the unversioned delete left none.
        assert store.set("k", b"v4", version=(WALL_MS, 4, "n2")) == (WALL_MS, 4, "n2")

    def test_an_older_delete_does_not_weaken_a_tombstone(self, store: Store) -> None:
        store.delete("k", version=(WALL_MS, 8, "n2"))
        store.delete("k", version=(WALL_MS, 2, "n2"))
        assert store.set("k", b"v5", version=(WALL_MS, 5, "n2")) is None

    def test_unversioned_delete_leaves_no_tombstone(self, store: Store) -> None:
        store.set("k", b"v1")
        assert store.delete("k") is True
        assert store.set("k", b"old", version=(1, 0, "n2")) == (1, 0, "n2")

    @pytest.mark.parametrize(
        "version", [(1, 2), [1, 2, "n"], (1, "2", "n"), (True, 0, "n"), (1, 2, None), "1-2-n"]
    )
    def test_malformed_versions_are_refused_before_any_change(
        self, store: Store, version: object
    ) -> None:
        items = [("a", b"1", False, None, None), ("b", b"1", False, None, version)]
        with pytest.raises(TypeError, match="version"):
            store.set_many(items)
        with pytest.raises(TypeError, match="version"):
            store.delete("a", version=version)
        assert (len(store), store.stats()["sets"]) == (0, 0)

    def test_delete_many_with_a_version(self, store: Store) -> None:
        store.set("a", b"1", version=(WALL_MS, 1, "n2"))
        store.set("b", b"1", version=(WALL_MS, 9, "n2"))
        assert store.delete_many(["a", "b", "c"], version=(WALL_MS, 5, "n2")) == 1
        assert store.peek("b") is not None
        assert store.set("c", b"1", version=(WALL_MS, 4, "n2")) is None


# Property tests: the store against a plain-dict model, and the bounds under random traffic.

KEYS = st.sampled_from(["a", "b", "ключ", "c-1"])
VALUES = st.sampled_from(
    [b"0", b"7", b"-3", b"9223372036854775806", b"1.5", b'"x"', b" 1", b"\x00\xff", b""]
)
TTLS = st.one_of(st.none(), st.integers(1, 5), st.floats(0.25, 5.0))
# Explicit versions near the HLC's current time, from two other nodes.
MS_OFFSETS = st.sampled_from([-1000, -1, 0, 1, 1000])
COUNTERS = st.integers(0, 3)
PEERS = st.sampled_from(["n0", "n2"])
INTEGER = re.compile(rb"-?[0-9]+")
TOMBSTONE_TTL = 10.0


class StoreMachine(RuleBasedStateMachine):
    """Every operation and its counters against a dict that mirrors the rules in plain code."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.wall = FakeClock(WALL_START)
        hlc = HybridClock("n1", wall=self.wall)
        self.store = Store(clock=self.clock, hlc=hlc, tombstone_ttl=TOMBSTONE_TTL, entry_overhead=0)
        self.model: dict[str, Entry] = {}
        self.tombstones: dict[str, tuple[Version, float]] = {}
        self.counts: Counter[str] = Counter()
        self.newest: Version = (0, 0, "")  # the newest version the store has seen

    # Model helpers.
    def live(self, key: str) -> Entry | None:
        entry = self.model.get(key)
        if entry is not None and entry.expires_at is not None and self.clock() >= entry.expires_at:
            del self.model[key]
            self.counts["expirations"] += 1
            return None
        return entry

    def fresh(self, version: Version | None) -> Version:
        """A version the store made itself must beat everything it had seen."""
        assert version is not None
        assert version > self.newest
        self.newest = version
        return version

    def seen(self, version: Version) -> None:
        self.newest = max(self.newest, version)

    def put(self, key: str, value: bytes, binary: bool, ttl: float | None, v: Version) -> None:
        expires_at = None if ttl is None else self.clock() + ttl
        self.model[key] = Entry(value, binary, expires_at, v)
        self.tombstones.pop(key, None)
        self.counts["sets"] += 1

    def remote_version(self, offset: int, counter: int, node: str) -> Version:
        return (int(self.wall() * 1000) + offset, counter, node)

    # Rules.
    @rule(key=KEYS, value=VALUES, binary=st.booleans(), ttl=TTLS)
    def set(self, key: str, value: bytes, binary: bool, ttl: float | None) -> None:
        version = self.fresh(self.store.set(key, value, binary=binary, ttl=ttl))
        self.put(key, value, binary, ttl, version)

    @rule(key=KEYS, value=VALUES, ttl=TTLS, offset=MS_OFFSETS, counter=COUNTERS, node=PEERS)
    def set_versioned(
        self, key: str, value: bytes, ttl: float | None, offset: int, counter: int, node: str
    ) -> None:
        version = self.remote_version(offset, counter, node)
        result = self.store.set(key, value, ttl=ttl, version=version)
        self.seen(version)
        entry = self.live(key)
        tombstone = self.tombstones.get(key)
        if (entry is not None and version <= entry.version) or (
            tombstone is not None and self.clock() < tombstone[1] and version <= tombstone[0]
        ):
            assert result is None
        else:
            assert result == version
            self.put(key, value, False, ttl, version)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def add(self, key: str, value: bytes, ttl: float | None) -> None:
        result = self.store.add(key, value, ttl=ttl)
        if self.live(key) is not None:
            assert result is None
        else:
            self.put(key, value, False, ttl, self.fresh(result))

    @rule(key=KEYS, value=VALUES, current=st.booleans())
    def cas(self, key: str, value: bytes, current: bool) -> None:
        entry = self.model.get(key)
        expected = entry.version if current and entry is not None else (1, 0, "nobody")
        result = self.store.cas(key, value, expected)
        entry = self.live(key)
        if entry is None or entry.version != expected:
            assert result is None
        else:
            self.put(key, value, False, None, self.fresh(result))

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        removed = self.live(key) is not None
        assert self.store.delete(key) is removed
        if removed:
            del self.model[key]
            self.counts["deletes"] += 1

    @rule(key=KEYS, offset=MS_OFFSETS, counter=COUNTERS, node=PEERS)
    def delete_versioned(self, key: str, offset: int, counter: int, node: str) -> None:
        version = self.remote_version(offset, counter, node)
        removed = self.store.delete(key, version=version)
        self.seen(version)
        now = self.clock()
        tombstone = self.tombstones.get(key)
        if tombstone is None or now >= tombstone[1] or version > tombstone[0]:
            self.tombstones[key] = (version, now + TOMBSTONE_TTL)
        entry = self.live(key)
        assert removed is (entry is not None and entry.version < version)
        if removed:
            del self.model[key]
            self.counts["deletes"] += 1

    @rule(key=KEYS, delta=st.integers(-5, 5) | st.sampled_from([2**62, -(2**63)]))
    def incr(self, key: str, delta: int) -> None:
        entry = self.live(key)
        if entry is None:
            assert self.store.incr(key, delta) is None
            return
        if entry.binary or not INTEGER.fullmatch(entry.value):
            with pytest.raises(NotInteger):
                self.store.incr(key, delta)
            return
        result = int(entry.value) + delta
        if not -(2**63) <= result < 2**63:
            with pytest.raises(IntegerOverflow):
                self.store.incr(key, delta)
            return
        value, version = self.store.incr(key, delta)
        assert value == result
        self.model[key] = Entry(str(result).encode(), False, entry.expires_at, self.fresh(version))
        self.counts["sets"] += 1

    @rule(key=KEYS, ttl=TTLS)
    def touch(self, key: str, ttl: float | None) -> None:
        touched = self.store.touch(key, ttl)
        entry = self.live(key)
        assert touched is (entry is not None)
        if entry is not None:
            assert self.store.peek(key).version == entry.version  # a touch keeps the version
            expires_at = None if ttl is None else self.clock() + ttl
            self.model[key] = Entry(entry.value, entry.binary, expires_at, entry.version)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        entry = self.live(key)
        self.counts["hits" if entry is not None else "misses"] += 1
        assert self.store.get(key) == entry

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[str]) -> None:
        found = self.store.get_many(keys)
        expected = {}
        for key in keys:
            entry = self.live(key)
            self.counts["hits" if entry is not None else "misses"] += 1
            if entry is not None:
                expected[key] = entry
        assert found == expected

    @rule(key=KEYS)
    def peek(self, key: str) -> None:
        entry = self.model.get(key)
        if entry is not None and entry.expires_at is not None and self.clock() >= entry.expires_at:
            entry = None
        assert self.store.peek(key) == entry

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.5, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall.advance(seconds)

    @rule()
    def sweep(self) -> None:
        now = self.clock()
        due = [k for k, e in self.model.items() if e.expires_at is not None and now >= e.expires_at]
        for key in due:
            del self.model[key]
        self.counts["expirations"] += len(due)
        self.tombstones = {k: t for k, t in self.tombstones.items() if now < t[1]}
        assert self.store.sweep() == len(due)

    @invariant()
    def matches_the_model(self) -> None:
        stats = self.store.stats()
        for name in ("hits", "misses", "sets", "deletes", "expirations"):
            assert stats[name] == self.counts[name], name
        assert stats["evictions"] == 0
        assert stats["items"] == len(self.store) == len(self.model)
        assert stats["bytes"] == sum(size(k, e.value) for k, e in self.model.items())
        live = {k: e for chunk in self.store.scan(chunk_size=2) for k, e in chunk}
        now = self.clock()
        assert live == {
            k: e for k, e in self.model.items() if e.expires_at is None or now < e.expires_at
        }


StoreMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestStoreMachine = StoreMachine.TestCase


OPS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from("abcdefgü"), st.integers(0, 40), TTLS),
    st.tuples(st.just("add"), st.sampled_from("abcdefgü"), st.integers(0, 40), TTLS),
    st.tuples(st.just("set_many"), st.lists(st.sampled_from("abcdefgü"), max_size=4)),
    st.tuples(st.just("get"), st.sampled_from("abcdefgü")),
    st.tuples(st.just("incr"), st.sampled_from("abcdefgü"), st.integers(-(10**6), 10**6)),
    st.tuples(st.just("touch"), st.sampled_from("abcdefgü"), TTLS),
    st.tuples(st.just("delete"), st.sampled_from("abcdefgü")),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0])),
    st.tuples(st.just("check")),
)


def check_accounting(store: Store) -> None:
    """bytes and items equal what the entries add up to (sweep first so scan sees them all)."""
    store.sweep()
    entries = [item for chunk in store.scan(chunk_size=3) for item in chunk]
    stats = store.stats()
    assert stats["items"] == len(entries) == len(store)
    assert stats["bytes"] == sum(size(key, entry.value) for key, entry in entries)


@settings(max_examples=150, deadline=None)
@given(max_items=st.integers(1, 6), max_bytes=st.integers(4, 64), ops=st.lists(OPS, max_size=50))
def test_bounds_hold_under_random_traffic(max_items: int, max_bytes: int, ops: list) -> None:
    clock = FakeClock()
    store = make_store(clock, max_bytes=max_bytes, max_items=max_items)
    for op in ops:
        name, *args = op
        with suppress(StoreError):  # too large, not an integer, overflow: all change nothing
            if name in ("set", "add"):
                key, length, ttl = args
                getattr(store, name)(key, b"5" * length, ttl=ttl)
            elif name == "set_many":
                store.set_many([(key, b"12", False, None, None) for key in args[0]])
            elif name == "get":
                store.get(args[0])
            elif name == "incr":
                store.incr(*args)
            elif name == "touch":
                store.touch(*args)
            elif name == "delete":
                store.delete(args[0])
            elif name == "advance":
                clock.advance(args[0])
            else:
                check_accounting(store)
        stats = store.stats()
        assert stats["items"] <= max_items
        assert stats["bytes"] <= max_bytes
    check_accounting(store)


# Concurrency: the lock makes read-modify-write operations atomic.

THREADS = 8


@pytest.fixture
def busy_switching():
    """Switch threads far more often than the default 5 ms, to give races a chance."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_together(worker, count: int = THREADS) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def start(index: int) -> None:
        barrier.wait()
        try:
            worker(index)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.usefixtures("busy_switching")
def test_incr_is_atomic() -> None:
    store = Store()
    store.set("hits", b"0")
    per_thread = 2000

    def worker(index: int) -> None:
        for _ in range(per_thread):
            store.incr("hits", 1 if index % 2 else 2)

    run_together(worker)
    expected = per_thread * (THREADS // 2) * (1 + 2)
    assert store.peek("hits").value == str(expected).encode()
    assert store.stats()["sets"] == 1 + per_thread * THREADS


@pytest.mark.usefixtures("busy_switching")
def test_add_is_atomic() -> None:
    store = Store()
    keys = [f"lock:{i}" for i in range(300)]
    wins: list[list[str]] = [[] for _ in range(THREADS)]

    def worker(index: int) -> None:
        for key in keys:
            if store.add(key, str(index).encode()) is not None:
                wins[index].append(key)

    run_together(worker)
    winners = Counter(key for won in wins for key in won)
    assert winners == Counter(keys)  # exactly one winner per key
    for index, won in enumerate(wins):
        for key in won:
            assert store.peek(key).value == str(index).encode()
    assert store.stats()["sets"] == len(keys)
