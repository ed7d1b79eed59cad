"""System checks: a bad ``RATELIMIT`` setting is an error at start-up, not at request time."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from django.conf import settings
from django.core import checks

from ratelimit import algorithms, keys, storages
from ratelimit.rates import parse_rate
from ratelimit.settings import DEFAULTS, ratelimit_settings


def _error(message: str, hint: str, number: int) -> checks.Error:
    return checks.Error(message, hint=hint, id=f"ratelimit.E{number:03d}")


@checks.register(checks.Tags.compatibility)
def check_ratelimit(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    configured = getattr(settings, "RATELIMIT", {}) or {}
    if not isinstance(configured, dict):
        return [_error("RATELIMIT must be a dict.", "See the README, Rate limiting.", 1)]
    unknown = sorted(set(configured) - set(DEFAULTS))
    if unknown:
        found.append(
            _error(
                f"RATELIMIT has unknown settings: {', '.join(unknown)}.",
                f"Known: {', '.join(sorted(DEFAULTS))}.",
                2,
            )
        )
    storage = ratelimit_settings.STORAGE
    try:
        storages.build(storage)
    except ValueError as exc:
        found.append(_error(str(exc), "Use 'local', 'cluster' or 'cache:<alias>'.", 3))
    else:
        if storage.startswith("cache:") and storage[6:] not in settings.CACHES:
            found.append(
                _error(
                    f"RATELIMIT STORAGE {storage!r}: no such cache in CACHES.",
                    "Name an alias of CACHES.",
                    4,
                )
            )
    in_node = bool(os.environ.get("CACHE_NODE_URL"))  # runnode sets it for its worker
    located = (ratelimit_settings.CLUSTER or {}).get("LOCATION")
    if storage == "cluster" and not located and not in_node:
        found.append(
            _error(
                "RATELIMIT STORAGE 'cluster' needs CLUSTER['LOCATION'] outside a cache node.",
                "Set RATELIMIT['CLUSTER'] = {'LOCATION': [node URLs], 'API_KEY': ...}.",
                9,
            )
        )
    for name, validate in (("ALGORITHM", algorithms.get), ("KEY", keys.check_key)):
        try:
            validate(getattr(ratelimit_settings, name))
        except ValueError as exc:
            found.append(_error(f"RATELIMIT {name}: {exc}", "See the README, Rate limiting.", 5))
    for entry in ratelimit_settings.ALLOWLIST:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not isinstance(entry, str) or not entry:
                found.append(
                    _error(
                        f"RATELIMIT ALLOWLIST entry {entry!r}.",
                        "An IP address, a network (CIDR) or a user name.",
                        6,
                    )
                )
    for index, rule in enumerate(ratelimit_settings.RULES):
        found += _check_rule(index, rule)
    return found


def _check_rule(index: int, rule: Any) -> list[checks.CheckMessage]:
    where = f"RATELIMIT RULES[{index}]"
    if not isinstance(rule, dict) or "rate" not in rule:
        return [
            _error(
                f"{where} must be a dict with a 'rate'.",
                "e.g. {'path': '/api/', 'rate': '100/m'}",
                7,
            )
        ]
    problems: list[checks.CheckMessage] = []
    burst = rule.get("burst")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        problems.append(_error(f"{where}: burst {burst!r} must be 1 or more.", "Fix the rule.", 8))
    for field, validate in (
        ("rate", parse_rate),
        ("algorithm", algorithms.get),
        ("key", keys.check_key),
    ):
        if field in rule:
            try:
                validate(rule[field])
            except ValueError as exc:
                problems.append(_error(f"{where}: {exc}", "Fix or remove the rule.", 8))
    return problems
