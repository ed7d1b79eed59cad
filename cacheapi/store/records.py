"""How one entry is kept in memory: a single bytes object, a fixed header then the value.

A million small entries is the common case for a cache, and there Python's per-object costs
outweigh the data: a frozen dataclass, a version tuple, its int and a float per entry came to
~420 bytes for a 10-byte key and a 100-byte value (Redis: ~190). Packing the metadata in front
of the value leaves two objects per entry, the key and this record, whatever the value.

Layout (little-endian, no padding): flags (1), expiry deadline on the store's clock (8, a
double, +inf for never), version milliseconds (8), counter (4), node (2, an index into the
store's table of node names), the entry's slot in the eviction ring (4); then the value.
Records are immutable like the old entries: every write makes a new one.
"""

import math
import struct

from cacheapi.store.versions import Version

HEADER = struct.Struct("<BdqIHI")
HEADER_SIZE = HEADER.size
_DEADLINE = struct.Struct("<d")  # at offset 1
_SLOT = struct.Struct("<I")  # at offset HEADER_SIZE - 4
_SLOT_AT = HEADER_SIZE - _SLOT.size
BINARY = 1
NEVER = math.inf

MAX_NODES = 2**16
MAX_SLOT = 2**32 - 1


def deadline(record: bytes) -> float:
    """When the record expires on the store's clock (``NEVER`` if it does not)."""
    return _DEADLINE.unpack_from(record, 1)[0]


def slot(record: bytes) -> int:
    """The record's place in the eviction ring."""
    return _SLOT.unpack_from(record, _SLOT_AT)[0]


def value(record: bytes) -> bytes:
    """The stored value (a copy: slicing bytes copies)."""
    return record[HEADER_SIZE:]


def value_size(record: bytes) -> int:
    return len(record) - HEADER_SIZE


def with_slot(record: bytes, new_slot: int) -> bytes:
    """The same record at another ring slot (used when the ring is compacted)."""
    return record[:_SLOT_AT] + _SLOT.pack(new_slot) + record[HEADER_SIZE:]


class NodeNames:
    """Node names of versions, kept once per store; records hold a 2-byte index instead.

    The table only grows (a name stays valid for records that still use it); a cluster has a
    handful of names, and ``MAX_NODES`` guards against a peer inventing new ones forever.
    Callers hold the store's lock.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def index(self, name: str) -> int:
        found = self._index.get(name)
        if found is None:
            if len(self.names) >= MAX_NODES:
                raise ValueError(f"more than {MAX_NODES} node names in versions.")
            found = self._index[name] = len(self.names)
            self.names.append(name)
        return found

    def knows(self, name: str) -> bool:
        return name in self._index or len(self.names) < MAX_NODES

    def pack(
        self, data: bytes, binary: bool, expires_at: float, version: Version, ring_slot: int
    ) -> bytes:
        """A new record; always a fresh, exactly sized bytes object (``orjson.dumps`` hands out
        buffers of ~4 KB for small values, which a store must not keep)."""
        ms, counter, node = version
        header = HEADER.pack(
            BINARY if binary else 0, expires_at, ms, counter, self.index(node), ring_slot
        )
        return header + data

    def unpack(self, record: bytes) -> tuple[bool, float, Version]:
        """(binary, deadline, version) of a record."""
        flags, expires_at, ms, counter, node, _slot = HEADER.unpack_from(record)
        return bool(flags & BINARY), expires_at, (ms, counter, self.names[node])
