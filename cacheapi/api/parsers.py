"""Request body parsers: strict JSON (exact numbers, no NaN) and raw bytes, both size-capped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any, Protocol

from rest_framework.parsers import BaseParser

from cacheapi import errors, values
from cacheapi.settings import cluster_settings


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def read_capped(stream: Readable, parser_context: Mapping[str, Any] | None) -> bytes:
    """Read the body, refusing one larger than MAX_REQUEST_BYTES before buffering it all."""
    limit = cluster_settings.MAX_REQUEST_BYTES
    request = (parser_context or {}).get("request")
    length = request.META.get("CONTENT_LENGTH") if request is not None else None
    digits = length.lstrip("0") if length and length.isascii() and length.isdigit() else ""
    # Compared by length first: int() refuses more than 4,300 digits (a ValueError, not a 413).
    if digits and (len(digits) > len(str(limit)) or int(digits) > limit):
        raise errors.RequestTooLarge(f"request body is {length} bytes; the limit is {limit}")
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise errors.RequestTooLarge(f"request body is over the limit of {limit} bytes")
    return data


class StrictJSONParser(BaseParser):
    media_type = "application/json"

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        data = read_capped(stream, parser_context)
        try:
            return values.loads(data)
        except values.DecodeError as exc:
            raise errors.InvalidJSON(f"body is not valid JSON: {exc}") from exc


class OctetStreamParser(BaseParser):
    """Raw bytes for ``PUT /api/v1/keys/{key}`` with ``Content-Type: application/octet-stream``."""

    media_type = "application/octet-stream"

    # The stubs allow only Mapping | DataAndFiles, but DRF hands request.data through unchanged,
    # and KeyViewSet relies on getting the raw bytes.
    def parse(  # type: ignore[override]
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        return read_capped(stream, parser_context)
