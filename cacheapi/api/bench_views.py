"""The ceiling for ``make bench``: plain Django views over the same store, no DRF.

Served only when CACHE_CLUSTER BENCH_ROUTES is on; the benchmark compares the DRF API against
these to measure what the framework costs.
"""

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

from cacheapi.node import current


def plain_get(request: HttpRequest, key: str) -> JsonResponse:
    entry = current().store.get(key)
    if entry is None:
        return JsonResponse({"error": {"code": "not_found", "message": key}}, status=404)
    # The same work the API does: decode nothing, embed the stored JSON text.
    return JsonResponse({"key": key, "value": entry.value.decode(), "ttl": None})


# The rate limiter's overhead (bench/ratelimiting.py): the same view, limited in each way, at
# a rate nothing reaches, so every request pays for its check and none is refused.
NEVER = "100000000/h"


def _limited_views() -> list[Any]:
    from rest_framework.response import Response
    from rest_framework.throttling import ScopedRateThrottle
    from rest_framework.views import APIView

    from ratelimit.decorators import ratelimit

    class Plain(APIView):
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []
        throttle_classes: list[Any] = []

        def get(self, request: Any, key: str) -> Response:
            entry = current().store.get(key)
            return Response({"key": key, "value": None if entry is None else entry.value})

    views = [
        path("plain-drf/<path:key>", Plain.as_view()),
        path("limited/local/<path:key>", ratelimit(rate=NEVER, storage="local")(plain_get)),
        path("limited/cluster/<path:key>", ratelimit(rate=NEVER, storage="cluster")(plain_get)),
    ]
    if "bench-redis" in settings.CACHES:
        from django.core.cache import caches
        from django_ratelimit.decorators import ratelimit as django_ratelimit

        class Throttle(ScopedRateThrottle):
            cache = caches["bench-redis"]
            THROTTLE_RATES = {"bench": "1000000/s"}

        class Throttled(Plain):
            throttle_classes = [Throttle]
            throttle_scope = "bench"  # ScopedRateThrottle throttles only views with a scope

        redis_limited = ratelimit(rate=NEVER, storage="cache:bench-redis")(plain_get)
        other = django_ratelimit(key="ip", rate="1000000/s", block=True)(plain_get)
        views += [
            path("limited/redis/<path:key>", redis_limited),
            path("limited/django-ratelimit/<path:key>", other),
            path("limited/drf-throttle/<path:key>", Throttled.as_view()),
        ]
    return views


urlpatterns = [path("plain/<path:key>", plain_get), *_limited_views()]
