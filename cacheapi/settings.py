"""The cache cluster's settings: documented defaults, read through one object.

``cluster_settings.MAX_BYTES`` resolves, in order: the environment (``CACHE_MAX_BYTES``), the
project's ``CACHE_CLUSTER`` dict, then ``DEFAULTS`` below. Values are cached and the cache is
dropped on Django's ``setting_changed`` signal, so ``override_settings`` works in tests.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

MIB = 2**20

# name -> (default, what it does). The README's configuration table is generated from this.
DEFAULTS: dict[str, tuple[Any, str]] = {
    "NODE_NAME": ("n1", "This node's name in the registry and ring (runnode --name sets it)."),
    "NODE_URL": ("", "URL other nodes and clients use to reach this node (runnode sets it)."),
    "MAX_BYTES": (
        256 * MIB,
        "Memory budget of the store, in bytes: keys, values and 160 bytes of bookkeeping "
        "per entry.",
    ),
    "MAX_ITEMS": (1_000_000, "Most items the store holds (0 = bounded by bytes only)."),
    "DEFAULT_TTL": (None, "TTL in seconds when a write gives none (None = never expires)."),
    "MAX_TTL": (10 * 365 * 86400, "Largest TTL accepted, in seconds."),
    "MAX_KEY_BYTES": (250, "Longest key, in bytes of UTF-8."),
    "MAX_VALUE_BYTES": (1 * MIB, "Largest value, in bytes once encoded."),
    "MAX_BATCH_KEYS": (1000, "Most keys in one batch call."),
    "MAX_REQUEST_BYTES": (64 * MIB, "Largest request body; larger ones get 413."),
    "SWEEP_INTERVAL": (1.0, "Seconds between active expiry sweeps."),
    "SWEEP_LIMIT": (
        10_000,
        "Entries one expiry sweep examines (keeps the lock short); a sweep repeats, up to 16 "
        "rounds, while more than a quarter of those had expired.",
    ),
    "TOMBSTONE_TTL": (60.0, "Seconds a versioned delete is remembered (stops resurrection)."),
    "REPLICAS": (2, "Copies of each key, on distinct nodes (1 = no replication)."),
    "VNODES": (160, "Ring points per unit of node weight."),
    "SECRET": ("", "Cluster secret for node-to-node calls (default: derived from SECRET_KEY)."),
    "AUTH_CACHE_SECONDS": (5.0, "How long a verified API key is trusted without the database."),
    "FORWARD_TIMEOUT": (2.0, "Seconds a coordinator waits for another node."),
    "FAILOVER_TIMEOUT": (
        0.25,
        "Seconds a read waits for an owner before it asks the next one (when there is one).",
    ),
    "PEER_RETRY_SECONDS": (
        1.0,
        "After a node times out, calls to it fail at once for this long, then one tries again.",
    ),
    "CA_BUNDLE": ("", "CA bundle that nodes verify each other's TLS certificates against."),
    "TLS_CERTFILE": ("", "The node's TLS certificate (runnode --certfile): serve HTTPS."),
    "TLS_KEYFILE": ("", "The node's TLS private key (runnode --keyfile)."),
    "API_RATE_LIMIT": (
        "",
        "Rate per API key for the node's /api/ calls over HTTP, e.g. '1000/s' (empty = off).",
    ),
    "COUNTER_MAX_KEYS": (
        1_000_000,
        "Most rate-limit counters a node keeps, apart from user data (the oldest go first).",
    ),
    "STREAM_IDLE_SECONDS": (
        60.0,
        "Seconds a client stream may stay idle before the node closes it (keep it above 45: "
        "clients retire idle streams after 45 s).",
    ),
    "DRAIN_TIMEOUT": (
        30.0,
        "Seconds a node stopped with SIGTERM spends handing its keys off (0 = no hand-off).",
    ),
    "HEARTBEAT_INTERVAL": (1.0, "Seconds between heartbeat rounds (manage.py heartbeat)."),
    "HEARTBEAT_TIMEOUT": (0.5, "Seconds the heartbeat waits for a node's /health."),
    "HEARTBEAT_FAILURES": (3, "Missed heartbeats in a row before a node is marked down."),
    "RING_RELOAD_INTERVAL": (1.0, "Seconds between checks of the registry's ring version."),
    "WORKER_CLASS": ("gevent", "gunicorn worker class of a node (gevent or gthread)."),
    "WORKERS": (1, "gunicorn workers; must be 1 (the store lives in the process)."),
    "THREADS": (4, "Threads per worker when WORKER_CLASS is gthread."),
    "WORKER_CONNECTIONS": (
        16384,
        "Client connections a node holds at once (the open-files limit is raised to fit).",
    ),
    "PEER_CONNECTIONS": (
        256,
        "Connections kept beyond WORKER_CONNECTIONS for other nodes and /health (gevent).",
    ),
    "HEADER_TIMEOUT": (
        5.0,
        "Seconds a new connection has to send a whole request head, or it is closed (gevent).",
    ),
    "BODY_TIMEOUT": (
        30.0,
        "Seconds a request's connection may stall mid-body before it gets 408 (gevent).",
    ),
    "BENCH_ROUTES": (False, "Serve the plain-Django ceiling views used by make bench."),
}


def _coerce(name: str, default: Any, raw: str) -> Any:
    """Turn an environment string into the type of the setting's default."""
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if default is None:
        text = raw.strip().lower()
        return None if text in {"", "none", "null"} else float(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


class ClusterSettings:
    """Attribute access to the merged settings; unknown names raise AttributeError."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown CACHE_CLUSTER setting: {name!r}")
        try:
            return self._cache[name]
        except KeyError:
            value = self._resolve(name)
            self._cache[name] = value
            return value

    def _resolve(self, name: str) -> Any:
        default = DEFAULTS[name][0]
        raw = os.environ.get(f"CACHE_{name}")
        if name == "SECRET" and raw is not None and not raw.strip():
            raw = None  # CACHE_SECRET= (empty) is unset, never an empty secret anyone can send
        if raw is not None:
            return _coerce(name, default, raw)
        configured = getattr(settings, "CACHE_CLUSTER", {}) or {}
        value = configured.get(name, default)
        if name == "SECRET" and not value:
            value = hashlib.sha256(
                b"cache-cluster-secret:" + settings.SECRET_KEY.encode()
            ).hexdigest()
        return value

    def reload(self) -> None:
        self._cache.clear()


cluster_settings = ClusterSettings()


@receiver(setting_changed)
def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting in {"CACHE_CLUSTER", "SECRET_KEY"}:
        cluster_settings.reload()
