"""``RateLimitMiddleware``: the rules of ``RATELIMIT["RULES"]``, for every request.

    RATELIMIT = {"RULES": [
        {"path": "/api/", "rate": "100/m", "key": "ip", "algorithm": "sliding_window"},
        {"path": "/login", "rate": "5/m", "method": "POST", "group": "login"},
    ]}

Rules edited in the admin (``ratelimit.models.RateLimitRule``) join them, picked up within
``RULES_RELOAD_SECONDS`` by every process. A rule applies to paths starting with ``path`` (and,
with ``method``, to those methods); every rule that applies is counted, and the first one over
its limit answers 429. The headers of the applying rule with the fewest requests left go on
the response.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import DatabaseError

from ratelimit import core
from ratelimit.settings import ratelimit_settings

log = logging.getLogger(__name__)


def _build(rule: dict[str, Any]) -> tuple[str, core.Limit]:
    path = rule.get("path", "/")
    return path, core.Limit.build(
        rate=rule["rate"],
        key=rule.get("key"),
        algorithm=rule.get("algorithm"),
        group=rule.get("group") or f"rule:{path}:{rule['rate']}",
        method=rule.get("method"),
        burst=rule.get("burst"),
    )


def rules() -> list[tuple[str, core.Limit]]:
    """The rules of the settings and of the admin, as (path prefix, Limit)."""
    cached = _cache.get("settings")
    source = ratelimit_settings.RULES
    if cached is None or cached[0] is not source:
        cached = _cache["settings"] = (source, [_build(rule) for rule in source])
    return cached[1] + (_admin_rules() if ratelimit_settings.DATABASE_RULES else [])


_cache: dict[str, tuple[Any, list[tuple[str, core.Limit]]]] = {}
_admin: dict[str, Any] = {"version": None, "checked": 0.0, "rules": []}
_admin_lock = threading.Lock()


def _admin_rules() -> list[tuple[str, core.Limit]]:
    """The admin's enabled rules, reloaded when ``RuleVersion`` moved (read at most once per
    ``RULES_RELOAD_SECONDS``); the last ones stay while the database cannot be read."""
    now = time.monotonic()
    if now - _admin["checked"] < float(ratelimit_settings.RULES_RELOAD_SECONDS):
        return _admin["rules"]  # type: ignore[no-any-return]
    with _admin_lock:
        if now - _admin["checked"] < float(ratelimit_settings.RULES_RELOAD_SECONDS):
            return _admin["rules"]  # type: ignore[no-any-return]
        _admin["checked"] = now
        try:
            from ratelimit.models import RateLimitRule, RuleVersion

            version = RuleVersion.current()
            if version != _admin["version"]:
                built = []
                for row in RateLimitRule.objects.filter(enabled=True):
                    try:
                        built.append(_build(row.as_rule()))
                    except ValueError as exc:  # saved around the admin's checks
                        log.error("rate limit rule %r ignored: %s", row.name, exc)
                _admin["rules"], _admin["version"] = built, version
        except DatabaseError as exc:
            log.warning("rate limit rules not reloaded (database): %s", exc)
    return _admin["rules"]  # type: ignore[no-any-return]


def forget_admin_rules() -> None:
    """Reload the admin's rules at the next request (tests, settings changes)."""
    with _admin_lock:
        _admin.update(version=None, checked=0.0, rules=[])


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
