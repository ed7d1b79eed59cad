"""The frame layout of a stream between nodes: the one place that packs and unpacks frames.

A coordinator upgrades a keep-alive connection once (``POST /internal/v1/stream`` with
``Upgrade: cache-internal/1`` and the cluster secret; the owner answers ``101``) and then sends
one call after another on it, each answered in order:

- request frame: u32 length of the rest, u8 operation length, the operation (ASCII), the body
  (JSON, as the operation's HTTP body would be);
- answer frame: u32 length of the rest, u16 status, u16 headers length, the headers (a JSON
  object of strings), the body.

One operation has a binary body instead of JSON: ``put``, the replicated write every copy of a
set takes (``encode_put`` below has its layout), so that a value travels raw and neither side
builds or parses JSON on the write path.

The same operations answer ``POST /internal/v1/<op>`` over plain HTTP, for nodes whose server
cannot keep a connection (gunicorn's gthread worker).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import orjson

PREFIX = "/internal/v1/"
STREAM_OP = "stream"  # POST /internal/v1/stream with Upgrade: cache-internal/1
STREAM_PROTOCOL = "cache-internal/1"
LENGTH = struct.Struct(">I")  # the prefix of every frame
REQUEST_HEAD = struct.Struct(">IB")  # frame length, operation length
ANSWER_HEAD = struct.Struct(">IHH")  # frame length, status, headers length
MAX_ANSWER_FRAME = 1 << 31  # bytes; a bigger length is a broken stream, not an answer


class FrameError(ValueError):
    """A frame that does not follow the layout."""


def encode_request(op: str, body: bytes) -> bytes:
    name = op.encode("ascii")
    return REQUEST_HEAD.pack(1 + len(name) + len(body), len(name)) + name + body


def decode_request(frame: bytes | bytearray) -> tuple[str, bytes]:
    """A request frame after its length prefix -> (operation, body)."""
    if not frame or len(frame) < 1 + frame[0]:
        raise FrameError("a request frame shorter than its operation name")
    op = bytes(frame[1 : 1 + frame[0]]).decode("ascii", "replace")
    return op, bytes(frame[1 + frame[0] :])


def encode_answer(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    meta = orjson.dumps(dict(headers))
    return ANSWER_HEAD.pack(4 + len(meta) + len(body), status, len(meta)) + meta + body


def answer_sizes(head: bytes) -> tuple[int, int, int]:
    """An answer's fixed head -> (length of the rest, status, headers length); checked."""
    length, status, meta_length = ANSWER_HEAD.unpack(head)
    if not 4 + meta_length <= length <= MAX_ANSWER_FRAME:
        raise FrameError(f"a malformed answer frame ({length} bytes)")
    return length, status, meta_length


def decode_answer_rest(rest: bytes, meta_length: int) -> tuple[dict[str, str], bytes]:
    """The part of an answer after its head -> (headers by lower-case name, body)."""
    try:
        meta = orjson.loads(rest[:meta_length])
    except orjson.JSONDecodeError as exc:
        raise FrameError("the answer frame's headers are not JSON") from exc
    if not isinstance(meta, dict):
        raise FrameError("the answer frame's headers are not a JSON object")
    return {str(k).lower(): str(v) for k, v in meta.items()}, rest[meta_length:]


# Client streams (``cacheapi.api.streams``): a request body is the u32 length of its JSON part,
# the JSON part, then raw bytes (a binary value travels raw).
JSON_LENGTH = struct.Struct(">I")


def encode_body(json_part: bytes, raw: bytes = b"") -> bytes:
    return JSON_LENGTH.pack(len(json_part)) + json_part + raw


def split_body(body: bytes) -> tuple[bytes, bytes]:
    """A client stream's request body -> (its JSON part, the raw tail); checked."""
    if len(body) < JSON_LENGTH.size:
        raise FrameError("a frame's body starts with the u32 length of its JSON part")
    (length,) = JSON_LENGTH.unpack_from(body)
    end = JSON_LENGTH.size + length
    if end > len(body):
        raise FrameError("the JSON part is longer than the frame")
    return body[JSON_LENGTH.size : end], body[end:]


# A replicated write (``put``): u8 flags (1: the value is binary), f64 TTL in seconds (NaN: no
# expiry), i64 version microseconds, u32 version counter, u8 length of the version's node
# name, the name (ASCII), u16 key length, the key (UTF-8), then the value's bytes.
PUT_HEAD = struct.Struct("<BdqIB")
KEY_LENGTH = struct.Struct("<H")
PUT_BINARY = 1


def encode_put(
    key: str, value: bytes, binary: bool, ttl: float | None, version: tuple[int, int, str]
) -> bytes:
    """A ``put`` body. Raises ValueError for what the layout cannot carry: a node name over
    255 bytes or not ASCII, a key over 65,535 bytes or not UTF-8, numbers out of range."""
    ms, counter, node = version
    name, raw_key = node.encode("ascii"), key.encode("utf-8")
    try:
        head = PUT_HEAD.pack(
            PUT_BINARY if binary else 0, math.nan if ttl is None else ttl, ms, counter, len(name)
        )
        return head + name + KEY_LENGTH.pack(len(raw_key)) + raw_key + value
    except struct.error as exc:
        raise ValueError(f"a put cannot carry this write: {exc}") from exc


def decode_put(body: bytes) -> tuple[str, bytes, bool, float | None, tuple[int, int, str]]:
    """A ``put`` body -> (key, value, binary, TTL, version), the layout checked (the values
    are the caller's to validate); FrameError if it does not follow it."""
    try:
        flags, ttl, ms, counter, name_length = PUT_HEAD.unpack_from(body)
        at = PUT_HEAD.size + name_length
        node = body[PUT_HEAD.size : at].decode("ascii")
        (key_length,) = KEY_LENGTH.unpack_from(body, at)
        at += KEY_LENGTH.size
        key = body[at : at + key_length].decode("utf-8")
    except (struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"a malformed put: {exc}") from exc
    at += key_length
    if at > len(body) or flags & ~PUT_BINARY:
        raise FrameError("a malformed put: shorter than its lengths, or unknown flags")
    version = (ms, counter, node)
    return key, body[at:], bool(flags & PUT_BINARY), None if math.isnan(ttl) else ttl, version
