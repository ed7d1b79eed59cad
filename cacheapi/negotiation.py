"""Content negotiation that costs almost nothing on the hot path.

DRF's default negotiation parses every Accept header into media types and scores them; a cache
answers JSON unless raw bytes are asked for, so this checks for the two cases that matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation

OCTET = "application/octet-stream"


class FastNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self, request: Any, renderers: Sequence[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        accept = request.META.get("HTTP_ACCEPT", "")
        first = renderers[0]
        if not accept or accept == "*/*" or _leads_with(accept, first.media_type):
            return first, first.media_type
        wanted = {part.split(";", 1)[0].strip() for part in accept.split(",")}
        for renderer in renderers:
            if renderer.media_type in wanted:
                return renderer, renderer.media_type
        if wanted & {"*/*", "application/*"}:
            return first, first.media_type
        raise exceptions.NotAcceptable(
            f"this resource can answer {', '.join(r.media_type for r in renderers)}"
        )


def _leads_with(accept: str, media_type: str) -> bool:
    """``accept`` starts with exactly ``media_type`` (not a longer type such as ``...+json``)."""
    rest = accept[len(media_type) : len(media_type) + 1]
    return accept.startswith(media_type) and rest in ("", ";", ",", " ")
