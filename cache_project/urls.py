"""Routes: the REST API under /api/v1/, the seed-compatible routes, health, metrics, schema,
admin. Both spellings of a call reach the same viewset action."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from cacheapi.api import metrics_view, views
from cacheapi.settings import cluster_settings
from nodes import dashboard

if TYPE_CHECKING:
    from rest_framework.decorators import ViewSetAction  # stubs only

KEY_ACTIONS: dict[str, str | ViewSetAction[Any]] = {
    "get": "retrieve",
    "put": "update",
    "patch": "partial_update",
    "delete": "destroy",
}

key_view = views.KeyViewSet.as_view(KEY_ACTIONS)
# ".../{key}/incr": POST increments {key}; other methods address the key ending in "/incr".
incr_view = views.KeyViewSet.as_view({"post": "incr", **KEY_ACTIONS}, key_suffix="/incr")
batch_get = views.BatchViewSet.as_view({"post": "get_many"})
batch_set = views.BatchViewSet.as_view({"post": "set_many"})
batch_delete = views.BatchViewSet.as_view({"post": "delete_many"})
health = views.HealthViewSet.as_view({"get": "list"})

# (?s): a key with a newline reaches the view, which refuses it as invalid_key (not a 404).
api_v1 = [
    re_path(r"^keys/(?P<key>(?s:.+))/incr$", incr_view, name="key-incr"),
    re_path(r"^keys/(?P<key>(?s:.+))$", key_view, name="key"),
    path("batch/get", batch_get, name="batch-get"),
    path("batch/set", batch_set, name="batch-set"),
    path("batch/delete", batch_delete, name="batch-delete"),
    path("stats", views.StatsViewSet.as_view({"get": "list"}), name="stats"),
    path("flush", views.FlushViewSet.as_view({"post": "create"}), name="flush"),
    path(
        "ratelimit/hit",
        views.RateLimitViewSet.as_view({"post": "create"}),
        name="ratelimit-hit",
    ),
    path("cluster/ring", views.RingViewSet.as_view({"get": "list"}), name="cluster-ring"),
    path("cluster/nodes", views.NodesViewSet.as_view({"get": "list"}), name="cluster-nodes"),
]

# The Go seed's routes, kept working: same actions, same status codes and bodies.
seed = [
    path("set", views.KeyViewSet.as_view({"post": "update"}), name="seed-set"),
    path("get", views.KeyViewSet.as_view({"get": "retrieve"}), name="seed-get"),
    path("delete", views.KeyViewSet.as_view({"delete": "destroy"}), name="seed-delete"),
    path("batch_get", batch_get, name="seed-batch-get"),
    path("batch_set", batch_set, name="seed-batch-set"),
    path("sync", views.SyncViewSet.as_view({"post": "create"}), name="seed-sync"),
    path("health", health, name="health"),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    *seed,
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("admin/", include(dashboard.urlpatterns)),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view.metrics, name="prometheus-django-metrics"),
]

if cluster_settings.BENCH_ROUTES:
    from cacheapi.api import bench_views

    urlpatterns += [path("bench/", include(bench_views.urlpatterns))]

handler400 = "cacheapi.api.exceptions.bad_request"
handler403 = "cacheapi.api.exceptions.permission_denied"
handler404 = "cacheapi.api.exceptions.page_not_found"
handler500 = "cacheapi.api.exceptions.server_error"
