"""What a limit counts by: the request's ``key``.

``ip`` (the client address; behind ``TRUSTED_PROXIES`` proxies, the address the outermost of
them saw, from the right of ``X-Forwarded-For``; an IPv6 client counts by its /64), ``user``
(the user's pk; anonymous requests share one key), ``user_or_ip``, ``api_key`` (the key's
prefix from ``Authorization: Api-Key`` or ``X-API-Key``, never the secret; else the IP),
``header:<name>``, a callable ``(group, request) -> str``, or the dotted path of one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from django.utils.module_loading import import_string

from ratelimit.settings import ratelimit_settings

KeyFunc = Callable[[str, Any], str | None]
NAMED = ("ip", "user", "user_or_ip", "api_key")


def client_ip(request: Any) -> str:
    meta = request.META
    address = meta.get("REMOTE_ADDR", "")
    trusted = int(ratelimit_settings.TRUSTED_PROXIES or 0)
    if trusted > 0:
        hops = [h.strip() for h in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= trusted:
            address = hops[-trusted]
    if ":" not in address:  # IPv4 (or garbage): counted as given, no parsing on the hot path
        return address or "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _user(request: Any) -> str | None:
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.pk}"
    return None


def _api_key(request: Any) -> str | None:
    meta = request.META
    raw = meta.get("HTTP_X_API_KEY") or ""
    header = meta.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "api-key" and value.strip():
        raw = value.strip()
    prefix = raw.partition(".")[0]
    return f"key:{prefix}" if prefix else None


def resolve(key: str | KeyFunc, group: str, request: Any) -> str:
    """The value ``key`` names for this request."""
    if callable(key):
        value = key(group, request)
    elif key == "ip":
        value = client_ip(request)
    elif key == "user":
        value = _user(request) or "user:anonymous"
    elif key == "user_or_ip":
        value = _user(request) or client_ip(request)
    elif key == "api_key":
        value = _api_key(request) or client_ip(request)
    elif key.startswith("header:"):
        name = "HTTP_" + key[len("header:") :].upper().replace("-", "_")
        value = f"{key}:{request.META.get(name, '')}"
    else:
        value = import_string(key)(group, request)
    return str(value)


def check_key(key: Any) -> None:
    """ValueError if ``key`` names no key (for the system checks)."""
    if callable(key) or key in NAMED:
        return
    if isinstance(key, str) and key.startswith("header:") and len(key) > len("header:"):
        return
    if isinstance(key, str) and "." in key:
        try:
            found = import_string(key)
        except ImportError as exc:
            raise ValueError(f"key {key!r}: {exc}") from exc
        if callable(found):
            return
    raise ValueError(
        f"key {key!r}: one of {', '.join(NAMED)}, header:<name>, or a callable's dotted path"
    )
