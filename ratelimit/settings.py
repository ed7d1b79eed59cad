"""The rate limiter's settings: the ``RATELIMIT`` dict, read through one object.

``ratelimit_settings.STORAGE`` resolves to ``settings.RATELIMIT["STORAGE"]`` or the default
below. Values are cached and dropped on Django's ``setting_changed`` signal, so
``override_settings`` works in tests (as ``cacheapi.settings``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# name -> (default, what it does).
DEFAULTS: dict[str, tuple[Any, str]] = {
    "ENABLED": (True, "Check limits at all (False: every request passes, nothing is counted)."),
    "STORAGE": (
        "local",
        "Where counters live: 'local' (this process), 'cache:<alias>' (a Django cache) or "
        "'cluster' (the cache cluster's reserved counter store).",
    ),
    "CLUSTER": (
        {},
        "For STORAGE 'cluster': {'LOCATION': [node URLs], 'API_KEY': ..., 'CA_BUNDLE': ...}.",
    ),
    "FAIL_OPEN": (True, "When the storage fails: True lets requests through, False answers 429."),
    "ALGORITHM": ("fixed_window", "Default algorithm: fixed_window, sliding_window, token_bucket."),
    "KEY": ("ip", "Default key: ip, user, user_or_ip, api_key, header:<name> or a dotted path."),
    "TRUSTED_PROXIES": (
        0,
        "How many proxies in front of the site append to X-Forwarded-For (0: use REMOTE_ADDR).",
    ),
    "ALLOWLIST": ([], "IP addresses, networks (CIDR) and user names never limited."),
    "RULES": ([], "Middleware rules: [{'path', 'rate', 'key'?, 'algorithm'?, 'method'?, ...}]."),
    "DATABASE_RULES": (True, "Also apply the rules edited in the admin (RateLimitRule)."),
    "RULES_RELOAD_SECONDS": (1.0, "How often the middleware checks whether admin rules changed."),
    "HEADERS": (True, "Send RateLimit-Policy and RateLimit headers on limited routes."),
    "KEY_PREFIX": ("rl", "Prefix of every counter key in the storage."),
}


class RateLimitSettings:
    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown RATELIMIT setting: {name!r}")
        try:
            return self._cache[name]
        except KeyError:
            configured = getattr(settings, "RATELIMIT", {}) or {}
            value = configured.get(name, DEFAULTS[name][0])
            self._cache[name] = value
            return value

    def reload(self) -> None:
        self._cache.clear()


ratelimit_settings = RateLimitSettings()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "RATELIMIT":
        ratelimit_settings.reload()
