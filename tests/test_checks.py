"""System checks: more than one worker, an unknown worker class, the development secret."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from cacheapi.checks import check_cluster_secret, check_single_worker


def ids(messages):
    return [m.id for m in messages]


def test_one_worker_passes():
    assert check_single_worker() == []


@override_settings(CACHE_CLUSTER={"WORKERS": 4})
def test_more_than_one_worker_is_an_error():
    messages = check_single_worker()
    assert ids(messages) == ["cacheapi.E001"]
    assert "exactly one gunicorn worker" in messages[0].msg
    with pytest.raises(SystemCheckError, match=r"cacheapi\.E001"):
        call_command("check")


@override_settings(CACHE_CLUSTER={"WORKER_CLASS": "eventlet"})
def test_unknown_worker_class_is_an_error():
    assert ids(check_single_worker()) == ["cacheapi.E002"]


def test_env_overrides_settings(monkeypatch):
    from cacheapi.settings import cluster_settings

    monkeypatch.setenv("CACHE_WORKERS", "2")
    cluster_settings.reload()
    try:
        assert ids(check_single_worker()) == ["cacheapi.E001"]
    finally:
        monkeypatch.delenv("CACHE_WORKERS")
        cluster_settings.reload()
    assert check_single_worker() == []


@override_settings(SECRET_KEY="dev-insecure-abc", CACHE_CLUSTER={})
def test_development_secret_warns_on_deploy(monkeypatch):
    monkeypatch.delenv("CACHE_SECRET", raising=False)
    assert ids(check_cluster_secret()) == ["cacheapi.W001"]
    with override_settings(CACHE_CLUSTER={"SECRET": "s" * 40}):
        assert check_cluster_secret() == []
    with override_settings(SECRET_KEY="a-real-random-key-" + "x" * 40):
        assert check_cluster_secret() == []


def test_the_development_secret_key_fails_the_deploy_checks(settings) -> None:
    from django.core import checks

    settings.SECRET_KEY = "dev-insecure-anything"
    ids = [m.id for m in checks.run_checks(include_deployment_checks=True)]
    assert "cacheapi.E003" in ids
    settings.SECRET_KEY = "a-long-random-production-value-" + "x" * 40
    ids = [m.id for m in checks.run_checks(include_deployment_checks=True)]
    assert "cacheapi.E003" not in ids
