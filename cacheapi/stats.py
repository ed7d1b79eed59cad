"""What a node reports about itself, and the sum of those reports over the cluster."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cacheapi.metrics import Recorder
from cacheapi.store import Store

# Summed over nodes for ``GET /api/v1/stats?scope=cluster``.
SUMMED = (
    "hits",
    "misses",
    "sets",
    "deletes",
    "evictions",
    "expirations",
    "items",
    "bytes",
    "max_bytes",
    "max_items",
    "forwards",
)


def _ratio(hits: int, misses: int) -> float:
    lookups = hits + misses
    return round(hits / lookups, 4) if lookups else 0.0


def node_stats(name: str, ring_version: int, store: Store, recorder: Recorder) -> dict[str, Any]:
    stats: dict[str, Any] = dict(store.stats())
    stats["hit_ratio"] = _ratio(stats["hits"], stats["misses"])
    snapshot = recorder.snapshot()
    stats["node"] = name
    stats["ring_version"] = ring_version
    stats["ops"] = {op: s["count"] for op, s in snapshot["ops"].items()}
    stats["latency"] = {
        op: {k: s[k] for k in ("mean_ms", "p50_ms", "p99_ms")} for op, s in snapshot["ops"].items()
    }
    stats["forwards"] = snapshot["forwards"]
    return stats


def cluster_stats(per_node: Mapping[str, Mapping[str, Any]], failed: list[str]) -> dict[str, Any]:
    live = list(per_node.values())
    totals: dict[str, Any] = {name: sum(s.get(name, 0) for s in live) for name in SUMMED}
    totals["hit_ratio"] = _ratio(totals["hits"], totals["misses"])
    return {"scope": "cluster", **totals, "nodes": dict(per_node), "failed": failed}
