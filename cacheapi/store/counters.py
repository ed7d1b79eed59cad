"""The counter store: rate-limit state, apart from user data.

Each node keeps one, beside its ``Store``: user keys cannot reach it (only the rate-limit
calls do) and user data cannot evict it (its own bound, ``COUNTER_MAX_KEYS``). An entry is a
small tuple of numbers (an algorithm's state, ``ratelimit.algorithms``) with its expiry.
``apply`` runs one function of (state, now) under the lock, so a check and its update are one
atomic step: counters are exact under any concurrency. No Django here.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
State = tuple[float, ...]


class CounterStore:
    def __init__(self, max_keys: int = 1_000_000, clock: Callable[[], float] = time.time) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.clock = clock  # wall time: windows align on it, the same on every node
        self._entries: OrderedDict[str, tuple[State, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def apply(self, key: str, fn: Callable[[State | None, float], tuple[State, float, T]]) -> T:
        """Run ``fn(state or None, now) -> (new state, seconds to keep it, result)`` atomically
        and return its result."""
        with self._lock:
            now = self.clock()
            held = self._entries.get(key)
            state = held[0] if held is not None and held[1] > now else None
            new_state, ttl, result = fn(state, now)
            if not new_state:  # an empty state forgets the key (a reset)
                self._entries.pop(key, None)
                return result
            self._entries[key] = (new_state, now + ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
                self.evictions += 1
            return result

    def check(self, key: str, check: Callable[..., Any], *args: Any) -> Any:
        """``apply`` for a rate-limit check ``check(state, now, *args)``; a check that returns
        an empty state (``ratelimit.algorithms.reset_check``) forgets the key, under the lock."""
        return self.apply(key, lambda state, now: check(state, now, *args))

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"keys": len(self._entries), "max_keys": self.max_keys, "evictions": self.evictions}
