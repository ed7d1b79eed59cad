"""Content negotiation that costs almost nothing on the hot path.

DRF's default negotiation parses every Accept header into media types and scores them; a cache
answers JSON unless raw bytes are asked for, so this checks for the two cases that matter.
A type this resource cannot produce gets the first renderer (JSON) rather than 406: a health
probe or a browser sending ``text/html`` is better served by JSON than by an error. DRF's
``?format=`` override still goes through DRF's own negotiation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

OCTET = "application/octet-stream"


class FastNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self,
        request: Request,
        renderers: Iterable[BaseRenderer],
        format_suffix: str | None = None,
    ) -> tuple[BaseRenderer, str]:
        # DRF always passes a list; copy only an iterable that cannot be indexed.
        if not isinstance(renderers, Sequence):
            renderers = list(renderers)
        if format_suffix or "format=" in request.META.get("QUERY_STRING", ""):
            return super().select_renderer(request, renderers, format_suffix)
        accept = request.META.get("HTTP_ACCEPT", "")
        first = renderers[0]
        if not accept or accept == "*/*" or _leads_with(accept, first.media_type):
            return first, first.media_type
        wanted = {part.split(";", 1)[0].strip() for part in accept.split(",")}
        for renderer in renderers:
            if renderer.media_type in wanted:
                return renderer, renderer.media_type
        return first, first.media_type


def _leads_with(accept: str, media_type: str) -> bool:
    """``accept`` starts with exactly ``media_type`` (not a longer type such as ``...+json``)."""
    rest = accept[len(media_type) : len(media_type) + 1]
    return accept.startswith(media_type) and rest in ("", ";", ",", " ")
