"""The nodes protect their own API with the rate limiter: ``API_RATE_LIMIT`` per API key.

Off by default (``API_RATE_LIMIT`` empty). Set to a rate (``"1000/s"``, ``"50000/m"``), every
``/api/`` request and every client-stream frame is counted against its API key (the key's
prefix, never its secret, and only once the key verifies: a made-up key is counted by IP), in
the cluster's counter store on the counter's owner, so the limit holds across nodes. Over the
limit: 429 ``rate_limited`` with ``Retry-After`` and the RateLimit headers. ``/health``,
``/metrics``, the admin and node-to-node calls (``/internal/``) are not counted.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError

from cacheapi import errors
from cacheapi.settings import cluster_settings
from ratelimit import core, keys, storages

API_PREFIX = "/api/"


def _verified_key_or_ip(group: str, request: Any) -> str:
    """The API key's prefix once the key verifies (a made-up prefix must not spend another
    key's quota, nor a fresh one dodge the limit), else the client's IP."""
    from cacheapi.api.auth import presented_key, verify_key

    raw = presented_key(request.META)
    if raw is not None:
        try:
            principal = verify_key(raw)
        except DatabaseError:
            principal = None
        if principal is not None:
            return "key:" + raw.partition(".")[0]
    return keys.client_ip(request)


@functools.lru_cache(maxsize=8)
def _limit(rate: str) -> core.Limit:
    return core.Limit.build(
        rate=rate, key=_verified_key_or_ip, algorithm="sliding_window", group="api"
    )


def stream_over_limit(raw_key: str) -> core.Result | None:
    """For a client stream's frame (its key already verified): the refusal when the key is
    over ``API_RATE_LIMIT``, else None."""
    rate = cluster_settings.API_RATE_LIMIT
    if not rate:
        return None
    limit = _limit(rate)
    counter = core.counter_key(limit, "key:" + raw_key.partition(".")[0])
    try:
        decision = storages.get_storage("cluster").check(
            counter, limit.algorithm, limit.rate, limit.cost, limit.burst
        )
    except storages.StorageError as exc:
        decision = core.on_failure(limit, exc)
    return None if decision.allowed else core.Result(decision, limit, core.headers(limit, decision))


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


def counter_namespace(principal: Any, raw_key: str | None, key: str, reset: bool) -> str:
    """A client's counter key inside its API key's own namespace (a digest of the key's
    prefix; the node-to-node secret's calls share one), so that one key's caller can neither
    read, spend nor reset another's counters, nor the node's own (``API_RATE_LIMIT``'s have no
    namespace). A reset needs the ``admin`` scope."""
    if reset and not principal.has_scope("admin"):
        raise errors.Forbidden("resetting a counter needs the 'admin' scope")
    owner = "cluster" if getattr(principal, "internal", False) or not raw_key else raw_key
    owner = owner.partition(".")[0]
    space = hashlib.blake2b(owner.encode("utf-8", "surrogatepass"), digest_size=6)
    scoped = f"{space.hexdigest()}/{key}"
    if len(scoped.encode("utf-8")) > 250:
        raise errors.InvalidKey("a counter key is at most 237 bytes")
    return scoped
