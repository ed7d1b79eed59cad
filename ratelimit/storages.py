"""Where counters live, and how one check is made atomic there.

- ``local``: this process's memory, one lock around each check: exact for every algorithm,
  per process (a site with several workers counts per worker).
- ``cluster``: the cache cluster's counter store (``ClusterStorage``): exact for every
  algorithm, shared by every process, apart from user data.
- ``cache:<alias>``: any Django cache (``CACHES[alias]``), shared by every process using it.
  Its atomic steps are ``add`` and ``incr``: the fixed window is exact (one counter per window,
  created with ``add`` and its TTL, then ``incr``); the sliding window is never over-admitted
  (this window's counter is incremented before the decision, so denied requests count too,
  which only makes it stricter after a burst); the token bucket is a read-modify-write there
  (``get`` then ``set``) and may admit a few more than its size under concurrency: use
  ``local`` or another algorithm where that matters.

Every storage raises ``StorageError`` when it cannot answer; the limiter applies the
``FAIL_OPEN`` policy to it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from django.core.signals import setting_changed
from django.dispatch import receiver

from ratelimit import algorithms
from ratelimit.algorithms import Decision, State
from ratelimit.rates import Rate
from ratelimit.settings import ratelimit_settings


class StorageError(Exception):
    """The storage could not be reached or answered wrongly."""


class Storage(Protocol):
    def check(
        self, key: str, algorithm: str, rate: Rate, cost: int = 1, burst: int | None = None
    ) -> Decision: ...

    def reset(self, key: str, rate: Rate | None = None) -> None: ...


class LocalStorage:
    """Counters in this process: ``max_keys`` at most (the least recently used go first)."""

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._states: OrderedDict[str, tuple[State, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(
        self, key: str, algorithm: str, rate: Rate, cost: int = 1, burst: int | None = None
    ) -> Decision:
        check = algorithms.get(algorithm)
        with self._lock:
            now = self.clock()
            held = self._states.get(key)
            state = held[0] if held is not None and held[1] > now else None
            new_state, ttl, decision = check(state, now, rate, cost, burst)
            self._states[key] = (new_state, now + ttl)
            self._states.move_to_end(key)
            while len(self._states) > self.max_keys:
                self._states.popitem(last=False)
        return decision

    def reset(self, key: str, rate: Rate | None = None) -> None:
        with self._lock:
            self._states.pop(key, None)


class CacheStorage:
    """Counters in a Django cache (see the module docstring for what each algorithm gets)."""

    def __init__(self, alias: str, clock: Callable[[], float] = time.time) -> None:
        self.alias = alias
        self.clock = clock

    @property
    def cache(self) -> Any:
        from django.core.cache import caches

        return caches[self.alias]

    def check(
        self, key: str, algorithm: str, rate: Rate, cost: int = 1, burst: int | None = None
    ) -> Decision:
        algorithms.get(algorithm)  # ValueError for a name that is none
        try:
            if algorithm == "fixed_window":
                return self._fixed(key, rate, cost)
            if algorithm == "sliding_window":
                return self._sliding(key, rate, cost)
            return self._bucket(key, rate, cost, burst)
        except (StorageError, ValueError):
            raise
        except Exception as exc:  # the cache's own errors: unreachable, refused
            raise StorageError(f"cache {self.alias!r}: {exc}") from exc

    def _count(self, key: str, start: float, period: float, cost: int) -> int:
        """This window's counter after adding ``cost`` (created with its TTL if new)."""
        cache = self.cache
        counter = f"{key}:{int(start)}"
        cache.add(counter, 0, math.ceil(2 * period) + 1)
        try:
            return int(cache.incr(counter, cost))
        except ValueError:  # expired between add and incr: start it again
            cache.add(counter, 0, math.ceil(2 * period) + 1)
            return int(cache.incr(counter, cost))

    def _fixed(self, key: str, rate: Rate, cost: int) -> Decision:
        now = self.clock()
        start = math.floor(now / rate.period) * rate.period
        count = self._count(key, start, rate.period, cost)
        allowed = count <= rate.limit
        reset = start + rate.period - now
        return Decision(
            allowed=allowed,
            limit=rate.limit,
            remaining=max(0, rate.limit - count),
            reset_after=reset,
            retry_after=0.0 if allowed else reset,
        )

    def _sliding(self, key: str, rate: Rate, cost: int) -> Decision:
        now = self.clock()
        period = rate.period
        start = math.floor(now / period) * period
        previous = float(self.cache.get(f"{key}:{int(start - period)}", 0) or 0)
        current = self._count(key, start, period, cost)
        used = previous * (1.0 - (now - start) / period) + current
        allowed = used <= rate.limit
        # When a request like this one would fit: the attempts counted so far (this denied
        # one included: here every attempt counts) stay, the previous window's weight decays.
        retry = 0.0
        if not allowed:
            counted = float(current)
            retry = max(
                algorithms.sliding_retry(start, now, period, rate.limit, previous, counted, cost),
                0.001,
            )
        reset = (start + 2 * period - now) if current else (start + period - now)
        return Decision(
            allowed=allowed,
            limit=rate.limit,
            remaining=max(0, math.floor(rate.limit - used)),
            reset_after=reset,
            retry_after=retry,
        )

    def _bucket(self, key: str, rate: Rate, cost: int, burst: int | None) -> Decision:
        cache = self.cache
        now = self.clock()
        stored = cache.get(key)
        state = tuple(stored) if isinstance(stored, list | tuple) else None
        new_state, ttl, decision = algorithms.token_bucket(state, now, rate, cost, burst)
        cache.set(key, list(new_state), math.ceil(ttl) + 1)
        return decision

    def reset(self, key: str, rate: Rate | None = None) -> None:
        now = self.clock()
        try:
            keys = [key]
            if rate is not None:
                start = math.floor(now / rate.period) * rate.period
                keys += [f"{key}:{int(start)}", f"{key}:{int(start - rate.period)}"]
            # One by one, not delete_many: on a cluster a single key's delete is stamped by its
            # owner, after the increments it stamped; a batch's coordinator may be another node
            # whose clock is a hair behind within the same millisecond.
            for name in keys:
                self.cache.delete(name)
        except Exception as exc:
            raise StorageError(f"cache {self.alias!r}: {exc}") from exc


