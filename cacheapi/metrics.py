"""Cache metrics: per-operation counts and latency, forwards, and the store's counters.

Recorded in plain in-process counters (a few attribute updates per request) and exposed two
ways from the same numbers: ``/api/v1/stats`` as JSON, and ``/metrics`` through a Prometheus
collector that reads them at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import REGISTRY, Collector

if TYPE_CHECKING:
    from cacheapi.node import Node

# Upper bounds in seconds; the last bucket is +Inf.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class OpStats:
    __slots__ = ("buckets", "count", "errors", "total")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None when nothing recorded)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.buckets, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops: defaultdict[str, OpStats] = defaultdict(OpStats)
        self.forwards: defaultdict[tuple[str, str], int] = defaultdict(int)

    def observe(self, op: str, seconds: float, error: bool = False) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            stats = self.ops[op]
            stats.count += 1
            stats.total += seconds
            stats.buckets[index] += 1
            if error:
                stats.errors += 1

    def forward(self, op: str, node: str) -> None:
        with self._lock:
            self.forwards[(op, node)] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ops = {
                op: {
                    "count": s.count,
                    "errors": s.errors,
                    "mean_ms": round(s.total / s.count * 1000, 3) if s.count else None,
                    "p50_ms": _ms(s.quantile(0.5)),
                    "p99_ms": _ms(s.quantile(0.99)),
                }
                for op, s in sorted(self.ops.items())
            }
            forwards = sum(self.forwards.values())
        return {"ops": ops, "forwards": forwards}

    def reset(self) -> None:
        with self._lock:
            self.ops.clear()
            self.forwards.clear()


def _ms(seconds: float | None) -> float | None:
    if seconds is None or seconds == float("inf"):
        return None
    return round(seconds * 1000, 3)


recorder = Recorder()


class CacheCollector(Collector):
    """Reads the recorder and the store when Prometheus scrapes; costs nothing per request.
    ``node`` returns this process's node (``cacheapi.node.current``)."""

    def __init__(self, node: Callable[[], Node]) -> None:
        self._node = node

    def describe(self) -> list[Any]:
        # Without this, registering would call collect() and build the node at import time.
        return []

    def collect(self) -> Iterator[Any]:
        node = self._node()
        stats = node.store.stats()
        for name in ("hits", "misses", "sets", "deletes", "evictions", "expirations"):
            counter = CounterMetricFamily(f"cache_{name}", f"Store {name} since start.")
            counter.add_metric([], stats[name])
            yield counter
        for name in ("items", "bytes", "max_bytes", "max_items"):
            gauge = GaugeMetricFamily(f"cache_{name}", f"Store {name.replace('_', ' ')}.")
            gauge.add_metric([], stats[name])
            yield gauge
        lookups = stats["hits"] + stats["misses"]
        ratio = GaugeMetricFamily("cache_hit_ratio", "Hits over lookups since start.")
        ratio.add_metric([], stats["hits"] / lookups if lookups else 0.0)
        yield ratio
        ring = GaugeMetricFamily("cache_ring_version", "Version of the ring this node routes by.")
        ring.add_metric([], node.ring.version)
        yield ring
        reload_errors = CounterMetricFamily(
            "cache_ring_reload_errors", "Failed reads of the registry (last good ring kept)."
        )
        reload_errors.add_metric([], node.membership.reload_errors)
        yield reload_errors
        up = GaugeMetricFamily("cache_node_up", "1 while this node serves (0 while draining).")
        up.add_metric([], 0 if node.draining else 1)
        yield up
        yield from self._cluster(node)
        yield from self._operations()

    @staticmethod
    def _cluster(node: Node) -> Iterator[Any]:
        """Replication, hints, migration, rate-limit counters and the ring's view of nodes."""
        router = node.router

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text)
            family.add_metric([], value)
            return family

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            return family

        yield counter(
            "cache_replicated_writes",
            "Writes this node coordinated and acknowledged.",
            router.writes,
        )
        yield counter(
            "cache_replica_copies_missed",
            "Owner copies those writes missed (each kept as a hint to replay).",
            router.missed_copies,
        )
        hints = router.hints
        yield gauge(
            "cache_hints_pending", "Hints waiting to be replayed.", sum(hints.pending().values())
        )
        yield counter(
            "cache_hints_replayed", "Hints replayed to owners that came back.", hints.replayed
        )
        yield counter(
            "cache_hints_dropped",
            "Hints dropped (over the bound, or the owner left).",
            hints.dropped,
        )
        moved = node.migrator.stats
        for name, text, value in (
            ("pushed", "Entries pushed to new owners on ring changes.", moved.pushed),
            ("pulled", "Entries pulled while joining.", moved.pulled),
            ("dropped", "Entries let go after a hand-off.", moved.dropped),
            ("passes", "Migration passes run.", moved.passes),
            ("failures", "Migration passes or pulls that had to be retried.", moved.failures),
        ):
            yield counter(f"cache_migration_{name}", text, value)
        yield gauge(
            "cache_migration_last_pass_seconds",
            "How long the last pass took.",
            moved.last_pass_seconds,
        )
        counters = router.counters.stats()
        yield gauge("cache_ratelimit_counters", "Rate-limit counters held.", counters["keys"])
        yield counter(
            "cache_ratelimit_counter_evictions",
            "Rate-limit counters dropped to stay within COUNTER_MAX_KEYS.",
            counters["evictions"],
        )
        ring = node.ring
        statuses = GaugeMetricFamily(
            "cache_ring_node_status",
            "1 for each node's status in this node's ring (joining, up, draining, down, disabled).",
            labels=["node", "status"],
        )
        shares = GaugeMetricFamily(
            "cache_ring_share",
            "Share of the hash space each node owns as primary.",
            labels=["node"],
        )
        for name, share in ring.shares().items():
            shares.add_metric([name], share)
        for member in ring.nodes:
            statuses.add_metric([member.name, member.status], 1)
        yield statuses
        yield shares
        yield from _heartbeat_ages()

    def _operations(self) -> Iterator[Any]:
        hist = HistogramMetricFamily(
            "cache_operation_seconds", "Latency of API operations.", labels=["op"]
        )
        errors = CounterMetricFamily(
            "cache_operation_errors", "Operations answered 4xx/5xx.", labels=["op"]
        )
        forwards = CounterMetricFamily(
            "cache_forwards", "Calls forwarded to other nodes.", labels=["op", "node"]
        )
        with recorder._lock:
            for op, s in sorted(recorder.ops.items()):
                cumulative, running = [], 0
                for bound, n in zip((*BUCKETS, float("inf")), s.buckets, strict=True):
                    running += n
                    cumulative.append((_bound_label(bound), running))
                hist.add_metric([op], cumulative, sum_value=s.total)
                errors.add_metric([op], s.errors)
            for (op, name), n in sorted(recorder.forwards.items()):
                forwards.add_metric([op, name], n)
        yield hist
        yield errors
        yield forwards


def _heartbeat_ages() -> Iterator[Any]:
    """Seconds since each node's last heartbeat, from the registry (nothing when the registry
    cannot be read: a scrape never fails for it)."""
    from django.db import DatabaseError
    from django.utils import timezone

    from nodes.models import Node as Registered

    ages = GaugeMetricFamily(
        "cache_node_heartbeat_age_seconds",
        "Seconds since the heartbeat last heard each node (the registry's view).",
        labels=["node"],
    )
    now = timezone.now()
    try:
        for name, seen in Registered.objects.values_list("name", "last_heartbeat"):
            if seen is not None:
                ages.add_metric([name], (now - seen).total_seconds())
    except DatabaseError:
        return
    yield ages


def _bound_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


_registered = False


def register_collector(node: Callable[[], Node]) -> None:
    global _registered
    if not _registered:
        REGISTRY.register(CacheCollector(node))
        _registered = True
