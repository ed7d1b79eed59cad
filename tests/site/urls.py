"""A small Django site for the backend's end-to-end tests: a session counter, a cached page and
a template fragment cache, all on whatever ``CACHES["default"]`` the test configures."""

from __future__ import annotations

import itertools

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