class ClusterStorage:
    """Counters in the cache cluster's counter store (``POST /api/v1/ratelimit/hit``, or a
    frame on a client stream): one atomic check on the counter's owner, exact for every
    algorithm, apart from user data. ``RATELIMIT["CLUSTER"]`` gives ``LOCATION`` (node URLs),
    ``API_KEY`` (``write`` scope), ``CA_BUNDLE`` and ``TIMEOUT`` (seconds, 1); without a
    ``LOCATION``, inside a cache node, the node's own router is used (no network hop to
    itself)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)
        self._client: Any = None
        self._lock = threading.Lock()

    def _call(
        self,
        key: str,
        algorithm: str,
        rate: Rate,
        cost: int,
        burst: int | None,
        reset: bool = False,
    ) -> Decision:
        location = self.options.get("LOCATION")
        if not location:
            router = in_node_router()  # inside a node: its own router
            if router is None:
                raise StorageError("no RATELIMIT['CLUSTER']['LOCATION'] and not inside a node")
            return router.ratelimit(key, algorithm, rate, cost, burst, reset)  # type: ignore[no-any-return]
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    from cacheapi.client import CacheClient

                    self._client = CacheClient(
                        location,
                        api_key=self.options.get("API_KEY", ""),
                        timeout=float(self.options.get("TIMEOUT", 1.0)),
                        ca_certs=self.options.get("CA_BUNDLE") or None,
                    )
                client = self._client
        text = f"{rate.limit}/{int(rate.period)}s"
        answer = client.ratelimit(key, text, algorithm, cost, burst, reset=reset)
        return algorithms.from_wire(answer)

    def check(
        self, key: str, algorithm: str, rate: Rate, cost: int = 1, burst: int | None = None
    ) -> Decision:
        algorithms.get(algorithm)
        try:
            return self._call(key, algorithm, rate, cost, burst)
        except Exception as exc:  # unreachable, refused, a registry outage
            raise StorageError(f"cluster: {exc}") from exc

    def reset(self, key: str, rate: Rate | None = None) -> None:
        try:
            self._call(key, "fixed_window", rate or Rate(1, 1.0), 0, None, reset=True)
        except Exception as exc:
            raise StorageError(f"cluster: {exc}") from exc


# Set by a served cache node (``cacheapi.node.Node.start``): its router, for the cluster
# storage without a LOCATION. Registered from there so that this module never imports the node.
_node_router: Callable[[], Any] | None = None


def serve_in_node(router: Callable[[], Any]) -> None:
    global _node_router
    _node_router = router


def in_node_router() -> Any:
    return None if _node_router is None else _node_router()


_storages: dict[str, Storage] = {}
_lock = threading.Lock()


def get_storage(name: str | None = None) -> Storage:
    """The storage named by ``name`` (default: ``RATELIMIT["STORAGE"]``), built once."""
    name = name or ratelimit_settings.STORAGE
    storage = _storages.get(name)
    if storage is None:
        with _lock:
            storage = _storages.get(name)
            if storage is None:
                storage = _storages[name] = build(name)
    return storage


def build(name: str) -> Storage:
    if name == "local":
        return LocalStorage()
    if name.startswith("cache:") and name[len("cache:") :]:
        return CacheStorage(name[len("cache:") :])
    if name == "cluster":
        return ClusterStorage(ratelimit_settings.CLUSTER or {})
    raise ValueError(f"RATELIMIT STORAGE {name!r}: 'local', 'cluster' or 'cache:<alias>'")


def reset() -> None:
    """Forget the built storages (settings changed)."""
    with _lock:
        _storages.clear()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("RATELIMIT", "CACHES"):
        reset()
