"""The node's store: an LRU of encoded values with TTLs and write versions.

No Django and no HTTP here: the store is plain Python, tested with an injected clock.
"""

from cacheapi.store.lru import (
    ENTRY_OVERHEAD,
    Entry,
    Hit,
    IntegerOverflow,
    NotInteger,
    SetItem,
    Store,
    StoreError,
    ValueTooLarge,
)
from cacheapi.store.versions import HybridClock, Version, format_version, parse_version

__all__ = [
    "ENTRY_OVERHEAD",
    "Entry",
    "Hit",
    "HybridClock",
    "IntegerOverflow",
    "NotInteger",
    "SetItem",
    "Store",
    "StoreError",
    "ValueTooLarge",
    "Version",
    "format_version",
    "parse_version",
]
