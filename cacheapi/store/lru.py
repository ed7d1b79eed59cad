"""The node's in-memory store: bounded by bytes and items, with per-key TTLs and versions.

Modelled on Django's locmem cache: one lock guards all state, public methods take it and the
private helpers assume it is held. Values arrive already encoded (JSON text, or raw bytes when
``binary``) so the store counts their real size and never parses them, except in ``incr``.
Every write gets a version from a hybrid logical clock (see ``versions.py``); replicated writes
bring their own and lose to anything newer, and versioned deletes leave a tombstone for a while
so that a late, older write cannot bring the key back.

Memory comes first: an entry is one packed record (``records.py``) in a dict, and eviction is
CLOCK, the LRU approximation memcached and Redis also make: each entry has a slot in a ring
and a reference bit that a read or write sets; the hand clears set bits and evicts the first
entry whose bit is clear (or that has expired). An ``OrderedDict`` gives exact LRU order but
costs ~50 bytes more per entry; with no reads in between, CLOCK evicts in write order, and an
entry read since the hand last passed is spared. Sizes count the key, the value and
``entry_overhead`` bytes of bookkeeping, so ``max_bytes`` bounds the memory actually used.
"""

import math
import re
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cacheapi.store import records
from cacheapi.store.records import BINARY, HEADER_SIZE, NEVER, NodeNames
from cacheapi.store.versions import HybridClock, Version, check_range

# What incr accepts: JSON integer text as written by our encoder (no spaces, no floats).
_INTEGER_RE = re.compile(rb"-?[0-9]+")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INT64_DIGITS = 19
# Bookkeeping per entry beyond its key and value bytes, measured on CPython 3.11 (x86-64):
# the key's str header (49), the record's bytes header (33) and header (27), allocator
# rounding (~12), the dict slot (~30 at its usual fill) and the ring slot and bit (~9).
ENTRY_OVERHEAD = 160
# The ring is compacted once more than half of it (and more than this many slots) is free.
_COMPACT_MIN = 1024


def _pair(value: bytes, binary: bool) -> tuple[bytes, bool]:
    return value, binary


class StoreError(Exception):
    """Base of the store's errors; the API maps each one to a status in ``errors.py``."""


class ValueTooLarge(StoreError):
    """The entry (key plus value) can never fit in ``max_bytes``; nothing was changed."""


class NotInteger(StoreError):
    """``incr`` on a binary value or on JSON that is not an integer."""


class IntegerOverflow(StoreError):
    """``incr`` would leave the signed 64-bit range; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored value. Immutable: writes replace entries, so callers may keep one unlocked."""

    value: bytes
    binary: bool
    expires_at: float | None
    version: Version


@dataclass(frozen=True, slots=True)
class Hit:
    """A value as read: its bytes, whether binary, the seconds it has left (None: no expiry)
    and its version. What the router returns, whichever node the value came from."""

    value: bytes
    binary: bool
    ttl: float | None
    version: Version


# key, value, binary, ttl, version: one write of ``set_many``.
SetItem = tuple[str, bytes, bool, float | None, Version | None]


def _check_ttl(ttl: float | None) -> None:
    """Refuse anything but None or a positive finite number of seconds."""
    if ttl is None:
        return
    if isinstance(ttl, bool):
        raise ValueError("ttl must be a number of seconds, not a boolean.")
    if not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}.")
    try:
        seconds = float(ttl)
    except OverflowError:
        raise ValueError(f"ttl {ttl} is too large.") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"ttl must be positive and finite, not {ttl!r}.")


def _check_version(version: Version | None) -> None:
    """Refuse a malformed explicit version before anything changes (set_many is all-or-nothing)."""
    if version is None:
        return
    if not (
        isinstance(version, tuple)
        and len(version) == 3
        and type(version[0]) is int
        and type(version[1]) is int
        and isinstance(version[2], str)
    ):
        raise TypeError(f"version must be a (ms, counter, node) tuple, not {version!r}.")
    check_range(version)


def _deadline(now: float, ttl: float | None) -> float:
    return NEVER if ttl is None else now + ttl


