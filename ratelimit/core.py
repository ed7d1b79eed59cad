"""One limit, checked for one request: the part the middleware, decorator and throttle share.

A ``Limit`` names a rate, an algorithm, what to count by (``key``), a ``group`` (limits of the
same group share counters), the methods it applies to, and for a token bucket its ``burst``.
``check(request, limit)`` answers with a ``Result``: the storage's ``Decision``, and the
headers to send (``RateLimit-Policy`` and ``RateLimit`` in the IETF httpapi draft's
structured-field form; ``Retry-After`` when denied). Requests from the allowlist, with another
method, or with limiting off are not counted (``None``).

When the storage fails, the request is let through (``FAIL_OPEN``, the default) or refused as
if over its limit, and the failure is logged and counted (``failures``), never a 500.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ratelimit import keys
from ratelimit.algorithms import Decision
from ratelimit.rates import Rate, parse_rate
from ratelimit.settings import ratelimit_settings
from ratelimit.storages import Storage, StorageError, get_storage

log = logging.getLogger(__name__)
failures = 0  # storage failures seen by this process (logged each time)


@dataclass(frozen=True)
class Limit:
    rate: Rate
    key: Any = "ip"  # a key name, a callable, or a dotted path (ratelimit.keys)
    algorithm: str = "fixed_window"
    group: str = "default"
    methods: frozenset[str] | None = None  # None: every method
    burst: int | None = None
    cost: int = 1
    storage: str | None = None  # a storage name; None: RATELIMIT["STORAGE"]

    @classmethod
    def build(
        cls,
        *,
        rate: str | Rate,
        key: Any = None,
        algorithm: str | None = None,
        group: str = "default",
        method: str | Iterable[str] | None = None,
        burst: int | None = None,
        cost: int = 1,
        storage: str | None = None,
    ) -> Limit:
        from ratelimit import algorithms

        name = algorithm or ratelimit_settings.ALGORITHM
        algorithms.get(name)
        if burst is not None and (
            isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
        ):
            raise ValueError(f"burst {burst!r}: a whole number, 1 or more")
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError(f"cost {cost!r}: a whole number, 1 or more")
        chosen = key if key is not None else ratelimit_settings.KEY
        keys.check_key(chosen)
        if isinstance(method, str):
            method = [method]
        methods = frozenset(m.upper() for m in method) if method is not None else None
        limit = cls(parse_rate(rate), chosen, name, group, methods, burst, cost, storage)
        _by_group.setdefault(group, set()).add(limit)
        return limit


_by_group: dict[str, set[Limit]] = {}  # every limit built, by group: for reset(value, group)


@dataclass
class Result:
    decision: Decision
    limit: Limit
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def counter_key(limit: Limit, value: str) -> str:
    """The storage key of one counter: the prefix, group, algorithm and rate in clear, the
    request's key value hashed (bounded length, nothing personal in the store)."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return _counter_prefix(limit, ratelimit_settings.KEY_PREFIX) + digest


@functools.lru_cache(maxsize=1024)
def _counter_prefix(limit: Limit, prefix: str) -> str:
    rate = f"{limit.rate.limit}-{limit.rate.period:g}"
    return f"{prefix}:{limit.group}:{limit.algorithm}:{rate}:"


def allowlisted(request: Any) -> bool:
    entries = ratelimit_settings.ALLOWLIST
    if not entries:
        return False
    user = getattr(request, "user", None)
    name = getattr(user, "get_username", lambda: None)() if user is not None else None
    address = keys.client_ip(request)  # behind TRUSTED_PROXIES: the client's, not the proxy's
    ip: Any = None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_network(address).network_address  # an IPv6 client's /64
    for entry in entries:
        if name is not None and getattr(user, "is_authenticated", False) and entry == name:
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def check(
    request: Any, limit: Limit, *, count: bool = True, storage: Storage | None = None
) -> Result | None:
    """Count this request against ``limit`` (in ``storage``, default ``RATELIMIT["STORAGE"]``);
    None when the limit does not apply to it."""
    if not ratelimit_settings.ENABLED:
        return None
    if limit.methods is not None and request.method.upper() not in limit.methods:
        return None
    if allowlisted(request):
        return None
    value = keys.resolve(limit.key, limit.group, request)
    cost = limit.cost if count else 0
    try:
        decision = (storage or get_storage(limit.storage)).check(
            counter_key(limit, value), limit.algorithm, limit.rate, cost, limit.burst
        )
    except StorageError as exc:
        decision = on_failure(limit, exc)
    return Result(decision, limit, headers(limit, decision))


def on_failure(limit: Limit, exc: Exception) -> Decision:
    global failures
    failures += 1
    open_ = bool(ratelimit_settings.FAIL_OPEN)
    log.warning(
        "rate limit storage failed (%s); failing %s for group %r",
        exc,
        "open" if open_ else "closed",
        limit.group,
    )
    period = limit.rate.period
    if open_:
        return Decision(True, limit.rate.limit, limit.rate.limit, period, 0.0)
    return Decision(False, limit.rate.limit, 0, period, min(period, 60.0))


def headers(limit: Limit, decision: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers), and Retry-After
    when denied."""
    out: dict[str, str] = {}
    if ratelimit_settings.HEADERS:
        name = _sf_string(limit.group)
        window = math.ceil(limit.rate.period)
        out["RateLimit-Policy"] = f'"{name}";q={decision.limit};w={window}'
        reset = max(0, math.ceil(decision.reset_after))
        out["RateLimit"] = f'"{name}";r={decision.remaining};t={reset}'
    if not decision.allowed:
        retry = decision.retry_after
        out["Retry-After"] = str(max(1, math.ceil(retry)) if math.isfinite(retry) else 86400)
    return out


def _sf_string(text: str) -> str:
    """``text`` as the inside of a structured-field string: printable ASCII, with ``\\`` and
    ``"`` escaped; anything else is replaced by a short digest of the name."""
    if not all(" " <= c <= "~" for c in text):
        return (
            "g-" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
        )
    return text.replace("\\", "\\\\").replace('"', '\\"')


def too_many(result: Result) -> Any:
    """The 429 answer: the project's error envelope, with the headers."""
    from django.http import JsonResponse

    retry = result.headers.get("Retry-After", "1")
    body = {
        "error": {
            "code": "rate_limited",
            "message": f"rate limit {result.limit.rate} for {result.limit.group!r} exceeded; "
            f"retry in {retry} s",
        }
    }
    response = JsonResponse(body, status=429)
    for name, value in result.headers.items():
        response[name] = value
    return response


def reset(value: str, group: str | Limit) -> None:
    """Forget the counters of key value ``value`` (what the limit's ``key`` gave: an IP, a
    ``user:<pk>``, ...) in ``group`` (every limit of that group; or one ``Limit``, e.g. a view's
    ``.ratelimit``): after a successful login, reset its failed-attempts limit."""
    limits = [group] if isinstance(group, Limit) else list(_by_group.get(group, ()))
    for limit in limits:
        get_storage(limit.storage).reset(counter_key(limit, value), limit.rate)
