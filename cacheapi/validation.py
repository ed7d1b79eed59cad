"""Checks on what callers send: keys, TTLs, deltas, values and batch shapes.

These are the API's serializers, written as plain functions because they run on every request
(a DRF ``Serializer`` costs more than the store operation it guards). Each raises a
``CacheError`` with a message that says what to fix; nothing is changed before they pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from cacheapi import errors, values
from cacheapi.settings import cluster_settings

_BAD_KEY_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_UNSET = object()  # "ttl" absent from the body, as opposed to null


def validate_key(key: Any) -> str:
    if not isinstance(key, str):
        raise errors.InvalidKey("key must be a string")
    if not key:
        raise errors.InvalidKey("key must not be empty")
    limit = cluster_settings.MAX_KEY_BYTES
    if len(key) > limit or len(key.encode("utf-8", "surrogatepass")) > limit:
        raise errors.InvalidKey(f"key is longer than {limit} bytes of UTF-8")
    if _BAD_KEY_CHARS.search(key):
        raise errors.InvalidKey("key must not contain whitespace or control characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.InvalidKey("key is not valid UTF-8") from exc
    return key


def check_key_encoding(meta: Mapping[str, Any]) -> None:
    """Refuse a request whose key, as sent, is not UTF-8.

    Django re-percent-encodes path bytes that are not UTF-8 (``/keys/%ff`` would name the
    three-character key ``%FF``, the same key as ``/keys/%25FF``) and decodes a query with
    U+FFFD, so both checks read the request as it arrived: gunicorn's ``RAW_URI`` (absent
    under other servers, where only the query is checked) and the raw ``QUERY_STRING``."""
    path = str(meta.get("RAW_URI") or "").split("?", 1)[0]
    if not path.isascii() or "%" in path:
        _utf8(path)
    query = str(meta.get("QUERY_STRING") or "")
    if not query.isascii() or "%" in query:
        for part in query.split("&"):
            name, _, text = part.partition("=")
            if name == "key":
                _utf8(text.replace("+", " "))


def _utf8(text: str) -> None:
    try:
        unquote_to_bytes(text.encode("latin-1")).decode("utf-8")
    except UnicodeError as exc:
        raise errors.InvalidKey("key is not valid UTF-8 (percent-encode its UTF-8 bytes)") from exc


def validate_ttl(ttl: Any) -> float | None:
    """A positive number of seconds or None (never expires); absent means the default TTL."""
    if ttl is _UNSET:
        return cluster_settings.DEFAULT_TTL
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise errors.InvalidTTL("ttl must be a positive number of seconds or null")
    if ttl <= 0 or (isinstance(ttl, float) and not math.isfinite(ttl)):  # huge ints: below
        raise errors.InvalidTTL("ttl must be a positive number of seconds or null")
    if ttl > cluster_settings.MAX_TTL:
        raise errors.InvalidTTL(f"ttl must be at most {cluster_settings.MAX_TTL} seconds")
    return float(ttl)


def ttl_from_body(body: Mapping[str, Any]) -> float | None:
    return validate_ttl(body.get("ttl", _UNSET))


def ttl_from_text(text: str | None) -> float | None:
    """TTL given as text (query string or header), for raw-bytes uploads."""
    if text is None:
        return validate_ttl(_UNSET)
    if text.strip().lower() in {"null", "none", ""}:
        return None
    try:
        number = float(text)
    except ValueError as exc:
        raise errors.InvalidTTL("ttl must be a positive number of seconds or null") from exc
    return validate_ttl(number)


def validate_delta(body: Mapping[str, Any]) -> int:
    delta = body.get("delta", 1)
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise errors.InvalidRequest("delta must be an integer")
    if not -(2**63) <= delta < 2**63:
        raise errors.InvalidRequest("delta must fit in a signed 64-bit integer")
    return delta


def check_value_size(value: bytes) -> bytes:
    limit = cluster_settings.MAX_VALUE_BYTES
    if len(value) > limit:
        raise errors.ValueTooLarge(f"value is {len(value)} bytes encoded; the limit is {limit}")
    return value


def value_from_body(body: Mapping[str, Any]) -> tuple[bytes, bool]:
    """The "value" member of a JSON body -> (stored bytes, binary)."""
    if "value" not in body:
        raise errors.InvalidValue('body must have a "value" member')
    return wire_value(body["value"])


def wire_value(raw: Any) -> tuple[bytes, bool]:
    try:
        value, binary = values.from_wire(raw)
    except ValueError as exc:
        raise errors.InvalidValue(str(exc)) from exc
    return check_value_size(value), binary


def json_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise errors.InvalidRequest("body must be a JSON object")
    return data


def key_list(body: Mapping[str, Any]) -> list[str]:
    """The "keys" member of a batch body: validated, duplicates dropped, order kept."""
    keys = body.get("keys")
    if not isinstance(keys, list):
        raise errors.InvalidRequest('body must have a "keys" list')
    check_batch_size(len(keys))
    return list(dict.fromkeys(validate_keys(keys)))


def validate_keys(keys: list[Any]) -> list[str]:
    """``validate_key`` for a whole batch at once: one regex search and one encode over the
    keys joined (a bad character in any key is a bad character in the join), instead of a
    search and an encode per key. A batch that fails is checked key by key, for the message."""
    limit = cluster_settings.MAX_KEY_BYTES
    # Loops in C: every key a str (not a subclass), none empty, none over the limit in chars.
    if (
        keys
        and set(map(type, keys)) == {str}
        and 0 < min(map(len, keys)) <= max(map(len, keys)) <= limit
    ):
        joined = "".join(keys)
        if not _BAD_KEY_CHARS.search(joined):
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                pass  # a lone surrogate somewhere: the per-key pass names the key
            else:
                if joined.isascii() or all(len(k.encode("utf-8")) <= limit for k in keys):
                    return keys
    return [validate_key(k) for k in keys]


def check_batch_size(count: int) -> None:
    limit = cluster_settings.MAX_BATCH_KEYS
    if count > limit:
        raise errors.BatchTooLarge(f"batch has {count} keys; the limit is {limit}")


def item_list(body: Mapping[str, Any]) -> list[tuple[str, bytes, bool, float | None]]:
    """The "items" member of a batch set: every item checked before anything is stored."""
    items = body.get("items")
    if not isinstance(items, list):
        raise errors.InvalidRequest('body must have an "items" list')
    check_batch_size(len(items))
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise errors.InvalidRequest(f"items[{index}] must be an object")
        key = validate_key(item.get("key"))
        value, binary = value_from_body(item)
        parsed.append((key, value, binary, ttl_from_body(item)))
    return parsed
