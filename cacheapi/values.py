"""How values travel: strict JSON in, stored bytes, and the wire form out.

A value is stored encoded: JSON text, or raw bytes flagged ``binary``. In JSON bodies a binary
value travels as ``{"b64": "..."}``. A JSON object whose only key is ``b64`` or ``json`` is
therefore reserved; clients that must store such an object wrap it as ``{"json": obj}`` (the
Python client does this for you), which keeps every value's round trip exact.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from typing import Any
from urllib.parse import quote

import orjson

WIRE_KEYS = frozenset({"b64", "json"})
# Larger objects come from the C allocator (malloc), not Python's small-object one.
_SMALL_OBJECT = 512


class DecodeError(ValueError):
    """The body is not strict JSON (bad syntax, NaN/Infinity, numbers out of range)."""


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise DecodeError(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    """Python refuses to convert integers of more than ``sys.get_int_max_str_digits()`` digits
    (4,300 by default) with a ValueError; a body holding one is bad input, not a crash."""
    limit = sys.get_int_max_str_digits()
    digits = len(text) - text.startswith("-")
    if limit and digits > limit:
        raise DecodeError(f"an integer of {digits} digits is longer than the {limit} allowed")
    return int(text)


_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
)


# Maps every ASCII digit to "d" and every other byte to ".": a run of 19 "d" in the mapped text
# is a run of 19 digits, which may be an integer beyond 64 bits (orjson would round it to a
# float). translate + a substring search is ~20x cheaper than the regex [0-9]{19}.
_DIGITS = bytes(ord("d") if 48 <= i <= 57 else ord(".") for i in range(256))
_LONG_RUN = b"d" * 19


def loads(data: bytes | str) -> Any:
    """Parse strict JSON exactly: orjson when the text holds no long digit run, else json
    (which keeps integers of any size; orjson would round them to floats)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _LONG_RUN not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(str(exc)) from exc
    return _exact_loads(data)


def _exact_loads(data: bytes | str) -> Any:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        value, end = _decoder.raw_decode(text.strip())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError(str(exc)) from exc
    if end != len(text.strip()):
        raise DecodeError("extra data after the JSON document")
    return value


def dumps(value: Any) -> bytes:
    """Encode compactly with orjson; fall back to json where orjson stops (integers beyond 64
    bits, nesting deeper than 255). Raises ValueError for a value nested too deeply for both, or
    holding an integer too long to write out (over ``sys.get_int_max_str_digits()`` digits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except RecursionError as exc:
            raise ValueError("value is nested too deeply") from exc
        except ValueError as exc:  # an integer beyond sys.get_int_max_str_digits()
            raise ValueError(f"value cannot be encoded: {exc}") from exc


def key_path(key: str) -> str:
    """The REST path of a key, percent-encoded (a key may hold "/" and other URL characters)."""
    return "/api/v1/keys/" + quote(key, safe="")


def from_wire(value: Any) -> tuple[bytes, bool]:
    """A value from a JSON body -> (stored bytes, binary). Raises ValueError on bad base64."""
    if type(value) is dict and len(value) == 1 and "b64" in value:
        text = value["b64"]
        if not isinstance(text, str):
            raise ValueError('"b64" must be a base64 string')
        return b64decode(text, '"b64"'), True
    data = dumps(value)
    if len(data) > _SMALL_OBJECT:
        # orjson grows its output by reallocating and then shrinks it in place; a node that
        # kept those buffers (or allocated around them) fragmented its heap to ~2x its budget
        # under steady eviction. An exact copy, made while orjson's is freed, keeps it within.
        data = bytes(memoryview(data))
    return data, False


def b64decode(text: str, what: str = "value") -> bytes:
    """Strict base64 (no stray characters); raises ValueError naming ``what``."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from exc


def check_json_text(text: str) -> None:
    """Raise DecodeError unless ``text`` is one strict JSON document (big integers allowed)."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        loads(text)  # exact parser: integers beyond 64 bits pass, anything else raises


def to_wire(value: bytes, binary: bool) -> Any:
    """Stored bytes -> something the JSON renderer embeds without re-parsing."""
    if binary:
        return {"b64": base64.b64encode(value).decode("ascii")}
    return orjson.Fragment(value)


def client_encode(value: Any) -> Any:
    """Client side: a Python value -> its wire form (bytes become b64, reserved shapes wrapped)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if type(value) is dict and len(value) == 1 and next(iter(value)) in WIRE_KEYS:
        return {"json": value}
    return value


def client_decode(value: Any) -> Any:
    """Client side: the inverse of ``client_encode``."""
    if type(value) is dict and len(value) == 1:
        if "b64" in value and isinstance(value["b64"], str):
            return binascii.a2b_base64(value["b64"])  # base64.b64decode, minus its wrapper
        if "json" in value:
            return value["json"]
    return value
