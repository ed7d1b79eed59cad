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
