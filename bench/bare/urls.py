"""The one view of the bare Django app, on the same path as the node's single GET.

It does what a cache answer looks like without a cache: a small JSON dict keyed by the path's
key, ``{"key": key, "value": VALUE, "ttl": null}``, with a constant ``VALUE`` shaped like the
benchmark's values (about 100 bytes), rendered by ``JsonResponse`` (the standard library's
``json``). No store, no authentication, no validation.

The view sets ``Content-Length`` itself: in a node, Django's ``CommonMiddleware`` does that;
without any middleware gunicorn would send the answer chunked (and the benchmark's client
frames answers by ``Content-Length``). So both answers look alike on the wire.
"""

from django.http import HttpRequest, JsonResponse
from django.urls import path

VALUE = {
    "id": 1234,
    "user": "user-001234",
    "email": "user001234@example.com",
    "score": 512.345,
    "tags": ["alpha", "gamma"],
}


def get(request: HttpRequest, key: str) -> JsonResponse:
    response = JsonResponse({"key": key, "value": VALUE, "ttl": None})
    response["Content-Length"] = str(len(response.content))
    return response


urlpatterns = [path("api/v1/keys/<path:key>", get)]
