"""System checks for configurations that would silently break the cache."""

from __future__ import annotations

import os
from typing import Any

from django.core import checks

from cacheapi.settings import cluster_settings

# No "sync": with one sync worker, two nodes forwarding to each other would block each
# other until the timeout.
SUPPORTED_WORKERS = ("gevent", "gthread")


@checks.register(checks.Tags.compatibility)
def check_single_worker(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    if cluster_settings.WORKERS != 1:
        found.append(
            checks.Error(
                f"CACHE_CLUSTER['WORKERS'] is {cluster_settings.WORKERS}; a node must run exactly "
                "one gunicorn worker, because the store lives inside the worker process and "
                "several workers would be several caches that disagree.",
                hint="Set WORKERS to 1 and scale by adding nodes (one per core).",
                id="cacheapi.E001",
            )
        )
    if cluster_settings.WORKER_CLASS not in SUPPORTED_WORKERS:
        found.append(
            checks.Error(
                f"CACHE_CLUSTER['WORKER_CLASS'] is {cluster_settings.WORKER_CLASS!r}.",
                hint=f"Use one of {', '.join(SUPPORTED_WORKERS)}.",
                id="cacheapi.E002",
            )
        )
    return found


DEV_SECRET_PREFIX = "dev-insecure-"


@checks.register(checks.Tags.security, deploy=True)
def check_cluster_secret(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings

    if (os.environ.get("CACHE_SECRET") or "").strip() or (
        getattr(settings, "CACHE_CLUSTER", {}) or {}
    ).get("SECRET"):
        return []
    if settings.SECRET_KEY.startswith(DEV_SECRET_PREFIX):
        return [
            checks.Warning(
                "The cluster secret is derived from the development SECRET_KEY, so anyone who "
                "reads this repository can forge node-to-node calls.",
                hint="Set DJANGO_SECRET_KEY or CACHE_SECRET to a long random value on every node.",
                id="cacheapi.W001",
            )
        ]
    return []


@checks.register(checks.Tags.security, deploy=True)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check --deploy``: the repository's development SECRET_KEY is an error."""
    from django.conf import settings

    if settings.SECRET_KEY.startswith(DEV_SECRET_PREFIX):
        return [
            checks.Error(
                "SECRET_KEY is the development default from this repository: anyone can forge "
                "admin sessions and password-reset tokens.",
                hint="Set DJANGO_SECRET_KEY to a long random value (the same on every node).",
                id="cacheapi.E003",
            )
        ]
    return []
