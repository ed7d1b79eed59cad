"""CACHE_CLUSTER settings: defaults, project overrides, environment overrides, reloads."""

from __future__ import annotations

import pytest
from django.test import override_settings

from cacheapi.settings import DEFAULTS, cluster_settings


@pytest.fixture(autouse=True)
def _reload():
    cluster_settings.reload()
    yield
    cluster_settings.reload()


def test_defaults():
    assert cluster_settings.MAX_KEY_BYTES == 250
    assert cluster_settings.MAX_VALUE_BYTES == 2**20
    assert cluster_settings.DEFAULT_TTL is None
    assert cluster_settings.WORKER_CLASS == "gevent"


def test_project_settings_override_and_reload_on_change():
    with override_settings(CACHE_CLUSTER={"MAX_BATCH_KEYS": 10}):
        assert cluster_settings.MAX_BATCH_KEYS == 10
    assert cluster_settings.MAX_BATCH_KEYS == 1000


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("MAX_BYTES", "1024", 1024),
        ("FORWARD_TIMEOUT", "0.5", 0.5),
        ("DEFAULT_TTL", "30", 30.0),
        ("DEFAULT_TTL", "none", None),
        ("BENCH_ROUTES", "true", True),
        ("BENCH_ROUTES", "0", False),
        ("NODE_NAME", "cache-7", "cache-7"),
    ],
)
def test_environment_overrides(monkeypatch, name, raw, expected):
    monkeypatch.setenv(f"CACHE_{name}", raw)
    with override_settings(CACHE_CLUSTER={name: DEFAULTS[name][0]}):
        assert getattr(cluster_settings, name) == expected


def test_unknown_setting_is_an_error():
    with pytest.raises(AttributeError, match="Unknown CACHE_CLUSTER setting"):
        cluster_settings.NO_SUCH_THING  # noqa: B018


def test_cluster_secret_defaults_to_a_digest_of_secret_key(monkeypatch):
    monkeypatch.delenv("CACHE_SECRET", raising=False)
    with override_settings(SECRET_KEY="one"):
        first = cluster_settings.SECRET
    with override_settings(SECRET_KEY="two"):
        second = cluster_settings.SECRET
    assert len(first) == 64
    assert first != second
    assert "one" not in first


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_cluster_secret_in_the_environment_counts_as_unset(monkeypatch, empty):
    """CACHE_SECRET= must not make the empty string the secret, which any caller can send."""
    monkeypatch.delenv("CACHE_SECRET", raising=False)
    with override_settings(SECRET_KEY="one"):
        derived = cluster_settings.SECRET
    monkeypatch.setenv("CACHE_SECRET", empty)
    with override_settings(SECRET_KEY="one"):
        assert derived == cluster_settings.SECRET
