"""Who may call: API keys (both headers, hashed, scoped, revocable, cached), the cluster secret,
the createapikey command and the admin's key pages."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client, override_settings

from cacheapi import node
from cacheapi.api.auth import key_cache
from cacheapi.models import ApiKey
from cacheapi.settings import cluster_settings
from cacheapi.store import Entry
from tests.clocks import FakeClock

JSON = "application/json"


def data(response: Any) -> Any:
    return json.loads(response.content)


def contents() -> dict[str, Entry]:
    return {key: entry for chunk in node.current().store.scan() for key, entry in chunk}


def seed(key: str, value: Any) -> None:
    node.current().store.set(key, json.dumps(value).encode())


def stored(key: str) -> Any:
    entry = node.current().store.peek(key)
    return None if entry is None else json.loads(entry.value)


def assert_error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith(JSON)
    body = data(response)
    assert list(body) == ["error"]
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


def assert_unauthorized(response: Any) -> str:
    message = assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Api-Key"
    return message


def key_client(raw: str, header: str = "x-api-key") -> Client:
    if header == "authorization":
        return Client(headers={"Authorization": f"Api-Key {raw}"})
    return Client(headers={"X-API-Key": raw})


# The two ways to send a key -----------------------------------------------------------------------


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_either_header_carries_the_key(make_key: Callable[..., str], header: str) -> None:
    client = key_client(make_key("read,write"), header)
    r = client.put("/api/v1/keys/k", {"value": [1, "a"]}, content_type=JSON)
    assert r.status_code == 200
    assert data(r)["key"] == "k"
    assert stored("k") == [1, "a"]
    assert data(client.get("/api/v1/keys/k")) == {"key": "k", "value": [1, "a"], "ttl": None}


def test_authorization_scheme_is_case_insensitive(make_key: Callable[..., str]) -> None:
    seed("k", 1)
    client = Client(headers={"Authorization": f"api-key   {make_key('read')}"})
    assert data(client.get("/api/v1/keys/k"))["value"] == 1


# Who is refused -----------------------------------------------------------------------------------

PROTECTED = [
    ("get", "/api/v1/keys/k", None),
    ("head", "/api/v1/keys/k", None),
    ("put", "/api/v1/keys/k", {"value": 2}),
    ("patch", "/api/v1/keys/k", {"ttl": 5}),
    ("delete", "/api/v1/keys/k", None),
    ("post", "/api/v1/keys/k/incr", {}),
    ("post", "/api/v1/batch/get", {"keys": ["k"]}),
    ("post", "/api/v1/batch/set", {"items": [{"key": "k", "value": 2}]}),
    ("post", "/api/v1/batch/delete", {"keys": ["k"]}),
    ("get", "/api/v1/stats", None),
    ("get", "/api/v1/cluster/ring", None),
    ("post", "/api/v1/flush", None),
    ("post", "/set", {"key": "k", "value": 2}),
    ("get", "/get?key=k", None),
    ("delete", "/delete?key=k", None),
    ("post", "/batch_get", {"keys": ["k"]}),
    ("post", "/batch_set", {"items": [{"key": "k", "value": 2}]}),
    ("post", "/sync", {"items": [{"key": "k", "value": 2, "version": "1-0-n2"}]}),
    ("get", "/api/v1/batch/get", None),  # wrong method: still 401 first
]


def call(client: Client, method: str, path: str, body: Any) -> Any:
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, body, content_type=JSON)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_no_key_is_401_with_www_authenticate(db: None, method: str, path: str, body: Any) -> None:
    seed("k", 1)
    before = contents()
    r = call(Client(), method, path, body)
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Api-Key"
    if method != "head":
        assert_unauthorized(r)
    assert contents() == before


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "0123456789ab.not-the-secret"},
        {"X-API-Key": "no-dot-at-all"},
        {"X-API-Key": "."},
        {"X-API-Key": "prefix-only."},
        {"X-API-Key": ".secret-only"},
        {"Authorization": "Api-Key garbage"},
        {"Authorization": "Api-Key"},
        {"Authorization": "Api-Key    "},
        {"Authorization": "Bearer sometoken"},
        {"Authorization": "Basic cm9vdDpwdw=="},
    ],
    ids=[
        "unknown",
        "no-dot",
        "dot",
        "prefix-only",
        "secret-only",
        "auth-garbage",
        "auth-empty",
        "auth-blank",
        "bearer",
        "basic",
    ],
)
def test_unknown_or_malformed_key_is_401(db: None, headers: dict[str, str]) -> None:
    seed("k", 1)
    client = Client(headers=headers)
    assert_unauthorized(client.get("/api/v1/keys/k"))
    assert_unauthorized(client.put("/api/v1/keys/k", {"value": 2}, content_type=JSON))
    assert stored("k") == 1


def test_right_prefix_wrong_secret_is_401(make_key: Callable[..., str]) -> None:
    seed("k", 1)
    prefix, _, secret = make_key().partition(".")
    forged = f"{prefix}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert_unauthorized(key_client(forged).get("/api/v1/keys/k"))
    assert_unauthorized(key_client(prefix).get("/api/v1/keys/k"))


def test_revoked_key_is_401(make_key: Callable[..., str]) -> None:
    seed("k", 1)
    raw = make_key()
    ApiKey.objects.get().revoke()
    r = key_client(raw).put("/api/v1/keys/k", {"value": 2}, content_type=JSON)
    assert "revoked" in assert_unauthorized(r)
    assert stored("k") == 1


# Scopes -------------------------------------------------------------------------------------------

# (method, path, body, scope it needs, status on success)
SCOPED = [
    ("get", "/api/v1/keys/k", None, "read", 200),
    ("head", "/api/v1/keys/k", None, "read", 200),
    ("put", "/api/v1/keys/k", {"value": 2}, "write", 200),
    ("patch", "/api/v1/keys/k", {"ttl": 50}, "write", 200),
    ("delete", "/api/v1/keys/k", None, "write", 204),
    ("post", "/api/v1/keys/k/incr", {"delta": 3}, "write", 200),
    ("post", "/api/v1/batch/get", {"keys": ["k"]}, "read", 200),
    ("post", "/api/v1/batch/set", {"items": [{"key": "k", "value": 2}]}, "write", 200),
    ("post", "/api/v1/batch/delete", {"keys": ["k"]}, "write", 200),
    ("get", "/api/v1/stats", None, "read", 200),
    ("get", "/api/v1/cluster/ring", None, "read", 200),
    ("post", "/api/v1/flush", None, "admin", 200),
    ("post", "/set", {"key": "k", "value": 2}, "write", 200),
    ("get", "/get?key=k", None, "read", 200),
    ("delete", "/delete?key=k", None, "write", 204),
    ("post", "/batch_get", {"keys": ["k"]}, "read", 200),
    ("post", "/batch_set", {"items": [{"key": "k", "value": 2}]}, "write", 200),
]
KEY_SCOPES = ["read", "write", "admin", "read,write", "read,write,admin"]


@pytest.mark.parametrize(("method", "path", "body", "needed", "success"), SCOPED)
def test_scopes_are_enforced_per_action(
    make_key: Callable[..., str], method: str, path: str, body: Any, needed: str, success: int
) -> None:
    for scopes in KEY_SCOPES:
        node.current().store.clear()
        seed("k", 1)
        before = contents()
        r = call(key_client(make_key(scopes)), method, path, body)
        if needed in scopes.split(","):
            assert r.status_code == success, (scopes, r.content)
            if method == "get" and path.startswith(("/get", "/api/v1/keys/")):
                assert data(r)["value"] == 1
        else:
            if method == "head":
                assert r.status_code == 403, scopes
            else:
                message = assert_error(r, 403, "forbidden")
                assert repr(needed) in message
            assert contents() == before, scopes


def test_read_key_reads_but_cannot_write_or_flush(make_client: Callable[..., Client]) -> None:
    seed("k", "v")
    reader = make_client("read")
    assert data(reader.get("/api/v1/keys/k")) == {"key": "k", "value": "v", "ttl": None}
    assert_error(reader.put("/api/v1/keys/k", {"value": "w"}, content_type=JSON), 403, "forbidden")
    assert_error(reader.post("/api/v1/flush"), 403, "forbidden")
    assert stored("k") == "v"


def test_write_key_cannot_flush_admin_can(make_client: Callable[..., Client]) -> None:
    seed("k", "v")
    writer = make_client("read,write")
    assert "'admin'" in assert_error(writer.post("/api/v1/flush"), 403, "forbidden")
    assert stored("k") == "v"
    r = make_client("read,write,admin").post("/api/v1/flush")
    assert data(r) == {"flushed": 1, "failed": []}
    assert contents() == {}


def test_sync_refuses_every_api_key(make_key: Callable[..., str]) -> None:
    body = {"items": [{"key": "k", "value": 2, "version": "1-0-n2"}]}
    for scopes in KEY_SCOPES:
        r = key_client(make_key(scopes)).post("/sync", body, content_type=JSON)
        assert_error(r, 403, "forbidden")
    assert contents() == {}
    with pytest.raises(ValueError, match="scopes"):
        ApiKey.create_key("sneaky", "internal")


# The cluster secret -------------------------------------------------------------------------------


def test_cluster_secret_grants_internal_access(db: None) -> None:
    peer = Client(headers={"X-Cluster-Secret": cluster_settings.SECRET})
    body = {"items": [{"key": "k", "value": "synced", "version": "1-0-n2"}]}
    assert data(peer.post("/sync", body, content_type=JSON)) == {"stored": 1, "skipped": 0}
    assert data(peer.get("/api/v1/keys/k"))["value"] == "synced"
    assert peer.put("/api/v1/keys/k", {"value": 2}, content_type=JSON).status_code == 200
    assert data(peer.post("/api/v1/flush")) == {"flushed": 1, "failed": []}
    assert contents() == {}


@pytest.mark.parametrize("secret", ["wrong", "", lambda: cluster_settings.SECRET[:-1]])
def test_wrong_cluster_secret_is_403_as_on_the_peer_protocol(
    make_key: Callable[..., str], secret: Any
) -> None:
    secret = secret() if callable(secret) else secret
    seed("k", 1)
    # A valid API key alongside does not rescue a wrong secret.
    peer = Client(headers={"X-Cluster-Secret": secret, "X-API-Key": make_key()})
    body = {"items": [{"key": "k", "value": 2, "version": "9-0-n2"}]}
    assert "secret" in assert_error(peer.post("/sync", body, content_type=JSON), 403, "forbidden")
    assert_error(peer.get("/api/v1/keys/k"), 403, "forbidden")
    assert_error(peer.put("/api/v1/keys/k", {"value": 3}, content_type=JSON), 403, "forbidden")
    hit = {"key": "rl", "rate": "1/m"}
    assert_error(peer.post("/api/v1/ratelimit/hit", hit, content_type=JSON), 403, "forbidden")
    assert stored("k") == 1


def test_cluster_secret_comes_from_settings(db: None) -> None:
    derived = cluster_settings.SECRET
    body = {"items": [{"key": "k", "value": 1, "version": "1-0-n2"}]}
    with override_settings(CACHE_CLUSTER={"SECRET": "configured-secret"}):
        ok = Client(headers={"X-Cluster-Secret": "configured-secret"})
        assert data(ok.post("/sync", body, content_type=JSON))["stored"] == 1
        old = Client(headers={"X-Cluster-Secret": derived})
        assert_error(old.post("/sync", body, content_type=JSON), 403, "forbidden")
    assert derived == cluster_settings.SECRET  # the override is gone
    # The secret is not an API key.
    assert_unauthorized(key_client(derived).get("/api/v1/keys/k"))


# Keys at rest -------------------------------------------------------------------------------------


def test_keys_are_stored_hashed(db: None) -> None:
    key, raw = ApiKey.create_key("hashed", "read,admin")
    prefix, _, secret = raw.partition(".")
    assert key.prefix == prefix
    assert key.scopes == "read,admin"
    assert re.fullmatch(r"[0-9a-f]{64}", key.hashed)
    table = ApiKey._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")
        rows = cursor.fetchall()
    assert len(rows) == 1
    for column in rows[0]:
        assert secret not in str(column)
        assert raw not in str(column)
    assert key.check_secret(secret)
    assert not key.check_secret(secret + "x")
    # Two keys never share prefix, salt or secret.
    other, other_raw = ApiKey.create_key("other")
    assert (other.prefix, other.salt) != (key.prefix, key.salt)
    assert other_raw != raw


# createapikey -------------------------------------------------------------------------------------


def test_createapikey_prints_a_working_key(db: None) -> None:
    out = StringIO()
    call_command("createapikey", "--name", "cli", "--scopes", "read", stdout=out)
    text = out.getvalue()
    raw = re.search(r"^\s+(\S+\.\S+)$", text, re.MULTILINE)[1]
    assert "not shown again" in text
    row = ApiKey.objects.get()
    assert (row.name, row.scopes, row.prefix) == ("cli", "read", raw.split(".")[0])
    seed("k", "v")
    client = key_client(raw)
    assert data(client.get("/api/v1/keys/k"))["value"] == "v"
    assert_error(client.put("/api/v1/keys/k", {"value": 1}, content_type=JSON), 403, "forbidden")

    quiet = StringIO()
    call_command("createapikey", "--name", "q", "--scopes", "read,write", "--quiet", stdout=quiet)
    raw2 = quiet.getvalue().strip()
    assert "\n" not in raw2
    assert (
        key_client(raw2).put("/api/v1/keys/k", {"value": 1}, content_type=JSON).status_code == 200
    )
    assert stored("k") == 1


@pytest.mark.parametrize("scopes", ["read,superuser", "internal", "", ","])
def test_createapikey_rejects_unknown_scopes(db: None, scopes: str) -> None:
    with pytest.raises(CommandError, match="scopes"):
        call_command("createapikey", "--name", "bad", "--scopes", scopes, stdout=StringIO())
    assert not ApiKey.objects.exists()


# Verification cache: no query on the hot path, revocation still takes effect ----------------------


def test_second_request_costs_no_query(
    make_key: Callable[..., str], django_assert_num_queries: Any
) -> None:
    seed("k", 1)
    client = key_client(make_key("read"))
    assert client.get("/api/v1/keys/k").status_code == 200
    with django_assert_num_queries(0):
        r = client.get("/api/v1/keys/k")
    assert data(r)["value"] == 1
    # A rejected key is remembered too, so a flood of bad keys does not hit the database.
    bogus = key_client("0123456789ab.bogus")
    assert_unauthorized(bogus.get("/api/v1/keys/k"))
    with django_assert_num_queries(0):
        assert_unauthorized(bogus.get("/api/v1/keys/k"))
    peer = Client(headers={"X-Cluster-Secret": cluster_settings.SECRET})
    with django_assert_num_queries(0):
        assert peer.get("/api/v1/keys/k").status_code == 200


def test_revoke_takes_effect_at_once_after_cache_clear(make_key: Callable[..., str]) -> None:
    seed("k", 1)
    client = key_client(make_key())
    assert client.get("/api/v1/keys/k").status_code == 200
    ApiKey.objects.get().revoke()
    key_cache.clear()  # what the admin does on the node that revoked
    assert_unauthorized(client.get("/api/v1/keys/k"))


def test_revoke_reaches_other_processes_within_auth_cache_seconds(
    make_key: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(key_cache, "clock", clock)
    seed("k", 1)
    client = key_client(make_key())
    assert client.get("/api/v1/keys/k").status_code == 200
    # Another process revokes: this one's cache is not cleared.
    ApiKey.objects.filter(pk=ApiKey.objects.get().pk).get().revoke()
    window = cluster_settings.AUTH_CACHE_SECONDS
    clock.advance(window - 0.01)
    assert data(client.get("/api/v1/keys/k"))["value"] == 1  # still trusted from the cache
    clock.advance(0.02)
    assert_unauthorized(client.get("/api/v1/keys/k"))


def test_auth_cache_seconds_is_a_setting(
    make_key: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(key_cache, "clock", clock)
    seed("k", 1)
    with override_settings(CACHE_CLUSTER={"AUTH_CACHE_SECONDS": 60}):
        client = key_client(make_key())
        assert client.get("/api/v1/keys/k").status_code == 200
        ApiKey.objects.get().revoke()
        clock.advance(59)
        assert client.get("/api/v1/keys/k").status_code == 200
        clock.advance(2)
        assert_unauthorized(client.get("/api/v1/keys/k"))


# The admin ----------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(db: None, django_user_model: Any, settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client()
    assert client.login(username="root", password="pw-for-tests")
    return client


RAW_KEY_RE = re.compile(r'<code id="raw-key"[^>]*>([^<]+)</code>')


def test_admin_add_form_shows_the_key_once(admin_client: Client) -> None:
    r = admin_client.post(
        "/admin/cacheapi/apikey/add/", {"name": "from-admin", "scope_choices": ["read"]}
    )
    assert r.status_code == 200
    page = r.content.decode()
    raw = RAW_KEY_RE.search(page)[1]
    row = ApiKey.objects.get()
    assert (row.name, row.scopes) == ("from-admin", "read")
    assert raw.startswith(row.prefix + ".")
    assert row.check_secret(raw.partition(".")[2])

    seed("k", "v")
    client = key_client(raw)
    assert data(client.get("/api/v1/keys/k"))["value"] == "v"
    assert_error(client.put("/api/v1/keys/k", {"value": 1}, content_type=JSON), 403, "forbidden")

    # Never shown again: not on the change page, not in the list.
    secret = raw.partition(".")[2]
    for page_url in (f"/admin/cacheapi/apikey/{row.pk}/change/", "/admin/cacheapi/apikey/"):
        r = admin_client.get(page_url)
        assert r.status_code == 200
        assert secret not in r.content.decode()
        assert row.prefix in r.content.decode()


def test_admin_add_form_needs_a_scope(admin_client: Client) -> None:
    r = admin_client.post("/admin/cacheapi/apikey/add/", {"name": "none"})
    assert r.status_code == 200
    assert RAW_KEY_RE.search(r.content.decode()) is None
    assert "This field is required" in r.content.decode()
    assert not ApiKey.objects.exists()


def test_admin_scope_change_applies_at_once(
    admin_client: Client, make_key: Callable[..., str]
) -> None:
    raw = make_key("read")
    client = key_client(raw)
    assert_error(client.put("/api/v1/keys/k", {"value": 1}, content_type=JSON), 403, "forbidden")
    row = ApiKey.objects.get()
    r = admin_client.post(
        f"/admin/cacheapi/apikey/{row.pk}/change/",
        {"name": row.name, "scope_choices": ["read", "write"]},
    )
    assert r.status_code == 302
    row.refresh_from_db()
    assert row.scopes == "read,write"
    assert client.put("/api/v1/keys/k", {"value": 1}, content_type=JSON).status_code == 200
    assert stored("k") == 1
    assert row.check_secret(raw.partition(".")[2])  # editing keeps the secret


def test_admin_revoke_action(admin_client: Client, make_key: Callable[..., str]) -> None:
    seed("k", 1)
    revoked_raw, kept_raw = make_key(name="revoked"), make_key(name="kept")
    revoked, kept = key_client(revoked_raw), key_client(kept_raw)
    assert revoked.get("/api/v1/keys/k").status_code == 200  # now cached as valid
    r = admin_client.post(
        "/admin/cacheapi/apikey/",
        {"action": "revoke", "_selected_action": [ApiKey.objects.get(name="revoked").pk]},
        follow=True,
    )
    assert r.status_code == 200
    assert "Revoked 1 API key(s)." in r.content.decode()
    assert ApiKey.objects.get(name="revoked").revoked_at is not None
    assert ApiKey.objects.get(name="kept").revoked_at is None
    assert_unauthorized(revoked.get("/api/v1/keys/k"))
    assert data(kept.get("/api/v1/keys/k"))["value"] == 1


def test_a_registry_outage_keeps_the_last_verdict_and_never_looks_like_a_revocation(
    make_key, monkeypatch
):
    from django.db import OperationalError

    from cacheapi.api import auth

    good = make_key("read,write")
    clock = FakeClock()
    monkeypatch.setattr(auth.key_cache, "clock", clock)
    client = Client(HTTP_X_API_KEY=good)
    assert client.get("/api/v1/stats").status_code == 200
    bogus = Client(HTTP_X_API_KEY="abcdef012345.nope")
    assert bogus.get("/api/v1/stats").status_code == 401

    def registry_down(raw):
        raise OperationalError("connection refused")

    monkeypatch.setattr(auth, "_load_principal", registry_down)
    clock.advance(3600)  # every cached verdict has expired
    assert client.get("/api/v1/stats").status_code == 200  # the last verdict stands
    assert bogus.get("/api/v1/stats").status_code == 401
    never_seen = Client(HTTP_X_API_KEY="fedcba987654.unknown").get("/api/v1/stats")
    assert never_seen.status_code == 503
    assert never_seen.json()["error"]["code"] == "unavailable"
