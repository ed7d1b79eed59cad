"""Shared fixtures: a fresh node state per test, API keys, authenticated clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.test import Client

from cacheapi import node
from cacheapi.api.auth import key_cache
from cacheapi.metrics import recorder


@pytest.fixture(autouse=True)
def fresh_node() -> Iterator[None]:
    """Each test gets an empty store, fresh metrics and no cached key verdicts."""
    node.reset()
    recorder.reset()
    key_cache.clear()
    yield
    node.reset()


@pytest.fixture
def make_key(db: None) -> Callable[..., str]:
    from cacheapi.models import ApiKey

    def make(scopes: str = "read,write,admin", name: str = "test") -> str:
        return ApiKey.create_key(name, scopes)[1]

    return make


@pytest.fixture
def make_client(make_key: Callable[..., str]) -> Callable[..., Client]:
    def make(scopes: str = "read,write,admin") -> Client:
        return Client(HTTP_X_API_KEY=make_key(scopes))

    return make


@pytest.fixture
def api(make_client: Callable[..., Client]) -> Client:
    """A client whose key has every scope."""
    return make_client("read,write,admin")
