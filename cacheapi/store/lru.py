"""The node's in-memory store: an LRU bounded by bytes and items, with per-key TTLs and versions.

Modelled on Django's locmem cache: one lock guards all state, public methods take it and the
private helpers assume it is held. Values arrive already encoded (JSON text, or raw bytes when
``binary``) so the store counts their real size and never parses them, except in ``incr``.
Every write gets a version from a hybrid logical clock (see ``versions.py``); replicated writes
bring their own and lose to anything newer, and versioned deletes leave a tombstone for a while
so that a late, older write cannot bring the key back.
"""

import heapq
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from cacheapi.store.versions import HybridClock, Version

# What incr accepts: JSON integer text as written by our encoder (no spaces, no floats).
_INTEGER_RE = re.compile(rb"-?[0-9]+")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INT64_DIGITS = 19
# Stale expiry-heap rows tolerated beyond 2 * len(store) before the heap is rebuilt.
_HEAP_SLACK = 1024


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


def _deadline(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl


def _expired(entry: Entry, now: float) -> bool:
    return entry.expires_at is not None and now >= entry.expires_at


class Store:
    """Thread-safe LRU of encoded values, bounded by ``max_bytes`` and ``max_items``.

    ``clock`` (``time.monotonic`` by default) measures TTLs, so wall-clock steps cannot
    expire everything at once; tests inject a fake one and move it. ``hlc`` makes versions;
    when it is given, ``node`` is ignored. An entry's size is its UTF-8 key plus its value.
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
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}.")
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
            raise ValueError(f"max_items must be 0 (unbounded) or more, not {max_items!r}.")
        _check_ttl(tombstone_ttl)
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.clock = clock
        self.hlc = hlc if hlc is not None else HybridClock(node)
        self.node = self.hlc.node
        self.tombstone_ttl = tombstone_ttl
        self._lock = threading.Lock()
        self._data: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        # key -> (version, expires_at). Equal TTLs and a monotonic clock keep it in expiry order.
        self._tombstones: OrderedDict[str, tuple[Version, float]] = OrderedDict()
        # (expires_at, key) for every entry with a TTL, plus stale rows that sweep skips.
        self._expiry_heap: list[tuple[float, str]] = []
        self._bytes = 0
        self._hits = self._misses = self._sets = self._deletes = 0
        self._evictions = self._expirations = 0

    def get(self, key: str) -> Entry | None:
        """The live entry, counted as a hit or miss and marked most recently used."""
        with self._lock:
            return self._lookup(key, self.clock())

    def read(self, key: str) -> Hit | None:
        """``get`` as a Hit: the value with the seconds it has left."""
        with self._lock:
            now = self.clock()
            entry = self._lookup(key, now)
        if entry is None:
            return None
        ttl = None if entry.expires_at is None else entry.expires_at - now
        return Hit(entry.value, entry.binary, ttl, entry.version)

    def peek(self, key: str) -> Entry | None:
        """Like ``get`` but leaves no trace (no counters, no LRU move): for checks and migration."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None or _expired(entry, self.clock()):
                return None
            return entry

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The live entries among ``keys``; each key counts as a hit or a miss."""
        keys = list(keys)  # consume the iterable before taking the lock
        with self._lock:
            now = self.clock()
            found = {key: self._lookup(key, now) for key in keys}
        return {key: entry for key, entry in found.items() if entry is not None}

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
            entry = self._live(key, now)
            if entry is None or entry.version != expected:
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
            entry = self._live(key, now)
            if entry is None:
                return None
            if entry.binary or not _INTEGER_RE.fullmatch(entry.value):
                raise NotInteger(f"The value of {key!r} is not an integer.")
            # More digits than int64 has: refuse before int() meets a huge string.
            if len(entry.value.lstrip(b"-").lstrip(b"0")) > _INT64_DIGITS:
                raise IntegerOverflow(f"The value of {key!r} is outside the 64-bit range.")
            result = int(entry.value) + delta
            if not _INT64_MIN <= result <= _INT64_MAX:
                raise IntegerOverflow(f"Incrementing {key!r} would leave the 64-bit range.")
            value = str(result).encode()
            size = self._validate(key, value, None)  # only a tiny max_bytes could refuse it
            version = self.hlc.now()
            self._write(key, Entry(value, False, entry.expires_at, version), size, now)
            self._sets += 1
            return result, version

    def touch(self, key: str, ttl: float | None) -> bool:
        """Give a live entry a new TTL (None = never expires) and a new version; False if absent.

        Not counted as a set: the value is unchanged.
        """
        _check_ttl(ttl)
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            if entry is None:
                return False
            new = replace(entry, expires_at=_deadline(now, ttl), version=self.hlc.now())
            self._write(key, new, 0, now)
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

    def clear(self) -> int:
        """Drop every entry and tombstone; returns the number of entries. Counters stay."""
        with self._lock:
            removed = len(self._data)
            self._data.clear()
            self._tombstones.clear()
            self._expiry_heap = []
            self._bytes = 0
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
                    found = [(key, self._data.get(key)) for key in keys[start : start + chunk_size]]
                chunk = [(k, e) for k, e in found if e is not None and not _expired(e, now)]
                if chunk:
                    yield chunk

        return chunks()  # a nested generator, so a bad chunk_size fails at the call

    def sweep(self, limit: int | None = None) -> int:
        """Remove up to ``limit`` expired entries (and as many expired tombstones).

        Lazy expiry alone would keep keys that are never read again; a periodic sweep frees
        their memory. Only due heap rows are visited, so a sweep with nothing due is cheap.
        Returns the number of entries expired.
        """
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"limit must be None or 0 or more, not {limit!r}.")
        with self._lock:
            now = self.clock()
            heap = self._expiry_heap
            expired = 0
            while heap and heap[0][0] <= now and (limit is None or expired < limit):
                expires_at, key = heapq.heappop(heap)
                entry = self._data.get(key)
                # A row is stale if the key was deleted or rewritten since it was pushed.
                if entry is not None and entry.expires_at == expires_at:
                    self._remove(key)
                    expired += 1
            self._expirations += expired
            dropped = 0
            while self._tombstones and (limit is None or dropped < limit):
                key, (_version, expires_at) = next(iter(self._tombstones.items()))
                if now < expires_at:
                    break
                del self._tombstones[key]
                dropped += 1
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

        Needs no lock: it reads only ``max_bytes``, which never changes.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}.")
        if not isinstance(value, bytes):
            raise TypeError(f"value must be encoded bytes, not {type(value).__name__}.")
        _check_ttl(ttl)
        _check_version(version)
        size = len(key.encode("utf-8")) + len(value)
        if size > self.max_bytes:
            raise ValueTooLarge(
                f"The entry takes {size} bytes (key plus value); this node holds {self.max_bytes}."
            )
        return size

    def _live(self, key: str, now: float) -> Entry | None:
        """The key's entry unless absent or expired; expires it lazily. Lock held."""
        entry = self._data.get(key)
        if entry is not None and _expired(entry, now):
            self._remove(key)
            self._expirations += 1
            return None
        return entry

    def _lookup(self, key: str, now: float) -> Entry | None:
        """``_live`` for reads: counts a hit or miss, marks the entry used. Lock held."""
        entry = self._live(key, now)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._data.move_to_end(key)
        return entry

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
            entry = self._live(key, now)
            if entry is not None and version <= entry.version:
                return None
            tombstone = self._tombstones.get(key)
            if tombstone is not None and now < tombstone[1] and version <= tombstone[0]:
                return None
        self._write(key, Entry(value, binary, _deadline(now, ttl), version), size, now)
        self._sets += 1
        return version

    def _write(self, key: str, entry: Entry, size: int, now: float) -> None:
        """Put ``entry`` in as most recently used, then evict to fit. Lock held.

        ``size`` is only used for a new key; a replaced one adjusts by the value's change.
        """
        old = self._data.get(key)
        self._data[key] = entry
        if old is None:
            self._bytes += size
        else:
            self._data.move_to_end(key)
            self._bytes += len(entry.value) - len(old.value)
            # The old deadline's heap row still matches when the deadline is unchanged.
        if entry.expires_at is not None and (old is None or old.expires_at != entry.expires_at):
            self._schedule(entry.expires_at, key)
        # Every write is newer than any tombstone (the clock observed it), so drop it.
        self._tombstones.pop(key, None)
        self._evict(key, now)

    def _remove(self, key: str) -> Entry:
        """Take the key out and release its bytes; the caller counts why. Lock held."""
        entry = self._data.pop(key)
        self._bytes -= len(key.encode("utf-8")) + len(entry.value)
        return entry

    def _delete(self, key: str, version: Version | None, now: float) -> bool:
        """One delete, versioned or not, as ``delete`` describes. Lock held."""
        if version is not None:
            self.hlc.observe(version)
            tombstone = self._tombstones.get(key)
            if tombstone is None or now >= tombstone[1] or version > tombstone[0]:
                self._tombstones[key] = (version, now + self.tombstone_ttl)
                self._tombstones.move_to_end(key)
        entry = self._live(key, now)
        if entry is None or (version is not None and entry.version >= version):
            return False
        self._remove(key)
        self._deletes += 1
        return True

    def _evict(self, keep: str, now: float) -> None:
        """Drop least recently used entries until both bounds hold, sparing ``keep``. Lock held.

        A victim that had already expired is counted as an expiration, not an eviction.
        """
        data = self._data
        while self._bytes > self.max_bytes or (self.max_items and len(data) > self.max_items):
            victim = next(iter(data))
            if victim == keep:  # only possible if it is alone, and then it fits
                break
            if _expired(self._remove(victim), now):
                self._expirations += 1
            else:
                self._evictions += 1

    def _schedule(self, expires_at: float, key: str) -> None:
        """Record a deadline for sweep; rebuild the heap if stale rows pile up. Lock held."""
        heapq.heappush(self._expiry_heap, (expires_at, key))
        if len(self._expiry_heap) > 2 * len(self._data) + _HEAP_SLACK:
            self._expiry_heap = [
                (entry.expires_at, k)
                for k, entry in self._data.items()
                if entry.expires_at is not None
            ]
            heapq.heapify(self._expiry_heap)
