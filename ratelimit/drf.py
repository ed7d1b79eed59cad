"""``RateLimitThrottle``: the limiter as a DRF throttle.

    REST_FRAMEWORK = {"DEFAULT_THROTTLE_CLASSES": ["ratelimit.drf.RateLimitThrottle"],
                      "DEFAULT_THROTTLE_RATES": {"search": "30/m"}}

    class LoginThrottle(RateLimitThrottle):
        rate = "5/m"

A subclass sets ``rate`` (or ``scope``, looked up in ``DEFAULT_THROTTLE_RATES``), and may set
``key`` (default ``user_or_ip``; DRF's authenticated user is there by then), ``algorithm`` and
``burst``. Unlike DRF's own throttles, the count is one atomic step in the storage, never a
read-modify-write of a request history, so concurrent requests are never over-admitted. DRF
answers 429 with ``Retry-After`` from ``wait()``.
"""

from __future__ import annotations

from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from ratelimit import core


class RateLimitThrottle(BaseThrottle):
    rate: str | None = None
    scope: str | None = None
    key: Any = "user_or_ip"
    algorithm: str | None = None
    burst: int | None = None

    def get_rate(self, view: Any) -> str | None:
        if self.rate:
            return self.rate
        scope = self.scope or getattr(view, "throttle_scope", None)
        if scope is None:
            return None
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(scope)
        return None if rate is None else str(rate)

    def allow_request(self, request: Any, view: Any) -> bool:
        self.result: core.Result | None = None
        rate = self.get_rate(view)
        if rate is None:
            return True
        group = self.scope or getattr(view, "throttle_scope", None) or type(self).__name__
        limit = core.Limit.build(
            rate=rate,
            key=self.key,
            algorithm=self.algorithm,
            group=f"drf:{group}",
            burst=self.burst,
        )
        self.result = core.check(request, limit)
        return self.result is None or self.result.allowed

    def wait(self) -> float | None:
        if self.result is None or self.result.allowed:
            return None
        return self.result.decision.retry_after
