"""``RateLimitMiddleware``: the rules of ``RATELIMIT["RULES"]``, for every request.

    RATELIMIT = {"RULES": [
        {"path": "/api/", "rate": "100/m", "key": "ip", "algorithm": "sliding_window"},
        {"path": "/login", "rate": "5/m", "method": "POST", "group": "login"},
    ]}

A rule applies to paths starting with ``path`` (and, with ``method``, to those methods); every
rule that applies is counted, and the first one over its limit answers 429. The headers of the
applying rule with the fewest requests left go on the response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from ratelimit import core
from ratelimit.settings import ratelimit_settings


def rules() -> list[tuple[str, core.Limit]]:
    """The configured rules as (path prefix, Limit), built once per settings change."""
    cached = _cache.get("rules")
    source = ratelimit_settings.RULES
    if cached is None or cached[0] is not source:
        built = [
            (
                rule.get("path", "/"),
                core.Limit.build(
                    rate=rule["rate"],
                    key=rule.get("key"),
                    algorithm=rule.get("algorithm"),
                    group=rule.get("group") or f"rule:{rule.get('path', '/')}:{rule['rate']}",
                    method=rule.get("method"),
                    burst=rule.get("burst"),
                ),
            )
            for rule in source
        ]
        cached = _cache["rules"] = (source, built)
    return cached[1]


_cache: dict[str, tuple[Any, list[tuple[str, core.Limit]]]] = {}


def _check_all(request: Any) -> tuple[Any | None, core.Result | None]:
    """(a 429 answer or None, the result whose headers go on the answer)."""
    shown: core.Result | None = None
    for prefix, limit in rules():
        if not request.path.startswith(prefix):
            continue
        result = core.check(request, limit)
        if result is None:
            continue
        if not result.allowed:
            return core.too_many(result), result
        if shown is None or result.decision.remaining < shown.decision.remaining:
            shown = result
    return None, shown


def _headed(response: Any, result: core.Result | None) -> Any:
    if result is not None:
        for name, value in result.headers.items():
            if name not in response:
                response[name] = value
    return response


class RateLimitMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        denied, result = _check_all(request)
        if denied is not None:
            return denied
        return _headed(self.get_response(request), result)

    async def __acall__(self, request: Any) -> Any:
        denied, result = await sync_to_async(_check_all, thread_sensitive=False)(request)
        if denied is not None:
            return denied
        return _headed(await self.get_response(request), result)
