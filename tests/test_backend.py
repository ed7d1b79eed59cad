"""``cacheapi.backends.ClusterCache`` keeps Django's cache contract: one test class, run against
Django's own ``LocMemCache`` and against ``ClusterCache`` on a live 3-node cluster.

Nodes take no injected clock, so expiry is checked with small real timeouts and polling (a
deadline, never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache.backends.base import CacheKeyWarning
from django.core.cache.backends.locmem import LocMemCache

from cacheapi.backends import ClusterCache, cluster_key, shared_client
from cacheapi.client import Unavailable
from tests.cluster import Cluster
from tests.processes import Registry, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("backend")
    registry = Registry(f"sqlite:///{log_dir / 'registry.sqlite3'}")
    with Cluster(registry, log_dir, 3) as cluster:
        yield cluster


def cluster_cache(cluster: Cluster, **params: Any) -> ClusterCache:
    options = {"API_KEY": cluster.registry.api_key, **params.pop("OPTIONS", {})}
    return ClusterCache([n.url for n in cluster.nodes], {"OPTIONS": options, **params})


@pytest.fixture(params=["locmem", "cluster"])
def make(request: pytest.FixtureRequest) -> Any:
    """Builds a cache of the kind under test; each test gets its own key prefix."""
    prefix = uuid.uuid4().hex[:8]

    def build(**params: Any) -> Any:
        params.setdefault("KEY_PREFIX", prefix)
        params.setdefault("TIMEOUT", 300)
        if request.param == "locmem":
            params.pop("OPTIONS", None)
            return LocMemCache(f"contract-{prefix}", params)
        return cluster_cache(request.getfixturevalue("cluster"), **params)

    return build


@pytest.fixture
def cache(make: Any) -> Any:
    return make()


def gone(cache: Any, key: str, timeout: float = 10.0) -> None:
    wait_for(lambda: cache.get(key, "absent") == "absent", timeout=timeout, interval=0.1)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


VALUES = [
    0,
    -7,
    2**63 - 1,
    2**64 + 5,  # past 64 bits: pickled
    True,
    3.25,
    "text ü 日本",
    b"\x00\xff" * 10,
    {"a": [1, 2, {"b": None}]},
    [1, "two", 3.0],
    (1, 2),
    {1, 2, 3},
    dt.datetime(2026, 12, 2, 12, 30, tzinfo=dt.UTC),
    decimal.Decimal("1.10"),
    Point(1, 2),
    {"b64": "not really"},  # shapes the wire format reserves
]


class TestContract:
    def test_get_of_a_missing_key_gives_the_default(self, cache: Any) -> None:
        assert cache.get("nope") is None
        assert cache.get("nope", "dflt") == "dflt"

    @pytest.mark.parametrize("value", VALUES, ids=[type(v).__name__ for v in VALUES])
    def test_values_come_back_equal_and_of_their_type(self, cache: Any, value: Any) -> None:
        cache.set("v", value)
        got = cache.get("v")
        assert got == value
        assert type(got) is type(value)

    def test_none_is_a_value(self, cache: Any) -> None:
        cache.set("n", None)
        assert cache.get("n", "dflt") is None
        assert cache.has_key("n")
        assert cache.get_many(["n"]) == {"n": None}

    def test_add_stores_only_when_absent(self, cache: Any) -> None:
        assert cache.add("a", 1) is True
        assert cache.add("a", 2) is False
        assert cache.get("a") == 1
        assert cache.add("z", 1, timeout=0) is True  # absent: added, and expired at once
        assert cache.get("z") is None
        assert cache.add("a", 3, timeout=0) is False

    def test_get_or_set(self, cache: Any) -> None:
        assert cache.get_or_set("g", "first") == "first"
        assert cache.get_or_set("g", "second") == "first"
        assert cache.get_or_set("h", lambda: "called") == "called"
        assert cache.get("h") == "called"
        assert cache.get_or_set("none", None) is None

    def test_batches(self, cache: Any) -> None:
        data = {f"m{i}": i for i in range(50)} | {"blob": b"\x01" * 10, "none": None}
        assert cache.set_many(data) == []
        assert cache.get_many([*data, "absent"]) == data
        cache.delete_many(["m0", "m1", "absent"])
        assert cache.get_many(["m0", "m1", "m2"]) == {"m2": 2}
        assert cache.set_many({"m2": 1, "m3": 1}, timeout=0) == []  # expired at once: deleted
        assert cache.get_many(["m2", "m3"]) == {}

    def test_has_key_and_delete(self, cache: Any) -> None:
        cache.set("d", 0)
        assert cache.has_key("d") is True
        assert cache.delete("d") is True
        assert cache.delete("d") is False
        assert cache.has_key("d") is False

    def test_incr_and_decr(self, cache: Any) -> None:
        with pytest.raises(ValueError, match="not found"):
            cache.incr("missing")
        with pytest.raises(ValueError, match="not found"):
            cache.decr("missing")
        cache.set("c", 10)
        assert cache.incr("c") == 11
        assert cache.incr("c", 10) == 21
        assert cache.decr("c", 30) == -9
        assert cache.get("c") == -9
        cache.set("big", 2**63 - 1)
        assert cache.incr("big") == 2**63  # past 64 bits still adds up (not atomically)
        assert cache.get("big") == 2**63
        cache.set("text", "abc")
        with pytest.raises(TypeError):
            cache.incr("text")

    def test_incr_keeps_the_ttl(self, cache: Any) -> None:
        cache.set("t", 1, timeout=1)
        assert cache.incr("t") == 2
        gone(cache, "t")

    def test_concurrent_increments_all_count(self, cache: Any) -> None:
        cache.set("hits", 0)
        errors: list[BaseException] = []

        def bump() -> None:
            try:
                for _ in range(25):
                    cache.incr("hits")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=bump) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert cache.get("hits") == 200

    def test_timeouts(self, cache: Any) -> None:
        cache.set("forever", 1, timeout=None)
        cache.set("now", 1, timeout=0)
        cache.set("past", 1, timeout=-5)
        cache.set("soon", 1, timeout=0.5)
        assert cache.get("forever") == 1
        assert cache.get("now") is None
        assert cache.get("past") is None
        cache.set("forever", 2, timeout=0)  # an existing key: gone
        assert cache.get("forever") is None
        gone(cache, "soon")

    def test_default_timeout_applies(self, make: Any) -> None:
        cache = make(TIMEOUT=1)
        cache.set("k", 1)
        assert cache.get("k") == 1
        gone(cache, "k")

    def test_touch(self, cache: Any) -> None:
        assert cache.touch("absent") is False
        cache.set("t", 1, timeout=1)
        assert cache.touch("t", None) is True  # would expire in 1 s; now never does
        cache.set("u", 1)
        assert cache.touch("u", 0) is True
        assert cache.get("u") is None
        cache.set("w", 1, timeout=None)
        assert cache.touch("w", 1) is True
        gone(cache, "w")
        assert cache.get("t") == 1

    @pytest.mark.parametrize(
        "key", ["ключ-ü-日本", "with space", "tab\there", "x" * 300, "a:b/c?d=e&f#g"]
    )
    def test_any_key_django_accepts_works_with_the_same_warnings(self, cache: Any, key: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.set(key, "v")
            assert cache.get(key) == "v"
            assert cache.get_many([key]) == {key: "v"}
            assert cache.delete(key) is True
        expected = [str(w.message) for w in caught if issubclass(w.category, CacheKeyWarning)]
        with warnings.catch_warnings(record=True) as reference:
            warnings.simplefilter("always")
            LocMemCache("ref", {"KEY_PREFIX": cache.key_prefix}).validate_key(cache.make_key(key))
        assert len(expected) == 4 * len(reference)  # the same warning, once per call

    def test_binary_and_large_values(self, cache: Any) -> None:
        blob = bytes(range(256)) * 3500  # 896,000 bytes: near the nodes' 1 MiB limit
        cache.set("blob", blob)
        assert cache.get("blob") == blob

    def test_versions(self, cache: Any) -> None:
        cache.set("v", "one")
        cache.set("v", "two", version=2)
        assert cache.get("v") == "one"
        assert cache.get("v", version=2) == "two"
        assert cache.incr_version("v") == 2
        assert cache.get("v") is None
        assert cache.get("v", version=2) == "one"
        assert cache.decr_version("v", version=2) == 1
        assert cache.get("v") == "one"

    def test_prefixes_and_key_functions_keep_caches_apart(self, make: Any) -> None:
        first, second = make(KEY_PREFIX="first-" + uuid.uuid4().hex), make()
        first.set("k", 1)
        assert second.get("k") is None
        custom = make(KEY_FUNCTION=lambda key, prefix, version: f"custom|{prefix}|{key}")
        custom.set("k", 2)
        assert custom.get("k") == 2
        assert custom.make_key("k").startswith("custom|")

    def test_close_keeps_working(self, cache: Any) -> None:
        cache.set("k", 1)
        cache.close()
        assert cache.get("k") == 1

    def test_async_methods_do_not_block_the_event_loop(self, cache: Any) -> None:
        async def main() -> tuple[Any, int]:
            ticks = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            await cache.aset("a", {"x": 1})
            results = await asyncio.gather(*(cache.aget("a") for _ in range(20)))
            assert await cache.aadd("a", 2) is False
            assert await cache.aadd("n", 0) is True
            assert await cache.aincr("n") == 1
            stop.set()
            await task
            return results, ticks

        results, ticks = asyncio.run(main())
        assert results == [{"x": 1}] * 20
        assert ticks > 20  # the loop kept running while calls were in flight


class TestClusterOnly:
    def test_clear_flushes_the_cluster(self, cluster: Cluster) -> None:
        cache = cluster_cache(cluster, KEY_PREFIX="clear")
        cache.set("a", 1)
        cache.clear()
        assert cache.get("a") is None

    def test_instances_share_one_client_that_outlives_close(self, cluster: Cluster) -> None:
        a, b = cluster_cache(cluster), cluster_cache(cluster)
        assert a.client is b.client
        a.close()
        assert b.client is shared_client(a._urls, a._options)

    def test_a_value_too_large_is_not_stored_and_drops_the_old_one(self, cluster: Cluster):
        cache = cluster_cache(cluster, KEY_PREFIX="large")
        cache.set("k", "old")
        cache.set("k", b"x" * (2 * 2**20))
        assert cache.get("k") is None

    @pytest.mark.parametrize("streams", [True, False])
    def test_calls_go_over_streams_unless_told_not_to(self, cluster: Cluster, streams: bool):
        cache = cluster_cache(cluster, KEY_PREFIX="lane", OPTIONS={"STREAMS": streams})

        def counts() -> tuple[int, int]:
            ops = [cluster.stats(n)["ops"] for n in cluster.nodes]
            return sum(o.get("stream_get", 0) for o in ops), sum(o.get("retrieve", 0) for o in ops)

        before = counts()
        for i in range(10):
            cache.get(f"k{i}")
        framed, http = (now - then for now, then in zip(counts(), before, strict=True))
        assert (framed, http) == ((10, 0) if streams else (0, 10))

    def test_any_timeout_django_takes_and_one_oversized_value_in_a_batch(self, cluster: Cluster):
        cache = cluster_cache(cluster, KEY_PREFIX="odd")
        cache.set("long", 1, timeout=20 * 365 * 86400)  # past the nodes' MAX_TTL: for ever
        assert cache.get("long") == 1
        failed = cache.set_many({"small": 1, "huge": b"x" * (2 * 2**20), "also": 2})
        assert failed == ["huge"]
        assert cache.get_many(["small", "huge", "also"]) == {"small": 1, "also": 2}

    def test_values_it_did_not_sign_are_never_unpickled(
        self, cluster: Cluster, caplog: pytest.LogCaptureFixture
    ) -> None:
        import pickle

        class Boom:
            def __reduce__(self) -> Any:
                return (pytest.fail, ("unpickled a value nobody signed",))

        cache = cluster_cache(cluster, KEY_PREFIX="signed")
        planted = cluster_key(cache.make_key("k"))
        cache.client.set(planted, pickle.dumps(Boom()))  # another API key with write scope
        with caplog.at_level(logging.WARNING, logger="cacheapi.backends"):
            assert cache.get("k", "absent") == "absent"
            assert cache.get_many(["k"]) == {}
        assert "signature" in caplog.text
        cache.set("mine", {"a": 1})
        other = cluster_cache(cluster, KEY_PREFIX="signed", OPTIONS={"SIGNING_KEY": "another"})
        assert other.get("mine", "absent") == "absent"  # another site's key: not ours
        plain = cluster_cache(cluster, KEY_PREFIX="plain", OPTIONS={"SIGN_VALUES": False})
        plain.set("p", [1, 2])
        assert plain.get("p") == [1, 2]

    def test_values_signed_by_an_earlier_version_read_as_absent_quietly(
        self, cluster: Cluster, caplog: pytest.LogCaptureFixture
    ) -> None:
        """HMAC-SHA256 signatures (the ``CCs1`` head) came before keyed BLAKE2b: after an
        upgrade such values are misses, without a warning each, and are never unpickled."""
        import hashlib
        import hmac
        import pickle

        cache = cluster_cache(cluster, KEY_PREFIX="upgraded")
        key = cache._signing_key
        assert key is not None
        data = pickle.dumps({"old": True})
        old = b"CCs1" + hmac.digest(key, data, hashlib.sha256)[:16] + data
        cache.client.set(cluster_key(cache.make_key("k")), old)
        with caplog.at_level(logging.WARNING, logger="cacheapi.backends"):
            assert cache.get("k", "absent") == "absent"
        assert "signature" not in caplog.text
        cache.set("k", {"new": True})
        assert cache.get("k") == {"new": True}
        assert cache.client.get(cluster_key(cache.make_key("k")))[:4] == b"CCs2"

    def test_ints_are_json_integers_on_the_nodes(self, cluster: Cluster) -> None:
        cache = cluster_cache(cluster, KEY_PREFIX="ints")
        cache.set("n", 41)
        key = cluster_key(cache.make_key("n"))
        assert cache.client.get(key) == 41  # not pickled: incr works on the node
        assert cache.client.incr(key) == 42
        assert cache.get("n") == 42

    def test_keys_the_cluster_refuses_are_sent_as_digests(self) -> None:
        assert cluster_key("plain:1:key") == "plain:1:key"
        for bad in ("with space", "x" * 251, "ü" * 126, "nul\x00"):
            digest = cluster_key(bad)
            assert digest.startswith("sha256:")
            assert len(digest) == 71
            assert digest == cluster_key(bad)  # stable

    def test_options_are_checked(self) -> None:
        with pytest.raises(ValueError, match="LOCATION"):
            ClusterCache("", {"OPTIONS": {"API_KEY": "k"}})
        with pytest.raises(ValueError, match="API_KEY"):
            ClusterCache("http://127.0.0.1:1", {})
        cache = ClusterCache("http://a:1; http://b:2 ,", {"OPTIONS": {"API_KEY": "k"}})
        assert cache._urls == ("http://a:1", "http://b:2")


class TestUnreachable:
    @pytest.fixture
    def dead(self) -> str:
        return f"http://127.0.0.1:{free_port()}"

    def test_errors_are_raised_by_default(self, dead: str) -> None:
        cache = ClusterCache(dead, {"OPTIONS": {"API_KEY": "k", "SOCKET_TIMEOUT": 1}})
        for call in (
            lambda: cache.get("k"),
            lambda: cache.set("k", 1),
            lambda: cache.add("k", 1),
            lambda: cache.get_many(["k"]),
            lambda: cache.set_many({"k": 1}),
            lambda: cache.incr("k"),
            lambda: cache.has_key("k"),
        ):
            with pytest.raises(Unavailable):
                call()

    def test_ignore_exceptions_returns_defaults_and_logs(
        self, dead: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        options = {"API_KEY": "k", "SOCKET_TIMEOUT": 1, "IGNORE_EXCEPTIONS": True}
        cache = ClusterCache(dead, {"OPTIONS": options})
        with caplog.at_level(logging.WARNING, logger="cacheapi.backends"):
            assert cache.get("k", "dflt") == "dflt"
            assert cache.set("k", 1) is None
            assert cache.add("k", 1) is False
            assert cache.get_many(["a", "b"]) == {}
            assert sorted(cache.set_many({"a": 1, "b": 2})) == ["a", "b"]
            assert cache.has_key("k") is False
            assert cache.delete("k") is False
            assert cache.touch("k") is False
            assert cache.incr("k") is None
            assert cache.delete_many(["a"]) is None
        assert "unreachable" in caplog.text