def _key_cost(key: str) -> int:
    """Bytes a key is charged: its UTF-8 length, twice for a non-ASCII key (CPython caches a
    UTF-8 copy inside the str once a C encoder such as orjson has written it)."""
    size = len(key.encode("utf-8"))
    return size if key.isascii() else 2 * size


class Store:
    """Thread-safe cache of encoded values, bounded by ``max_bytes`` and ``max_items``.

    ``clock`` (``time.monotonic`` by default) measures TTLs, so wall-clock steps cannot
    expire everything at once; tests inject a fake one and move it. ``hlc`` makes versions;
    when it is given, ``node`` is ignored. An entry's size is its key (see ``_key_cost``), its
    value and ``entry_overhead``.
    """

    def __init__(
        self,
        *,
        max_bytes: int = 256 * 2**20,
        max_items: int = 0,
        node: str = "local",
        clock: Callable[[], float] = time.monotonic,
        hlc: HybridClock | None = None,
        tombstone_ttl: float = 60.0,
        entry_overhead: int = ENTRY_OVERHEAD,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}.")
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
            raise ValueError(f"max_items must be 0 (unbounded) or more, not {max_items!r}.")
        if isinstance(entry_overhead, bool) or not isinstance(entry_overhead, int):
            raise ValueError(f"entry_overhead must be an integer, not {entry_overhead!r}.")
        if entry_overhead < 0:
            raise ValueError(f"entry_overhead must be 0 or more, not {entry_overhead!r}.")
        _check_ttl(tombstone_ttl)
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.entry_overhead = entry_overhead
        self.clock = clock
        self.hlc = hlc if hlc is not None else HybridClock(node)
        self.node = self.hlc.node
        self.tombstone_ttl = tombstone_ttl
        self._lock = threading.Lock()
        self._data: dict[str, bytes] = {}  # key -> packed record, in first-write order
        self._names = NodeNames()
        # The CLOCK ring: the key in each slot (None: free), its reference bit, the free slots
        # (most recently freed last, so a new key lands where the hand just evicted).
        self._ring: list[str | None] = []
        self._refs = bytearray()
        self._free = array("L")
        self._hand = 0
        self._sweep_at = 0  # where the next sweep resumes in the ring
        # key -> (version, expires_at). Equal TTLs and a monotonic clock keep it in expiry order.
        self._tombstones: OrderedDict[str, tuple[Version, float]] = OrderedDict()
        self._bytes = 0
        self._layout = 0  # bumped when slots are renumbered (entries_from's walkers restart)
        self._hits = self._misses = self._sets = self._deletes = 0
        self._evictions = self._expirations = 0

    def get(self, key: str) -> Entry | None:
        """The live entry, counted as a hit or miss and marked recently used."""
        with self._lock:
            record = self._lookup(key, self.clock())
            return None if record is None else self._entry(record)

    def read(self, key: str) -> Hit | None:
        """``get`` as a Hit: the value with the seconds it has left."""
        with self._lock:
            now = self.clock()
            record = self._lookup(key, now)
            if record is None:
                return None
            binary, expires_at, version = self._names.unpack(record)
        ttl = None if expires_at == NEVER else expires_at - now
        return Hit(records.value(record), binary, ttl, version)

    def peek(self, key: str) -> Entry | None:
        """Like ``get`` but leaves no trace (no counters, no reference bit): for checks and
        migration."""
        with self._lock:
            record = self._data.get(key)
            if record is None or self.clock() >= records.deadline(record):
                return None
            return self._entry(record)

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The live entries among ``keys``; each key counts as a hit or a miss."""
        keys = list(keys)  # consume the iterable before taking the lock
        with self._lock:
            now = self.clock()
            found = {key: self._lookup(key, now) for key in keys}
            return {key: self._entry(rec) for key, rec in found.items() if rec is not None}

    def values_many(
        self, keys: Iterable[str], wrap: Callable[[bytes, bool], Any] = _pair
    ) -> dict[str, Any]:
        """``get_many`` for callers that need only the values: ``wrap(bytes, binary)`` of each
        live key ((bytes, binary) by default; the router passes its wire encoder, so a batch
        is built in one pass). The batch read path: ~3x cheaper per key than building entries,
        so it does what ``_lookup`` does (lazy expiry, reference bit, hit and miss counts)
        inline, with one header unpack per key."""
        keys = list(keys)
        found: dict[str, Any] = {}
        with self._lock:
            now = self.clock()
            data, refs = self._data, self._refs
            unpack, start = records.HEADER.unpack_from, HEADER_SIZE
            for key in keys:
                record = data.get(key)
                if record is None:
                    continue
                flags, expires_at, _ms, _counter, _node, at = unpack(record)
                if now >= expires_at:
                    self._remove(key)
                    self._expirations += 1
                    continue
                refs[at] = 1
                found[key] = wrap(record[start:], (flags & BINARY) == BINARY)
            self._hits += len(found)
            self._misses += len(keys) - len(found)
        return found

    def remaining(self, entry: Entry) -> float | None:
        """Seconds ``entry`` has left (<= 0 once due), or None if it never expires."""
        return None if entry.expires_at is None else entry.expires_at - self.clock()

    def set(
        self,
        key: str,
        value: bytes,
        *,
        binary: bool = False,
        ttl: float | None = None,
        version: Version | None = None,
    ) -> Version | None:
        """Store ``value``; returns its version, or None when ``version`` lost to a newer one.

        An explicit ``version`` comes from replication or migration: it applies only if newer
        than both the live entry and any tombstone, so replicas converge on the last write.
        """
        size = self._validate(key, value, ttl, version)
        with self._lock:
            return self._set(key, value, binary, ttl, version, size, self.clock())

    def set_many(self, items: Iterable[SetItem]) -> list[Version | None]:
        """``set`` for each item under one lock hold; all are checked first, so a too-large
        item raises ValueTooLarge before anything is written."""
        checked = [
            (key, value, binary, ttl, version, self._validate(key, value, ttl, version))
            for key, value, binary, ttl, version in items
        ]
        with self._lock:
            now = self.clock()
            return [self._set(*item, now) for item in checked]

    def add(
        self, key: str, value: bytes, *, binary: bool = False, ttl: float | None = None
    ) -> Version | None:
        """Store ``value`` only if the key is absent (or expired); None if it is present."""
        size = self._validate(key, value, ttl)
        with self._lock:
            now = self.clock()
            if self._live(key, now) is not None:
                return None
            return self._set(key, value, binary, ttl, None, size, now)

    def cas(
        self,
        key: str,
        value: bytes,
        expected: Version,
        *,
        binary: bool = False,
        ttl: float | None = None,
    ) -> Version | None:
        """Store ``value`` only if the live entry still has version ``expected``; else None."""
        size = self._validate(key, value, ttl)
        with self._lock:
            now = self.clock()
            record = self._live(key, now)
            if record is None or self._names.unpack(record)[2] != expected:
                return None
            return self._set(key, value, binary, ttl, None, size, now)

    def incr(self, key: str, delta: int = 1) -> tuple[int, Version] | None:
        """Add ``delta`` to an integer value in place of a racy read-modify-write by clients.

        Returns the new value and version, or None if the key is absent. The TTL keeps its
        deadline, so a rate-limit window does not stretch with every hit.
        """
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}.")
        with self._lock:
            now = self.clock()
            record = self._live(key, now)
            if record is None:
                return None
            binary, expires_at, _version = self._names.unpack(record)
            current = records.value(record)
            if binary or not _INTEGER_RE.fullmatch(current):
                raise NotInteger(f"The value of {key!r} is not an integer.")
            # More digits than int64 has: refuse before int() meets a huge string.
            if len(current.lstrip(b"-").lstrip(b"0")) > _INT64_DIGITS:
                raise IntegerOverflow(f"The value of {key!r} is outside the 64-bit range.")
            result = int(current) + delta
            if not _INT64_MIN <= result <= _INT64_MAX:
                raise IntegerOverflow(f"Incrementing {key!r} would leave the 64-bit range.")
            value = str(result).encode()
            size = self._validate(key, value, None)  # only a tiny max_bytes could refuse it
            version = self.hlc.now()
            self._write(key, value, False, expires_at, version, size, now)
            self._sets += 1
            return result, version

    def touch(self, key: str, ttl: float | None) -> bool:
        """Give a live entry a new TTL (None = never expires); False if absent.

        The value and its version stay: a touch says nothing about which value is newest, so
        a replica that missed a write must not have its older value re-stamped newer by a
        touch (a replicated write's copy, or a hint, still replaces it). Not counted as a set.
        """
        _check_ttl(ttl)
        with self._lock:
            now = self.clock()
            record = self._live(key, now)
            if record is None:
                return False
            binary, _, version = self._names.unpack(record)
            value = records.value(record)
            self._write(key, value, binary, _deadline(now, ttl), version, 0, now)
            return True

    def delete(self, key: str, *, version: Version | None = None) -> bool:
        """Remove the key; True if a live entry was removed.

        With ``version`` (replication), an entry written after it survives, and a tombstone
        remembers the delete for ``tombstone_ttl`` seconds to block older replicated sets.
        """
        _check_version(version)
        with self._lock:
            return self._delete(key, version, self.clock())

    def delete_many(self, keys: Iterable[str], *, version: Version | None = None) -> int:
        """``delete`` for each key under one lock hold; returns how many live entries went."""
        _check_version(version)
        keys = list(keys)
        with self._lock:
            now = self.clock()
            return sum(self._delete(key, version, now) for key in keys)

    def discard(self, entries: Iterable[tuple[str, Version]]) -> int:
        """Let go of entries handed off to other nodes: each key is removed only if it still
        has the given version (a newer write meanwhile stays). Not a delete: no tombstone, not
        counted as one. Returns how many went."""
        gone = 0
        with self._lock:
            now = self.clock()
            for key, version in entries:
                record = self._live(key, now)
                if record is not None and self._names.unpack(record)[2] == version:
                    self._remove(key)
                    gone += 1
            if gone:
                self._compact_if_sparse()
        return gone

    def clear(self) -> int:
        """Drop every entry and tombstone; returns the number of entries. Counters stay."""
        with self._lock:
            removed = len(self._data)
            self._data = {}
            self._tombstones.clear()
            self._ring, self._refs, self._free = [], bytearray(), array("L")
            self._hand = self._sweep_at = 0
            self._bytes = 0
            self._layout += 1
            return removed

    def scan(self, chunk_size: int = 500) -> Iterator[list[tuple[str, Entry]]]:
        """Walk all live entries in chunks, for migration, without holding the lock throughout.

        The key list is a snapshot; each chunk is looked up under the lock, so keys deleted or
        expired meanwhile are skipped and writes made meanwhile may or may not be seen.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, not {chunk_size!r}.")
        with self._lock:
            keys = list(self._data)

        def chunks() -> Iterator[list[tuple[str, Entry]]]:
            for start in range(0, len(keys), chunk_size):
                with self._lock:
                    now = self.clock()
                    chunk = []
                    for key in keys[start : start + chunk_size]:
                        record = self._data.get(key)
                        if record is not None and now < records.deadline(record):
                            chunk.append((key, self._entry(record)))
                if chunk:
                    yield chunk

        return chunks()  # a nested generator, so a bad chunk_size fails at the call

    def entries_from(
        self, cursor: int, count: int
    ) -> tuple[list[tuple[str, Entry]], int | None, int]:
        """Live entries in ring slots ``cursor`` to ``cursor + count``: (entries, the next
        cursor or None at the end, the layout number).

        A stateless cursor for scans that span many calls (a joining node pulling its keys
        from a peer). Keys keep their slot while they live, so a walk sees every key that
        lived throughout it; the layout number changes when the ring is rebuilt (compaction,
        clear), and a walker that sees it change starts again."""
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"cursor must be a non-negative integer, not {cursor!r}.")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, not {count!r}.")
        with self._lock:
            now = self.clock()
            ring, data = self._ring, self._data
            end = min(cursor + count, len(ring))
            found = []
            for key in ring[cursor:end]:
                if key is None:
                    continue
                record = data[key]
                if now < records.deadline(record):
                    found.append((key, self._entry(record)))
            return found, (end if end < len(ring) else None), self._layout

    def sweep(self, limit: int | None = None) -> int:
        """Remove expired entries from the next ``limit`` ring slots (every slot when None),
        and expired tombstones; returns the number of entries expired.

        Lazy expiry alone would keep keys that are never read again; a periodic sweep frees
        their memory. Each sweep resumes where the last one stopped, so a bounded sweep keeps
        the lock short and successive ones cover the whole store.
        """
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"limit must be None or 0 or more, not {limit!r}.")
        with self._lock:
            now = self.clock()
            ring, data = self._ring, self._data
            visits = len(ring) if limit is None else min(limit, len(ring))
            expired = 0
            at = self._sweep_at
            for _ in range(visits):
                if at >= len(ring):
                    at = 0
                key = ring[at]
                at += 1
                if key is not None and now >= records.deadline(data[key]):
                    self._remove(key)
                    expired += 1
            self._sweep_at = at
            self._expirations += expired
            dropped = 0
            while self._tombstones and (limit is None or dropped < limit):
                key, (_version, expires_at) = next(iter(self._tombstones.items()))
                if now < expires_at:
                    break
                del self._tombstones[key]
                dropped += 1
            self._compact_if_sparse()
            return expired

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "sets": self._sets,
                "deletes": self._deletes,
                "evictions": self._evictions,
                "expirations": self._expirations,
                "items": len(self._data),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "max_items": self.max_items,
            }

    def __len__(self) -> int:
        """Entries held, including expired ones not yet swept or read."""
        with self._lock:
            return len(self._data)

    def __repr__(self) -> str:
        return f"<Store node={self.node!r} items={len(self._data)} bytes={self._bytes}>"

    # Private helpers: the caller holds self._lock, except for _validate.

    def _validate(
        self, key: str, value: bytes, ttl: float | None, version: Version | None = None
    ) -> int:
        """Check a write's arguments before anything changes; returns the entry's size.

        Needs no lock: it reads only settings that never change.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}.")
        if not isinstance(value, bytes):
            raise TypeError(f"value must be encoded bytes, not {type(value).__name__}.")
        _check_ttl(ttl)
        _check_version(version)
        if version is not None and not self._names.knows(version[2]):
            raise ValueError(f"version {version!r} names one node too many.")
        size = _key_cost(key) + len(value) + self.entry_overhead
        if size > self.max_bytes:
            raise ValueTooLarge(
                f"The entry takes {size} bytes (key, value and {self.entry_overhead} of "
                f"bookkeeping); this node holds {self.max_bytes}."
            )
        return size

    def _entry(self, record: bytes) -> Entry:
        binary, expires_at, version = self._names.unpack(record)
        return Entry(
            records.value(record), binary, None if expires_at == NEVER else expires_at, version
        )

    def _live(self, key: str, now: float) -> bytes | None:
        """The key's record unless absent or expired; expires it lazily. Lock held."""
        record = self._data.get(key)
        if record is not None and now >= records.deadline(record):
            self._remove(key)
            self._expirations += 1
            return None
        return record

    def _lookup(self, key: str, now: float) -> bytes | None:
        """``_live`` for reads: counts a hit or miss, sets the reference bit. Lock held."""
        record = self._live(key, now)
        if record is None:
            self._misses += 1
            return None
        self._hits += 1
        self._refs[records.slot(record)] = 1
        return record

    def _set(
        self,
        key: str,
        value: bytes,
        binary: bool,
        ttl: float | None,
        version: Version | None,
        size: int,
        now: float,
    ) -> Version | None:
        """Write a validated value, applying last-write-wins to explicit versions. Lock held."""
        if version is None:
            version = self.hlc.now()
        else:
            self.hlc.observe(version)
            record = self._live(key, now)
            if record is not None and version <= self._names.unpack(record)[2]:
                return None
            tombstone = self._tombstones.get(key)
            if tombstone is not None and now < tombstone[1] and version <= tombstone[0]:
                return None
        self._write(key, value, binary, _deadline(now, ttl), version, size, now)
        self._sets += 1
        return version

    def _write(
        self,
        key: str,
        value: bytes,
        binary: bool,
        expires_at: float,
        version: Version,
        size: int,
        now: float,
    ) -> None:
        """Put the entry in, marked recently used, evicting others to fit. Lock held.

        ``size`` is only used for a new key; a replaced one adjusts by the value's change.
        A new key makes room first, then takes the slot the hand freed last.
        """
        old = self._data.get(key)
        if old is None:
            self._make_room(size, None, now)
            at = self._take_slot(key)
            self._data[key] = self._names.pack(value, binary, expires_at, version, at)
            self._bytes += size
        else:
            at = records.slot(old)
            self._data[key] = self._names.pack(value, binary, expires_at, version, at)
            self._refs[at] = 1
            self._bytes += len(value) - records.value_size(old)
            self._make_room(0, key, now)
        # Every write is newer than any tombstone (the clock observed it), so drop it.
        self._tombstones.pop(key, None)

    def _take_slot(self, key: str) -> int:
        if self._free:
            at = self._free.pop()
            self._ring[at] = key
            self._refs[at] = 0
            return at
        if len(self._ring) > records.MAX_SLOT:
            raise ValueTooLarge("The store holds as many entries as it can index.")
        self._ring.append(key)
        self._refs.append(0)
        return len(self._ring) - 1

    def _remove(self, key: str) -> None:
        """Take the key out and release its bytes and slot; the caller counts why. Lock held."""
        record = self._data.pop(key)
        at = records.slot(record)
        self._ring[at] = None
        self._refs[at] = 0
        self._free.append(at)
        self._bytes -= _key_cost(key) + records.value_size(record) + self.entry_overhead

    def _delete(self, key: str, version: Version | None, now: float) -> bool:
        """One delete, versioned or not, as ``delete`` describes. Lock held."""
        if version is not None:
            self.hlc.observe(version)
            tombstone = self._tombstones.get(key)
            if tombstone is None or now >= tombstone[1] or version > tombstone[0]:
                self._tombstones[key] = (version, now + self.tombstone_ttl)
                self._tombstones.move_to_end(key)
        record = self._live(key, now)
        if record is None or (version is not None and self._names.unpack(record)[2] >= version):
            return False
        self._remove(key)
        self._deletes += 1
        self._compact_if_sparse()
        return True

    def _make_room(self, size: int, keep: str | None, now: float) -> None:
        """Evict until ``size`` more bytes (and, for a new key, one more item) fit, sparing
        ``keep``. Lock held. The hand clears reference bits as it passes and takes the first
        entry whose bit was clear; an expired one goes whatever its bit, counted as an
        expiration. ``_validate`` guarantees the entry fits alone, so this ends: within two
        turns of the hand (one to clear bits, one to evict), or it is a bug, raised rather
        than spun on with the lock held.
        """
        data, ring, refs = self._data, self._ring, self._refs
        items = len(data) + (keep is None)
        idle = 0
        while self._bytes + size > self.max_bytes or (self.max_items and items > self.max_items):
            idle += 1
            if idle > 2 * len(ring) + 1:
                raise RuntimeError("the store cannot make room: an entry larger than max_bytes")
            at = self._hand
            self._hand = at + 1 if at + 1 < len(ring) else 0
            key = ring[at]
            if key is None or key == keep:
                continue
            expired = now >= records.deadline(data[key])
            if refs[at] and not expired:
                refs[at] = 0
                continue
            self._remove(key)
            items -= 1
            idle = 0
            if expired:
                self._expirations += 1
            else:
                self._evictions += 1

    def _compact_if_sparse(self) -> None:
        """Rebuild the ring without free slots once they are more than half of it, keeping the
        order from the hand on, so eviction does not walk a ring of mostly empty slots. Lock
        held; rewrites every record, which the many deletes before it pay for."""
        ring = self._ring
        if len(self._free) <= _COMPACT_MIN or 2 * len(self._free) <= len(ring):
            return
        order = [k for k in ring[self._hand :] + ring[: self._hand] if k is not None]
        refs = bytearray(self._refs[records.slot(self._data[k])] for k in order)
        for at, key in enumerate(order):
            self._data[key] = records.with_slot(self._data[key], at)
        self._ring, self._refs, self._free = list(order), refs, array("L")
        self._hand = self._sweep_at = 0
        self._layout += 1
