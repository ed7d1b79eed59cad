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


def _node_app():
    from django.core.wsgi import get_wsgi_application

    from cache_project.serving import ApiHandler, NodeApp, site_prefixes
    from cacheapi import node

    return NodeApp(ApiHandler(), get_wsgi_application(), node.internal_app(), site_prefixes())


@pytest.mark.django_db
def test_api_calls_take_the_lean_stack_with_the_security_headers(make_key):
    from cacheapi import node

    node.current().store.set("k", b'{"a":1}')
    app = _node_app()
    status, headers, body = _call(app, _environ("/api/v1/keys/k", x_api_key=make_key("read")))
    assert status == 200
    assert b'"value":{"a":1}' in body
    assert headers["Content-Length"] == str(len(body))
    # Security headers stay on every API answer...
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    # ...but nothing that guards browser sessions runs: no cookie, no clickjacking header.
    assert "Set-Cookie" not in headers
    assert "X-Frame-Options" not in headers
    assert "Cookie" not in headers.get("Vary", "")

    for path in ("/health", "/metrics", "/get", "/nope"):
        status, headers, _ = _call(app, _environ(path))
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert "X-Frame-Options" not in headers, path
    status, _, body = _call(app, _environ("/api/v1/keys/k"))
    assert status == 401  # no key: the API's own authentication still runs
    assert b'"unauthorized"' in body


@pytest.mark.django_db
def test_the_admin_keeps_the_full_stack_session_and_csrf():
    import io
    from http.cookies import SimpleCookie

    app = _node_app()
    status, headers, body = _call(app, _environ("/admin/login/"))
    assert status == 200
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    cookie = SimpleCookie(headers["Set-Cookie"])
    assert "csrftoken" in cookie  # the login form carries a CSRF token

    # A login POST without the CSRF token is refused.
    form = b"username=admin&password=x&next=/admin/"
    environ = _environ("/admin/login/")
    environ.update(
        REQUEST_METHOD="POST",
        CONTENT_TYPE="application/x-www-form-urlencoded",
        CONTENT_LENGTH=str(len(form)),
    )
    environ["wsgi.input"] = io.BytesIO(form)
    status, _, body = _call(app, environ)
    assert status == 403
    assert b"CSRF" in body
    # An admin page needs a session: without one, the admin redirects to its login.
    status, headers, _ = _call(app, _environ("/admin/nodes/node/"))
    assert status == 302
    assert headers["Location"].startswith("/admin/login/")


def test_each_path_goes_to_its_stack():
    from cache_project.serving import NodeApp

    seen = []

    def app(name):
        def serve(environ, start_response):
            seen.append(name)
            return [b""]

        return serve

    node_app = NodeApp(app("api"), app("site"), app("internal"), ("/admin/", "/static/"))
    for path in (
        "/internal/v1/get",
        "/api/v1/keys/k",
        "/admin/login/",
        "/static/admin/css/base.css",
        "/admin/internal/v1/get",
        "/health",
        "/metrics",
        "/get",
        "/sync",
        "/adminx",
    ):
        node_app(_environ(path), None)
    assert seen == [
        "internal",
        "api",
        "site",
        "site",
        "site",
        "api",
        "api",
        "api",
        "api",
        "api",
    ]
