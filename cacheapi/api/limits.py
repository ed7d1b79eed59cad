"""The nodes protect their own API with the rate limiter: ``API_RATE_LIMIT`` per API key.

Off by default (``API_RATE_LIMIT`` empty). Set to a rate (``"1000/s"``, ``"50000/m"``), every
``/api/`` request is counted against its API key (the key's prefix, never its secret: the
middleware runs before the key is verified, so an unknown key is counted too and then refused
by the view), in the cluster's counter store on the counter's owner, so the limit holds across
nodes. Over the limit: 429 ``rate_limited`` with ``Retry-After`` and the RateLimit headers.
Requests without a key are counted by IP. ``/health``, ``/metrics``, the admin, node-to-node
calls (``/internal/``, served before Django) and client streams (also served before Django) are
not counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from cacheapi.settings import cluster_settings
from ratelimit import core, storages

API_PREFIX = "/api/"


@functools.lru_cache(maxsize=8)
def _limit(rate: str) -> core.Limit:
    return core.Limit.build(rate=rate, key="api_key", algorithm="sliding_window", group="api")


class ApiRateLimitMiddleware:
    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        rate = cluster_settings.API_RATE_LIMIT
        if not rate or not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        result = core.check(request, _limit(rate), storage=storages.get_storage("cluster"))
        if result is not None and not result.allowed:
            return core.too_many(result)
        response = self.get_response(request)
        if result is not None:
            for name, value in result.headers.items():
                response[name] = value
        return response
