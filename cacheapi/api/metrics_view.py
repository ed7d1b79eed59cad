"""``/metrics``: django-prometheus' exporter, for GET and HEAD only.

The exporter is a plain Django view that answers any method (``TRACE /metrics`` got the whole
page, ``POST`` Django's HTML CSRF refusal); this one answers other methods 405 with ``Allow``
and the API's error envelope, and HEAD with the headers only.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django_prometheus.exports import ExportToDjangoView

from cacheapi.errors import error_body

ALLOWED = ("GET", "HEAD")


@csrf_exempt
def metrics(request: HttpRequest) -> HttpResponse:
    if request.method not in ALLOWED:
        response = JsonResponse(
            error_body("method_not_allowed", f'Method "{request.method}" not allowed.'),
            status=405,
        )
        response["Allow"] = ", ".join(ALLOWED)
        return response
    response = ExportToDjangoView(request)
    if request.method == "HEAD":
        response["Content-Length"] = str(len(response.content))
        response.content = b""
    return response
