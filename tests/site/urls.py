"""A small Django site for the backend's end-to-end tests: a session counter, a cached page and
a template fragment cache, all on whatever ``CACHES["default"]`` the test configures."""

from __future__ import annotations

import itertools
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import engines
from django.urls import path
from django.views.decorators.cache import cache_page

renders = itertools.count(1)  # how often a view really ran

FRAGMENT = engines["django"].from_string(
    "{% load cache %}{% cache 60 greeting who %}hello {{ who }} #{{ n }}{% endcache %}"
)


def visits(request: HttpRequest) -> JsonResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})


@cache_page(60)
def cached(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"render #{next(renders)}")


def fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(FRAGMENT.render({"who": request.GET.get("who", "you"), "n": next(renders)}))


urlpatterns = [
    path("visits", visits),
    path("cached", cached),
    path("fragment", fragment),
]

# -- the rate limiter's views (tests/test_ratelimit.py) ---------------------------------------
from asgiref.sync import sync_to_async  # noqa: E402
from django.contrib import admin  # noqa: E402
from django.views import View  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from ratelimit.decorators import ratelimit  # noqa: E402
from ratelimit.drf import RateLimitThrottle  # noqa: E402


@ratelimit(rate="3/m", key="ip")
def limited(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(rate="2/m", key="ip", block=False)
def flagged(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"limited": request.limited})  # type: ignore[attr-defined]


@ratelimit(rate="2/m", key="ip", method="POST", group="shared")
def posts_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit(rate="2/m", key="ip", group="shared")
def shares_a_group(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


class Search(View):
    @ratelimit(rate="2/m", key="header:x-client")
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("found")


@ratelimit(rate="2/m", key="ip", algorithm="token_bucket")
async def async_view(request: HttpRequest) -> HttpResponse:
    await sync_to_async(lambda: None)()
    return HttpResponse("async ok")


class TwoPerMinute(RateLimitThrottle):
    rate = "2/m"


class Throttled(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes = [TwoPerMinute]

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("plain")


urlpatterns += [
    path("admin/", admin.site.urls),
    path("limited", limited),
    path("flagged", flagged),
    path("posts-only", posts_only),
    path("shares-a-group", shares_a_group),
    path("search", Search.as_view()),
    path("async", async_view),
    path("throttled", Throttled.as_view()),
    path("api/plain", plain),
    path("open/plain", plain),
]
