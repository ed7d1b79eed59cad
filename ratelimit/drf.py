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

import inspect
from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from ratelimit import core

_limits: dict[tuple[type, str, str], core.Limit] = {}


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
        self.result = core.check(request, self._limit(rate, f"drf:{group}"))
        return self.result is None or self.result.allowed

    def _limit(self, rate: str, group: str) -> core.Limit:
        """Built once per throttle class, rate and group (not per request)."""
        cls = type(self)
        found = _limits.get((cls, rate, group))
        if found is None:
            key = inspect.getattr_static(cls, "key")  # a function stays a plain function
            if isinstance(key, staticmethod | classmethod):
                key = key.__get__(None, cls)
            found = _limits[(cls, rate, group)] = core.Limit.build(
                rate=rate, key=key, algorithm=self.algorithm, group=group, burst=self.burst
            )
        return found

    def wait(self) -> float | None:
        if self.result is None or self.result.allowed:
            return None
        return self.result.decision.retry_after
