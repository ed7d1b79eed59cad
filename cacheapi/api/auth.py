"""Who may call: API keys for clients, the cluster secret for nodes, scopes per action.

Verification costs no database query on the hot path: a verified (or rejected) key is
remembered in-process for AUTH_CACHE_SECONDS, so a revocation takes effect on every node within
that time (at once on the node that revoked it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from cacheapi.peer.wire import secrets_match
from cacheapi.settings import cluster_settings

log = logging.getLogger(__name__)
INTERNAL_SCOPES = frozenset({"read", "write", "admin", "internal"})
AUTH_SCHEME = "Api-Key"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as DRF's ``request.user``: an API key's name and scopes, or a peer node."""

    name: str
    scopes: frozenset[str]
    internal: bool = False

    is_authenticated = True
    is_active = True

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class KeyCache:
    """Presented key -> Principal (or None for a rejected key), each for ``ttl`` seconds."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._entries: OrderedDict[str, tuple[Principal | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self.clock = clock

    def get(self, raw: str) -> tuple[bool, Principal | None]:
        with self._lock:
            hit = self._entries.get(raw)
            if hit is None or hit[1] <= self.clock():
                return False, None
            return True, hit[0]

    def stale(self, raw: str) -> tuple[bool, Principal | None]:
        """The last verdict for ``raw`` even if expired (used while the registry is down)."""
        with self._lock:
            hit = self._entries.get(raw)
            return (False, None) if hit is None else (True, hit[0])

    def put(self, raw: str, principal: Principal | None, ttl: float) -> None:
        with self._lock:
            self._entries[raw] = (principal, self.clock() + ttl)
            self._entries.move_to_end(raw)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


key_cache = KeyCache()


def verify_key(raw: str) -> Principal | None:
    """Check a presented key, from the cache when possible. None: unknown or revoked.

    If the registry cannot be read, the last verdict for this key stands (a registry outage
    must not look like a revocation); a key never seen raises the DatabaseError."""
    cached, principal = key_cache.get(raw)
    if cached:
        return principal
    try:
        principal = _load_principal(raw)
    except DatabaseError:
        known, principal = key_cache.stale(raw)
        if not known:
            raise
        log.warning("key registry unreachable; using the last verdict for key %s", raw[:12])
        return principal
    key_cache.put(raw, principal, cluster_settings.AUTH_CACHE_SECONDS)
    return principal


def retire_stale_connections() -> None:
    """Close database connections that are broken or past CONN_MAX_AGE, before a query.

    The API's requests skip Django's request signals (``cache_project.serving.ApiHandler``),
    whose receivers do this for every request; an API call needs it only before one of its
    rare queries. Never inside a transaction, where closing would break it (tests run in one).
    """
    from django.db import close_old_connections, connection

    if not connection.in_atomic_block:
        close_old_connections()


def _load_principal(raw: str) -> Principal | None:
    from cacheapi.models import ApiKey

    retire_stale_connections()
    prefix, _, secret = raw.partition(".")
    if not prefix or not secret:
        return None
    key = ApiKey.objects.active().filter(prefix=prefix).first()
    if key is None or not key.check_secret(secret):
        return None
    return Principal(name=key.name, scopes=key.scope_set)


def is_cluster_secret(presented: str) -> bool:
    return secrets_match(presented, cluster_settings.SECRET)


def presented_key(meta: dict[str, Any]) -> str | None:
    header = meta.get("HTTP_AUTHORIZATION")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == AUTH_SCHEME.lower() and value.strip():
            return value.strip()
    return meta.get("HTTP_X_API_KEY") or None


class RegistryUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = "the key registry is unreachable and this key has not been seen; retry"
    default_code = "unavailable"


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Api-Key <key>`` or ``X-API-Key``; peers send ``X-Cluster-Secret``."""

    def authenticate(self, request: Any) -> tuple[Principal, str] | None:
        meta = request._request.META
        secret = meta.get("HTTP_X_CLUSTER_SECRET")
        if secret is not None:
            if is_cluster_secret(secret):
                return Principal("cluster", INTERNAL_SCOPES, internal=True), secret
            # 403, as the peer protocol answers a wrong secret: the caller claims to be a node
            # and is not one (a wrong API key, a credential that may be mistyped, is 401).
            raise exceptions.PermissionDenied("wrong cluster secret")
        raw = presented_key(meta)
        if raw is None:
            return None
        try:
            principal = verify_key(raw)
        except DatabaseError as exc:
            raise RegistryUnavailable() from exc
        if principal is None:
            raise exceptions.AuthenticationFailed("unknown or revoked API key")
        return principal, raw

    def authenticate_header(self, request: Any) -> str:
        return AUTH_SCHEME


class HasScope(BasePermission):
    """The view names the scope each action needs in ``scopes`` (action -> scope).

    Keeps no state: one instance serves every request (``cacheapi.api.views``)."""

    message = "this API key lacks the scope this call needs"

    def has_permission(self, request: Any, view: Any) -> bool:
        principal = request.user
        if principal is None or not getattr(principal, "is_authenticated", False):
            raise exceptions.NotAuthenticated("send an API key: Authorization: Api-Key <key>")
        action_map = getattr(view, "action_map", None)
        if action_map is not None and request.method.lower() not in action_map:
            return True  # no action for this method: the viewset answers 405 itself
        needed = view.scopes.get(getattr(view, "action", None) or request.method.lower())
        if needed is None:
            return False
        if not principal.has_scope(needed):
            raise exceptions.PermissionDenied(f"this API key lacks the {needed!r} scope")
        return True
