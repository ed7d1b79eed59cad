"""The rate limiter: storages (one contract, three backends), exactness under concurrency, the
decorator, middleware and DRF throttle in a small site, failure policies against a real
unreachable node, and the start-up checks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks
from django.test import Client, override_settings

from ratelimit import core, storages
from ratelimit.rates import Rate
from ratelimit.storages import CacheStorage, LocalStorage, StorageError
from tests.cluster import Cluster
from tests.processes import Registry, free_port

SITE = pytest.mark.urls("tests.site.urls")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("ratelimit")
    with Cluster(Registry(f"sqlite:///{log_dir / 'registry.sqlite3'}"), log_dir, 3) as cluster:
        yield cluster


def caches_with(cluster: Cluster | None = None) -> dict[str, Any]:
    configured: dict[str, Any] = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rl"},
        "dead": {
            "BACKEND": "cacheapi.backends.ClusterCache",
            "LOCATION": f"http://127.0.0.1:{free_port()}",
            "OPTIONS": {"API_KEY": "k", "SOCKET_TIMEOUT": 1},
        },
    }
    if cluster is not None:
        configured["cluster"] = {
            "BACKEND": "cacheapi.backends.ClusterCache",
            "LOCATION": [n.url for n in cluster.nodes],
            "OPTIONS": {"API_KEY": cluster.registry.api_key},
        }
    return configured


@pytest.fixture(params=["local", "cache:locmem", "cache:cluster", "cluster"])
def storage(request: pytest.FixtureRequest) -> Iterator[Any]:
    needs_cluster = request.param in ("cache:cluster", "cluster")
    cluster = request.getfixturevalue("cluster") if needs_cluster else None
    ratelimit = {}
    if cluster is not None:
        urls = [n.url for n in cluster.nodes]
        ratelimit = {"CLUSTER": {"LOCATION": urls, "API_KEY": cluster.registry.api_key}}
    with override_settings(CACHES=caches_with(cluster), RATELIMIT=ratelimit):
        yield storages.build(request.param)


def fresh() -> str:
    return f"k:{uuid.uuid4().hex}"


class TestStorageContract:
    @pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
    def test_admits_the_limit_then_refuses(self, storage: Any, algorithm: str) -> None:
        key = fresh()
        decisions = [storage.check(key, algorithm, Rate(5, 60.0)) for _ in range(7)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
        assert decisions[0].limit == 5
        assert decisions[4].remaining == 0
        assert decisions[-1].retry_after > 0

    def test_keys_and_rates_are_apart(self, storage: Any) -> None:
        a, b = fresh(), fresh()
        assert storage.check(a, "fixed_window", Rate(1, 60.0)).allowed
        assert not storage.check(a, "fixed_window", Rate(1, 60.0)).allowed
        assert storage.check(b, "fixed_window", Rate(1, 60.0)).allowed

    def test_reset_forgets_the_counter(self, storage: Any) -> None:
        key, rate = fresh(), Rate(1, 60.0)
        assert storage.check(key, "fixed_window", rate).allowed
        assert not storage.check(key, "fixed_window", rate).allowed
        storage.reset(key, rate)
        assert storage.check(key, "fixed_window", rate).allowed

    @pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
    def test_exact_under_16_threads(self, storage: Any, algorithm: str) -> None:
        key, admitted = fresh(), []
        lock = threading.Lock()

        def hammer() -> None:
            for _ in range(20):
                if storage.check(key, algorithm, Rate(100, 3600.0)).allowed:
                    with lock:
                        admitted.append(1)

        threads = [threading.Thread(target=hammer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if algorithm == "token_bucket" and isinstance(storage, CacheStorage):
            # A Django cache has no atomic step for a bucket (documented): never fewer.
            assert len(admitted) >= 100
        else:
            assert len(admitted) == 100  # 320 tries, exactly the limit admitted


def test_local_storage_keeps_at_most_max_keys() -> None:
    store = LocalStorage(max_keys=3)
    for i in range(10):
        store.check(f"k{i}", "fixed_window", Rate(1, 60.0))
    assert len(store._states) == 3


def test_an_unknown_storage_or_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="'local', 'cluster' or 'cache:<alias>'"):
        storages.build("redis")
    with pytest.raises(ValueError, match="unknown algorithm"):
        LocalStorage().check("k", "leaky", Rate(1, 1.0))


@SITE
class TestSite:
    @pytest.fixture(autouse=True)
    def _site(self, settings: Any, db: None) -> None:
        from ratelimit.middleware import forget_admin_rules

        settings.CACHES = caches_with()
        settings.RATELIMIT = {"STORAGE": "local"}
        storages.reset()
        forget_admin_rules()

    def test_the_decorator_answers_429_with_headers(self) -> None:
        client = Client(REMOTE_ADDR="10.0.0.1")
        answers = [client.get("/limited") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0]["RateLimit-Policy"].startswith('"tests.site.urls.limited";q=3;w=60')
        assert answers[0]["RateLimit"].startswith('"tests.site.urls.limited";r=2;t=')
        denied = answers[-1]
        assert denied.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(denied["Retry-After"]) <= 60
        assert Client(REMOTE_ADDR="10.0.0.2").get("/limited").status_code == 200  # its own

    def test_block_false_marks_the_request(self) -> None:
        client = Client(REMOTE_ADDR="10.0.0.3")
        assert [client.get("/flagged").json()["limited"] for _ in range(3)] == [
            False,
            False,
            True,
        ]

    def test_method_filters_and_groups(self) -> None:
        client = Client(REMOTE_ADDR="10.0.0.4")
        assert all(client.get("/posts-only").status_code == 200 for _ in range(5))
        assert client.post("/posts-only").status_code == 200
        assert client.get("/shares-a-group").status_code == 200  # one group, one counter
        assert client.post("/posts-only").status_code == 429

    def test_class_based_and_header_keys(self) -> None:
        a, b = Client(HTTP_X_CLIENT="a"), Client(HTTP_X_CLIENT="b")
        assert [a.get("/search").status_code for _ in range(3)] == [200, 200, 429]
        assert b.get("/search").status_code == 200

    def test_async_views(self) -> None:
        client = Client(REMOTE_ADDR="10.0.0.5")
        answers = [client.get("/async") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[0].content == b"async ok"

    def test_the_drf_throttle(self) -> None:
        client = Client(REMOTE_ADDR="10.0.0.6")
        answers = [client.get("/throttled") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert int(answers[-1]["Retry-After"]) >= 1

    def test_the_middleware_applies_rules_by_path_and_the_allowlist(self, settings: Any) -> None:
        settings.MIDDLEWARE = ["ratelimit.middleware.RateLimitMiddleware"]
        settings.RATELIMIT = {
            "STORAGE": "local",
            "RULES": [{"path": "/api/", "rate": "2/m", "algorithm": "sliding_window"}],
            "ALLOWLIST": ["192.168.0.0/16"],
        }
        client = Client(REMOTE_ADDR="10.0.0.7")
        answers = [client.get("/api/plain") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert "RateLimit" in answers[0]
        assert all(client.get("/open/plain").status_code == 200 for _ in range(5))
        assert "RateLimit" not in client.get("/open/plain")
        trusted = Client(REMOTE_ADDR="192.168.1.9")
        assert all(trusted.get("/api/plain").status_code == 200 for _ in range(5))

    def test_the_client_ip_behind_trusted_proxies(self, settings: Any) -> None:
        settings.RATELIMIT = {"STORAGE": "local", "TRUSTED_PROXIES": 1}
        spoofed = [
            Client(REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR=f"1.1.1.{i}, 203.0.113.7")
            for i in range(4)
        ]
        # The proxy saw 203.0.113.7 every time: a forged left part changes nothing.
        assert [c.get("/limited").status_code for c in spoofed] == [200, 200, 200, 429]

    @pytest.mark.parametrize(("fail_open", "status"), [(True, 200), (False, 429)])
    def test_an_unreachable_storage_fails_open_or_closed(
        self, settings: Any, fail_open: bool, status: int
    ) -> None:
        settings.RATELIMIT = {"STORAGE": "cache:dead", "FAIL_OPEN": fail_open}
        before = core.failures
        answer = Client(REMOTE_ADDR="10.0.0.8").get("/limited")
        assert answer.status_code == status
        assert core.failures == before + 1

    def test_an_admin_rule_takes_effect_without_a_restart(
        self, settings: Any, admin_client: Client
    ) -> None:
        from ratelimit.middleware import forget_admin_rules
        from ratelimit.models import RateLimitRule

        settings.MIDDLEWARE = [*settings.MIDDLEWARE, "ratelimit.middleware.RateLimitMiddleware"]
        settings.RATELIMIT = {"STORAGE": "local", "RULES_RELOAD_SECONDS": 0}
        forget_admin_rules()
        client = Client(REMOTE_ADDR="10.0.1.1")
        assert all(client.get("/open/plain").status_code == 200 for _ in range(3))
        bad = {
            "name": "x",
            "path": "/open/",
            "rate": "lots",
            "algorithm": "fixed_window",
            "key": "ip",
            "enabled": "on",
        }
        page = admin_client.post("/admin/ratelimit/ratelimitrule/add/", bad)
        assert page.status_code == 200  # the form again, with the error
        assert b"is not like" in page.content
        assert RateLimitRule.objects.count() == 0
        good = {**bad, "rate": "2/m"}
        assert admin_client.post("/admin/ratelimit/ratelimitrule/add/", good).status_code == 302
        answers = [client.get("/open/plain") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[0]["RateLimit-Policy"].startswith('"admin:')
        RateLimitRule.objects.update(enabled=False)  # a bulk change reloads as well
        assert client.get("/open/plain").status_code == 200

    def test_reset_helper(self) -> None:
        from tests.site.urls import limited

        client = Client(REMOTE_ADDR="10.0.0.9")
        assert [client.get("/limited").status_code for _ in range(4)][-1] == 429
        core.reset("10.0.0.9", limited.ratelimit)
        assert client.get("/limited").status_code == 200
        assert [client.get("/limited").status_code for _ in range(3)][-1] == 429
        core.reset("10.0.0.9", "tests.site.urls.limited")  # by group name
        assert client.get("/limited").status_code == 200


def _hammer_from_a_process(urls: list[str], api_key: str, key: str, algorithm: str) -> int:
    from cacheapi.client import CacheClient

    client = CacheClient(urls, api_key=api_key)
    try:
        return sum(client.ratelimit(key, "100/h", algorithm)["allowed"] for _ in range(50))
    finally:
        client.close()


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_exact_from_4_processes_against_the_cluster(cluster: Cluster, algorithm: str) -> None:
    import multiprocessing

    key = fresh()
    urls = [n.url for n in cluster.nodes]
    args = [(urls, cluster.registry.api_key, key, algorithm)] * 4
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        admitted = pool.starmap(_hammer_from_a_process, args)
    assert sum(admitted) == 100  # 200 tries from 4 processes, exactly the limit


def test_counters_live_apart_from_user_data(cluster: Cluster) -> None:
    """A counter key is not a user key: the same name in the user store is another thing,
    and flushing user data leaves counters alone."""
    from cacheapi.client import CacheClient

    client = CacheClient([n.url for n in cluster.nodes], api_key=cluster.registry.api_key)
    try:
        key = fresh()
        assert client.ratelimit(key, "2/h")["remaining"] == 1
        assert client.get(key) is None  # not in the user store
        client.set(key, "user data")
        assert client.ratelimit(key, "2/h")["remaining"] == 0
        assert client.get(key) == "user data"
        assert client.ratelimit(key, "2/h", reset=True)["remaining"] == 2
        assert client.ratelimit(key, "2/h")["allowed"] is True
    finally:
        client.close()


def test_a_storage_error_is_a_storage_error(settings: Any) -> None:
    settings.CACHES = caches_with()
    with pytest.raises(StorageError):
        storages.build("cache:dead").check("k", "fixed_window", Rate(1, 1.0))


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"RULES": [{"path": "/", "rate": "lots"}]}, "is not like"),
        ({"RULES": [{"path": "/", "rate": "1/m", "algorithm": "leaky"}]}, "unknown algorithm"),
        ({"RULES": [{"path": "/"}]}, "must be a dict with a 'rate'"),
        ({"STORAGE": "cache:nope"}, "no such cache"),
        ({"STORAGE": "redis"}, "'local', 'cluster' or 'cache:<alias>'"),
        ({"KEY": "nobody"}, "key 'nobody'"),
        ({"ALGORITHM": "x"}, "unknown algorithm"),
        ({"SPEED": 1}, "unknown settings"),
        ({"STORAGE": "cluster"}, "needs CLUSTER['LOCATION'] outside a cache node"),
    ],
)
def test_bad_settings_fail_the_start_up_checks(setting: dict[str, Any], fragment: str) -> None:
    with override_settings(RATELIMIT=setting):
        found = [m for m in checks.run_checks() if m.id and m.id.startswith("ratelimit.")]
    assert any(fragment in m.msg for m in found), [m.msg for m in found]


def test_good_settings_pass_the_checks() -> None:
    good = {"STORAGE": "local", "RULES": [{"path": "/api/", "rate": "100/m", "key": "ip"}]}
    with override_settings(RATELIMIT=good):
        assert [m for m in checks.run_checks() if m.id and m.id.startswith("ratelimit.")] == []


def test_a_node_can_limit_its_api_per_api_key(tmp_path: Any) -> None:
    """A node with API_RATE_LIMIT: each API key gets that many /api/ calls, counted in the
    cluster's counter store; /health is never counted."""
    import requests

    from tests.processes import manage, running_node

    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    other = manage(registry.env, "createapikey", "--name", "other", "--quiet").strip()
    with running_node(registry, "n1", tmp_path, CACHE_API_RATE_LIMIT="3/m") as node:
        mine = requests.Session()
        mine.headers["X-API-Key"] = registry.api_key
        answers = [mine.get(f"{node.url}/api/v1/keys/k", timeout=5) for _ in range(4)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert answers[0].headers["RateLimit-Policy"] == '"api";q=3;w=60'
        assert answers[3].json()["error"]["code"] == "rate_limited"
        assert int(answers[3].headers["Retry-After"]) >= 1
        theirs = requests.get(f"{node.url}/api/v1/keys/k", headers={"X-API-Key": other}, timeout=5)
        assert theirs.status_code == 404  # its own quota
        assert all(requests.get(f"{node.url}/health", timeout=5).ok for _ in range(5))
        # A made-up key with another key's prefix spends only its IP's quota, not that key's.
        forged = {"X-API-Key": other.partition(".")[0] + ".not-the-secret"}
        for _ in range(2):
            requests.get(f"{node.url}/api/v1/keys/k", headers=forged, timeout=5)
        again = requests.get(f"{node.url}/api/v1/keys/k", headers={"X-API-Key": other}, timeout=5)
        assert again.status_code == 404
        # Client streams are counted against the same quota: this key has one call left.
        from tests.test_streams import Stream

        stream = Stream(node.port, other)
        try:
            assert stream.call("get", {"key": "k"})[0] == 404
            status, body = stream.call("get", {"key": "k"})
            assert (status, body["error"]["code"]) == (429, "rate_limited")
        finally:
            stream.close()


@SITE
def test_the_allowlist_sees_the_client_behind_trusted_proxies(settings: Any, db: None) -> None:
    settings.CACHES = caches_with()
    settings.RATELIMIT = {
        "STORAGE": "local",
        "TRUSTED_PROXIES": 1,
        "ALLOWLIST": ["203.0.113.0/24", "127.0.0.1"],
    }
    storages.reset()
    allowed = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert all(allowed.get("/limited").status_code == 200 for _ in range(5))
    # The proxy's own address on the allowlist does not let its clients through.
    other = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert [other.get("/limited").status_code for _ in range(4)][-1] == 429


def test_rate_limit_headers_are_valid_structured_field_strings() -> None:
    from ratelimit.algorithms import Decision

    limit = core.Limit.build(rate="5/m", group='we"ird\\group')
    made = core.headers(limit, Decision(True, 5, 4, 30.0, 0.0))
    assert made["RateLimit-Policy"] == '"we\\"ird\\\\group";q=5;w=60'
    other = core.headers(
        core.Limit.build(rate="5/m", group="grüße"), Decision(True, 5, 4, 30.0, 0.0)
    )
    assert other["RateLimit"].startswith('"g-')


@pytest.mark.parametrize("burst", [0, -1, True])
def test_a_bucket_must_hold_at_least_one(burst: Any) -> None:
    with pytest.raises(ValueError, match="burst"):
        core.Limit.build(rate="5/m", algorithm="token_bucket", burst=burst)


def test_the_cache_storage_s_sliding_retry_after_is_the_real_wait(settings: Any) -> None:
    from tests.clocks import FakeClock

    settings.CACHES = caches_with()
    clock = FakeClock(600.0)
    store = CacheStorage("locmem", clock=clock)
    key = fresh()
    for _ in range(10):
        assert store.check(key, "sliding_window", Rate(10, 60.0)).allowed
    clock.advance(65)  # 5 s into the next window: the last one counts 55/60
    denied = store.check(key, "sliding_window", Rate(10, 60.0))
    assert not denied.allowed
    # 55/60 of 10 plus this denied attempt: a request fits once the old window's weight has
    # decayed to 8, 7 s from now (not a token 1 ms).
    assert denied.retry_after == pytest.approx(7.0)
    clock.advance(7.001)
    assert store.check(key, "sliding_window", Rate(10, 60.0)).allowed


def test_counters_are_per_api_key_and_a_reset_needs_admin(make_client: Any) -> None:
    hit = "/api/v1/ratelimit/hit"
    one, two, writer = (
        make_client("read,write,admin"),
        make_client("read,write,admin"),
        make_client("read,write"),
    )
    body = {"key": "shared-name", "rate": "1/m"}
    assert one.post(hit, body, content_type="application/json").json()["allowed"] is True
    assert one.post(hit, body, content_type="application/json").json()["allowed"] is False
    # Another key's counter of the same name is its own.
    assert two.post(hit, body, content_type="application/json").json()["allowed"] is True
    reset = {**body, "reset": True}
    answer = writer.post(hit, reset, content_type="application/json")
    assert answer.status_code == 403
    assert one.post(hit, reset, content_type="application/json").json()["remaining"] == 1


def by_client_header(group: str, request: Any) -> str:
    return request.META.get("HTTP_X_CLIENT", "none")


def test_the_drf_throttle_takes_a_key_function_and_builds_its_limit_once(settings: Any) -> None:
    from django.test import RequestFactory

    from ratelimit import drf

    settings.RATELIMIT = {"STORAGE": "local"}
    storages.reset()

    class ByHeader(drf.RateLimitThrottle):
        rate = "2/m"
        key = by_client_header  # a plain function as a class attribute

    class ByStatic(drf.RateLimitThrottle):
        rate = "2/m"
        key = staticmethod(by_client_header)

    view = object()
    for cls in (ByHeader, ByStatic):
        answers = []
        for _ in range(3):
            request = RequestFactory().get("/", HTTP_X_CLIENT=f"c-{cls.__name__}")
            answers.append(cls().allow_request(request, view))
        assert answers == [True, True, False]
    before = len(core._by_group)
    for _ in range(5):
        ByHeader().allow_request(RequestFactory().get("/"), view)
    assert len(core._by_group) == before  # not one Limit per request
