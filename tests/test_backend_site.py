"""``ClusterCache`` as a Django site's ``CACHES["default"]``: sessions on the cache, the per-view
cache and the template fragment cache, end to end on a live cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client

from tests.cluster import Cluster
from tests.processes import Registry

pytestmark = [pytest.mark.integration, pytest.mark.urls("tests.site.urls")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("site")
    with Cluster(Registry(f"sqlite:///{log_dir / 'registry.sqlite3'}"), log_dir, 3) as cluster:
        yield cluster


@pytest.fixture
def site(settings: Any, cluster: Cluster) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "cacheapi.backends.ClusterCache",
            "LOCATION": ";".join(n.url for n in cluster.nodes),
            "OPTIONS": {"API_KEY": cluster.registry.api_key},
            "KEY_PREFIX": "site",
        }
    }
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    caches["default"].clear()


def test_sessions_live_in_the_cluster(site: None, cluster: Cluster) -> None:
    browser, other = Client(), Client()
    assert [browser.get("/visits").json()["visits"] for _ in range(3)] == [1, 2, 3]
    assert other.get("/visits").json()["visits"] == 1  # its own session
    session_key = browser.cookies["sessionid"].value
    assert caches["default"].get(f"django.contrib.sessions.cache{session_key}") == {"visits": 3}
    items = sum(cluster.stats(n)["items"] for n in cluster.nodes)
    assert items >= 2 * 2  # two sessions, two copies each (REPLICAS=2)


def test_cache_page_serves_the_second_request_from_the_cluster(site: None) -> None:
    first = Client().get("/cached")
    second = Client().get("/cached")
    assert first.content == second.content
    assert first.content.startswith(b"render #")
    caches["default"].clear()
    assert Client().get("/cached").content != first.content  # rendered again


def test_template_fragments_are_cached_per_variation(site: None) -> None:
    a1 = Client().get("/fragment?who=ann").content
    a2 = Client().get("/fragment?who=ann").content
    b = Client().get("/fragment?who=bob").content
    assert a1 == a2
    assert b.startswith(b"hello bob")
    assert b != a1
