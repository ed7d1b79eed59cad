"""Content negotiation that costs almost nothing on the hot path.

DRF's default negotiation parses every Accept header into media types and scores them; a cache
answers JSON unless raw bytes are asked for, so the common headers (none, ``*/*``, JSON first)
are recognised without parsing. Any other header is parsed into the media ranges it admits
(``q=0`` admits nothing): a type a renderer produces is chosen by name first, then through a
wildcard (``*/*``, ``application/*``), in the renderers' order; a header that admits none of
them is answered 406 ``not_acceptable``, as the OpenAPI schema says. A browser's
``text/html,...,*/*;q=0.8`` therefore gets JSON. DRF's ``?format=`` override still goes
through DRF's own negotiation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rest_framework.exceptions import NotAcceptable
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
        if not accept or accept == "*/*" or leads_with(accept, first.media_type):
            return first, first.media_type
        admitted = admitted_ranges(accept)
        for renderer in renderers:
            if renderer.media_type in admitted:
                return renderer, renderer.media_type
        for renderer in renderers:
            if "*/*" in admitted or renderer.media_type.split("/")[0] + "/*" in admitted:
                return renderer, renderer.media_type
        offered = ", ".join(r.media_type for r in renderers)
        raise NotAcceptable(f"Accept admits none of the types this call answers with: {offered}")


def admitted_ranges(accept: str) -> set[str]:
    """The media ranges an Accept header admits (``type/subtype``, lower case), q=0 left out."""
    admitted = set()
    for part in accept.split(","):
        media_range, *params = part.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a malformed weight admits nothing
        if quality > 0:
            admitted.add(media_range.strip().lower())
    return admitted


def leads_with(accept: str, media_type: str) -> bool:
    """``accept`` starts with exactly ``media_type``, without parameters (a ``q`` might be 0),
    and not a longer type such as ``...+json``."""
    rest = accept[len(media_type) : len(media_type) + 1]
    return accept.startswith(media_type) and rest in ("", ",", " ")
