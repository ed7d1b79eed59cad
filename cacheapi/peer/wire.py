"""How values, TTLs and versions cross between nodes: the one place that writes and reads them.

Values travel as they are stored, so nothing is re-encoded on the way and big integers stay
exact: the JSON text of a value as a JSON string, raw bytes as base64. A single-key read answers
with the stored bytes as its body and the rest in headers (``X-Value-Type``, ``X-TTL``,
``X-Version``); the public API's GET sends the same ``X-TTL`` and the version as its ETag.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any, Protocol

from cacheapi import errors, validation, values
from cacheapi.store import Hit, Version, format_version, parse_version

SECRET_HEADER = "X-Cluster-Secret"
SECRET_ENVIRON = "HTTP_X_CLUSTER_SECRET"
RING_HEADER = "X-Ring-Version"
INTERNAL_HEADER = "X-Cache-Internal"  # on every answer of the owner's side: "1"
TTL_HEADER = "X-TTL"
TYPE_HEADER = "X-Value-Type"
VERSION_HEADER = "X-Version"


def secrets_match(presented: str, secret: str) -> bool:
    """Constant-time comparison; an empty configured secret matches nothing."""
    if not secret:
        return False
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass")
    )


def format_ttl(ttl: float | None) -> str:
    """Seconds left, to the millisecond, or ``none``."""
    return "none" if ttl is None else f"{ttl:.3f}"


def parse_ttl(text: str) -> float | None:
    """The inverse of ``format_ttl``; ValueError on anything else."""
    if text == "none":
        return None
    seconds = float(text)
    if seconds != seconds:  # NaN
        raise ValueError("X-TTL is not a number")
    return seconds


def hit_headers(hit: Hit) -> list[tuple[str, str]]:
    """The headers that describe a read value: its type, TTL left and version."""
    return [
        (TYPE_HEADER, "binary" if hit.binary else "json"),
        (TTL_HEADER, format_ttl(hit.ttl)),
        (VERSION_HEADER, format_version(hit.version)),
    ]


class HeaderLookup(Protocol):
    """Headers by lower-case name (a dict, or the transport's ``Headers``)."""

    def __getitem__(self, name: str) -> str: ...

    def get(self, name: str, default: str = "") -> str: ...


def parse_hit(headers: HeaderLookup, body: bytes) -> Hit:
    """A read answer (headers by lower-case name) -> Hit; KeyError/ValueError if malformed."""
    kind = headers[TYPE_HEADER.lower()]
    if kind not in ("json", "binary"):
        raise ValueError(f"{TYPE_HEADER} {kind!r}")
    return Hit(
        value=body,
        binary=kind == "binary",
        ttl=parse_ttl(headers.get(TTL_HEADER.lower(), "none")),
        version=parse_version(headers[VERSION_HEADER.lower()]),
    )


def encode_value(value: bytes, binary: bool) -> str:
    """Stored bytes -> the string that carries them in an internal call."""
    return base64.b64encode(value).decode("ascii") if binary else value.decode("utf-8")


def decode_value(text: Any, binary: Any) -> tuple[bytes, bool]:
    """The inverse of ``encode_value``, checked: raises InvalidValue on a malformed value."""
    if not isinstance(text, str) or not isinstance(binary, bool):
        raise errors.InvalidValue('"value" must be a string and "binary" true or false')
    try:
        value = values.b64decode(text) if binary else text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.InvalidValue("value is not valid UTF-8") from exc
    except ValueError as exc:  # bad base64
        raise errors.InvalidValue(str(exc)) from exc
    validation.check_value_size(value)  # before parsing a value that is too large
    if not binary:
        _strict_json(text)
    return value, binary


def _strict_json(text: str) -> None:
    try:
        values.check_json_text(text)
    except values.DecodeError as exc:
        raise errors.InvalidValue(f"value is not one strict JSON document: {exc}") from exc
    except ValueError as exc:
        raise errors.InvalidValue(str(exc)) from exc


def check_json_value(value: bytes) -> None:
    """A JSON value as it travels raw (a ``put``): InvalidValue unless it is UTF-8 and one
    strict JSON document, as ``decode_value`` checks a value sent as text."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InvalidValue("value is not valid UTF-8") from exc
    _strict_json(text)


def encode_version(version: Version) -> str:
    return format_version(version)


def decode_version(text: Any, what: str = '"version"') -> Version:
    """A version sent by a peer; InvalidRequest if it is not one."""
    try:
        return parse_version(text)
    except ValueError as exc:
        raise errors.InvalidRequest(f"{what} {text!r} is not a write version") from exc
