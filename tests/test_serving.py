"""The gevent fairness wrapper: yields after the answer is sent, keeps sendfile, closes."""

from __future__ import annotations

import pytest

from cache_project.serving import YieldAfterResponse


class Body(list):
    closed = False

    def close(self):
        self.closed = True


class FileWrapper:
    def __init__(self, f):
        self.f = f


def test_yields_once_after_the_response_is_closed():
    events = []
    body = Body([b"a", b"b"])
    app = YieldAfterResponse(lambda env, sr: body, lambda s: events.append(("sleep", s)))
    result = app({}, None)
    assert list(result) == [b"a", b"b"]
    assert events == []
    result.close()
    assert body.closed
    assert events == [("sleep", 0)]


def test_file_wrapper_results_pass_through_for_sendfile():
    wrapped = FileWrapper(None)
    app = YieldAfterResponse(lambda env, sr: wrapped, lambda s: None)
    assert app({"wsgi.file_wrapper": FileWrapper}, None) is wrapped


def test_yields_even_if_close_raises():
    events = []

    class Bad(list):
        def close(self):
            raise RuntimeError("boom")

    app = YieldAfterResponse(lambda env, sr: Bad(), lambda s: events.append(s))
    result = app({}, None)
    with pytest.raises(RuntimeError, match="boom"):
        result.close()
    assert events == [0]


def _environ(path: str, **headers: str) -> dict:
    import io

    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8001",
        "HTTP_HOST": "127.0.0.1:8001",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
    }
    env.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    return env


def _call(app, environ):
    seen = {}

    def start_response(status, headers):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.django_db
def test_peer_calls_skip_the_middleware_and_clients_do_not():
    from django.core.wsgi import get_wsgi_application

    from cache_project.serving import PeerShortcut, peer_handler
    from cacheapi import node
    from cacheapi.settings import cluster_settings

    node.store().set("k", b'{"a":1}')
    app = PeerShortcut(get_wsgi_application(), peer_handler(), node.internal_app())
    secret = cluster_settings.SECRET

    status, headers, body = _call(
        app, _environ("/api/v1/keys/k", x_cluster_secret=secret, x_forwarded_hops="1")
    )
    assert status == 200
    assert b'"value":{"a":1}' in body
    assert headers["Content-Length"] == str(len(body))
    assert "X-Frame-Options" not in headers  # no browser-facing middleware between nodes

    status, headers, _ = _call(app, _environ("/api/v1/keys/k"))
    assert status == 401  # a client without a key, through the full chain
    assert headers["X-Frame-Options"] == "DENY"

    # The secret is still checked on the short path.
    status, _, body = _call(
        app, _environ("/api/v1/keys/k", x_cluster_secret="wrong", x_forwarded_hops="1")
    )
    assert status == 401
    assert b"unauthorized" in body
    # The admin never takes the short path.
    status, headers, _ = _call(
        app, _environ("/admin/login/", x_cluster_secret=secret, x_forwarded_hops="1")
    )
    assert status == 200
    assert headers["X-Frame-Options"] == "DENY"


def test_internal_paths_go_to_the_internal_app_whatever_the_headers():
    from cache_project.serving import PeerShortcut

    seen = []

    def app(name):
        def serve(environ, start_response):
            seen.append(name)
            return [b""]

        return serve

    shortcut = PeerShortcut(app("django"), app("peer"), app("internal"))
    shortcut(_environ("/internal/v1/get"), None)  # no secret: the internal app refuses it
    shortcut(_environ("/internal/v1/get", x_cluster_secret="s", x_forwarded_hops="1"), None)
    shortcut(_environ("/api/v1/keys/k", x_cluster_secret="s", x_forwarded_hops="1"), None)
    shortcut(_environ("/api/v1/keys/k"), None)
    shortcut(_environ("/admin/internal/v1/get"), None)
    assert seen == ["internal", "internal", "peer", "django", "django"]
