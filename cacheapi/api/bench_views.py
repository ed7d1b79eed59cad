"""The ceiling for ``make bench``: plain Django views over the same store, no DRF.

Served only when CACHE_CLUSTER BENCH_ROUTES is on; the benchmark compares the DRF API against
these to measure what the framework costs.
"""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from cacheapi.node import current


def plain_get(request: HttpRequest, key: str) -> JsonResponse:
    entry = current().store.get(key)
    if entry is None:
        return JsonResponse({"error": {"code": "not_found", "message": key}}, status=404)
    # The same work the API does: decode nothing, embed the stored JSON text.
    return JsonResponse({"key": key, "value": entry.value.decode(), "ttl": None})


urlpatterns = [path("plain/<path:key>", plain_get)]
