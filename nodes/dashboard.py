"""The admin's cluster dashboard: every node's status, load and memory at a glance.

``/admin/dashboard/`` (staff only) is a page that polls ``/admin/dashboard/data`` every two
seconds and draws, per node, its status, hit ratio, operations per second (from successive
counts), p99 latency, items, memory used against its budget, share of the ring and last
heartbeat, with a small chart of the cluster's operations per second over the last minutes.

The data comes from this node: the registry (statuses, heartbeats) and a live ``stats`` call to
every node over the peer protocol (``Node.cluster_stats``); a node that does not answer is
shown with its last heartbeat's stats, marked stale.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone


def _p99(stats: dict[str, Any]) -> float | None:
    """The slowest operation's p99, in milliseconds."""
    values = [s.get("p99_ms") for s in (stats.get("latency") or {}).values()]
    values = [v for v in values if isinstance(v, int | float)]
    return max(values) if values else None


def snapshot() -> dict[str, Any]:
    from cacheapi.node import current
    from nodes.models import Node, RingVersion

    node = current()
    live = node.cluster_stats()
    shares = node.ring.shares()
    now = timezone.now()
    rows = []
    try:
        registered = list(Node.objects.all())
        version = RingVersion.current()
    except DatabaseError:
        registered, version = [], None
    for entry in registered:
        stats = live["nodes"].get(entry.name)
        stale = stats is None
        if stats is None:
            stats = entry.last_stats or {}
        ops = sum((stats.get("ops") or {}).values())
        rows.append(
            {
                "name": entry.name,
                "url": entry.url,
                "status": entry.status,
                "weight": entry.weight,
                "share": round(shares.get(entry.name, 0.0), 4),
                "hit_ratio": stats.get("hit_ratio"),
                "ops": ops,
                "p99_ms": _p99(stats),
                "items": stats.get("items"),
                "bytes": stats.get("bytes"),
                "max_bytes": stats.get("max_bytes"),
                "heartbeat_age": (
                    round((now - entry.last_heartbeat).total_seconds(), 1)
                    if entry.last_heartbeat
                    else None
                ),
                "stale": stale,
            }
        )
    return {"ring_version": version, "time": now.timestamp(), "nodes": rows}


def data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(snapshot())


def page(request: HttpRequest) -> HttpResponse:
    context = {**admin.site.each_context(request), "title": "Cluster dashboard"}
    return TemplateResponse(request, "admin/dashboard.html", context)


urlpatterns = [
    path("dashboard/", admin.site.admin_view(page), name="cache-dashboard"),
    path("dashboard/data", admin.site.admin_view(data), name="cache-dashboard-data"),
]
