"""Client streams: the API's fast lane, one upgraded connection carrying framed calls.

A client upgrades a keep-alive connection once (``POST /api/v1/stream``, ``Upgrade: cache/1``,
its API key in ``X-API-Key`` or ``Authorization: Api-Key ...``, an empty body); the node answers
``101`` and from then on each frame is one call, answered in order. Frames use the peer
protocol's layout (``cacheapi.peer.frames``: u32 length, u8 operation length, the operation,
the body; answers: u32 length, u16 status, u16 headers length, headers as a JSON object, body).
A request body is ``u32 length of the JSON part``, the JSON part, then raw bytes: the value of
a ``set`` whose JSON says ``"binary": true`` travels raw, not base64. ``docs/streams.md`` is the
protocol reference.

Every call is a coordinator's call, the same as over REST: the same validation, limits, scopes
(``read`` for get, has and get_many; ``write`` for the rest), error codes and statuses, the
router's replication and failover. The API key is checked again on every frame through the
verification cache, so a revoked key stops working within ``AUTH_CACHE_SECONDS`` (the answer is
401 and the stream closes). A frame over the body limit is read past and answered 413; the
stream goes on. A stream idle for ``STREAM_IDLE_SECONDS`` (a setting) is closed. A node whose server
cannot hand a connection over (gunicorn's gthread worker) answers the upgrade 501
``streams_unavailable``, and clients use plain HTTP.

Operations (JSON part -> answer):

- ``get`` ``{"key"}`` -> the stored bytes, with ``x-value-type`` (json or binary), ``x-ttl`` and
  ``x-version`` headers; 404 ``not_found``
- ``has`` ``{"key"}`` -> 200 with the same headers and no body; 404
- ``set`` ``{"key", "value"?, "binary"?, "ttl"?, "add"?, "if_version"?}`` -> ``{"version",
  "copies"}``; ``add`` stores only if absent, ``if_version`` only over that version (412
  ``precondition_failed`` otherwise). ``value`` is the JSON value; with ``"binary": true`` the
  value is the raw tail of the frame instead. An omitted ``ttl`` means ``DEFAULT_TTL``
- ``delete`` ``{"key"}`` -> ``{"copies"}``; 404
- ``touch`` ``{"key", "ttl"}`` -> ``{"ttl", "copies"}``; 404
- ``incr`` ``{"key", "delta"?}`` -> ``{"value", "copies"}``; 404, 409 ``not_integer``
- ``get_many`` ``{"keys"}`` -> ``{"values", "missing", "failed"}`` (binary values as ``{"b64"}``)
- ``set_many`` ``{"items": [{"key", "value", "ttl"?}, ...]}`` -> ``{"stored", "failed"}``
- ``delete_many`` ``{"keys"}`` -> ``{"deleted", "failed"}``
- ``ratelimit`` ``{"key", "rate", "algorithm"?, "cost"?, "burst"?}`` -> ``{"allowed", "limit",
  "remaining", "reset_after", "retry_after"}`` (as ``POST /api/v1/ratelimit/hit``)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db import DatabaseError

from cacheapi import errors, validation, values
from cacheapi.api.auth import Principal, presented_key, verify_key
from cacheapi.api.limits import counter_namespace, stream_over_limit
from cacheapi.peer import frames
from cacheapi.peer.server import _end_stream, ratelimit_call, read_frame_body
from cacheapi.peer.transport import send_all
from cacheapi.peer.wire import RING_HEADER, hit_headers
from cacheapi.store import StoreError, Version, format_version, parse_version
from ratelimit import algorithms

log = logging.getLogger(__name__)

PATH = "/api/v1/stream"
PROTOCOL = "cache/1"
_STATUS = {
    400: "400 Bad Request",
    401: "401 Unauthorized",
    501: "501 Not Implemented",
    503: "503 Service Unavailable",
}
READS = frozenset({"get", "has", "get_many"})

Answer = tuple[int, list[tuple[str, str]], bytes]


def _json(data: Any, status: int = 200) -> Answer:
    return status, [("content-type", "application/json")], values.dumps(data)


def _error(exc: errors.CacheError) -> Answer:
    return _json(errors.error_body(exc.code, exc.message), exc.status)


def split_body(body: bytes) -> tuple[Mapping[str, Any], bytes]:
    """A request body -> (its JSON object, the raw tail)."""
    try:
        text, tail = frames.split_body(body)
    except frames.FrameError as exc:
        raise errors.InvalidRequest(str(exc)) from exc
    try:
        parsed = values.loads(text)
    except values.DecodeError as exc:
        raise errors.InvalidJSON(f"the JSON part is not valid JSON: {exc}") from exc
    return validation.json_object(parsed), tail


def encode_body(data: Mapping[str, Any], raw: bytes = b"") -> bytes:
    """The inverse of ``split_body`` (for clients and tests)."""
    return frames.encode_body(values.dumps(data), raw)


class ClientStreams:
    """The WSGI app at ``/api/v1/stream``. ``router`` and ``ring_version`` are read per call;
    ``observe(op, seconds, error)`` records each call (``stream_<op>`` in the metrics)."""

    def __init__(
        self,
        router: Callable[[], Any],
        *,
        max_body: Callable[[], int],
        ring_version: Callable[[], int] = lambda: 0,
        observe: Callable[[str, float, bool], None] = lambda op, seconds, error: None,
        already_handled: object | None = None,
        pause: Callable[[float], None] = lambda seconds: None,
        idle_seconds: Callable[[], float] = lambda: 60.0,
    ) -> None:
        self._router = router
        self._idle_seconds = idle_seconds
        self._max_body = max_body
        self._ring_version = ring_version
        self._observe = observe
        self._already_handled = already_handled
        self._pause = pause
        self._ops: dict[str, Callable[[Any, Mapping[str, Any], bytes], Answer]] = {
            "get": self._get,
            "has": self._has,
            "set": self._set,
            "delete": self._delete,
            "touch": self._touch,
            "incr": self._incr,
            "get_many": self._get_many,
            "set_many": self._set_many,
            "delete_many": self._delete_many,
            "ratelimit": self._ratelimit,
        }

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        try:
            raw_key, sock = self._upgrade(environ)
        except errors.CacheError as exc:
            status, headers, body = _error(exc)
            headers = [*headers, ("Content-Length", str(len(body)))]
            if exc.status == 401:
                headers.append(("WWW-Authenticate", 'Api-Key realm="api"'))
            start_response(_STATUS.get(status, f"{status} Error"), headers)
            return [body]
        self._observe("stream_open", 0.0, False)
        self._serve(raw_key, sock)
        return self._already_handled  # type: ignore[return-value]

    def _upgrade(self, environ: dict[str, Any]) -> tuple[str, Any]:
        if environ.get("HTTP_UPGRADE", "").lower() != PROTOCOL:
            raise errors.InvalidRequest(f"{PATH} needs Upgrade: {PROTOCOL}")
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or environ.get("SERVER_PROTOCOL") != "HTTP/1.1"
            or (environ.get("CONTENT_LENGTH") or "0") != "0"
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            raise errors.InvalidRequest("an upgrade is an HTTP/1.1 POST with an empty body")
        raw = presented_key(environ)
        if raw is None:
            raise errors.Unauthorized(
                "an API key is required (X-API-Key or Authorization: Api-Key)"
            )
        self._principal(raw)
        sock = environ.get("gunicorn.socket")
        if self._already_handled is None or sock is None:
            raise errors.StreamsUnavailable("this node serves the API over HTTP only")
        return raw, sock

    @staticmethod
    def _principal(raw: str) -> Principal:
        try:
            principal = verify_key(raw)
        except DatabaseError as exc:
            raise errors.Unavailable("the key registry is unreachable; try again") from exc
        if principal is None:
            raise errors.Unauthorized("unknown or revoked API key")
        return principal

    # -- the frame loop ----------------------------------------------------------------------
    def _serve(self, raw_key: str, sock: Any) -> None:
        reader = None
        idle = self._idle_seconds()
        try:
            sock.settimeout(idle)
            sock.sendall(
                f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {PROTOCOL}\r\n"
                "Connection: Upgrade\r\n\r\n".encode()
            )
            reader = sock.makefile("rb")
            while True:
                head = reader.read(frames.LENGTH.size)
                if len(head) < frames.LENGTH.size:
                    return  # closed by the client, or idle
                (length,) = frames.LENGTH.unpack(head)
                limit = self._max_body() + 256
                if not 1 <= length <= limit:
                    if length and not _skip(reader, sock, length, idle):
                        return
                    too_large = errors.RequestTooLarge(f"frame of {length} bytes; limit {limit}")
                    self._send(sock, _error(too_large))
                    continue
                frame = read_frame_body(reader, sock, length, idle)
                if frame is None:
                    return
                answer, keep = self._call(raw_key, frame)
                self._send(sock, answer)
                if not keep:
                    return
                self._pause(0)
        except (OSError, ValueError):  # reset, idle or frame timeout
            return
        except Exception:  # a bug: close this stream, never hand it back half-read
            log.exception("client stream failed")
        finally:
            if reader is not None:
                reader.close()
            _end_stream(sock)

    def _call(self, raw_key: str, frame: bytes | bytearray) -> tuple[Answer, bool]:
        """One frame's answer, and whether the stream goes on."""
        started = time.perf_counter()
        op = "?"
        try:
            op, body = frames.decode_request(frame)
            handler = self._ops.get(op)
            if handler is None:
                raise errors.UnknownOperation(f"no stream operation {op!r}")
            principal = self._principal(raw_key)  # cached: a revocation lands within seconds
            scope = "read" if op in READS else "write"
            if not principal.has_scope(scope):
                raise errors.Forbidden(f"this API key lacks the {scope!r} scope")
            refused = stream_over_limit(raw_key)  # API_RATE_LIMIT, as over HTTP
            if refused is not None:
                return _limited(refused), True
            data, tail = split_body(body)
            if op == "ratelimit":  # counters live in the caller's namespace
                answer = self._ratelimit(self._router(), data, tail, (principal, raw_key))
            else:
                answer = handler(self._router(), data, tail)
        except errors.CacheError as exc:
            answer = _error(exc)
        except StoreError as exc:
            answer = _error(errors.from_store_error(exc))
        except frames.FrameError as exc:
            answer = _error(errors.InvalidRequest(str(exc)))
        except Exception:  # a bug: answer it as the REST API would, and keep the stream
            log.exception("stream call %s failed", op)
            answer = _error(errors.ServerError("the call failed"))
        status = answer[0]
        if op in self._ops:
            failed = status >= 400 and status not in (404, 412)
            self._observe(f"stream_{op}", time.perf_counter() - started, failed)
        return answer, status != 401

    def _send(self, sock: Any, answer: Answer) -> None:
        status, headers, body = answer
        headers = [*headers, (RING_HEADER.lower(), str(self._ring_version()))]
        send_all(sock, frames.encode_answer(status, headers, body))

    # -- operations: the REST API's checks, then the router ------------------------------------
    def _get(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        key = validation.validate_key(data.get("key"))
        hit = router.get(key)
        if hit is None:
            raise errors.NotFound(f"no key {key!r}")
        return 200, hit_headers(hit), hit.value

    def _has(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        status, headers, _ = self._get(router, data, tail)
        return status, headers, b""

    def _set(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        key = validation.validate_key(data.get("key"))
        binary = data.get("binary", False)
        if not isinstance(binary, bool):
            raise errors.InvalidValue('"binary" must be true or false')
        if binary:
            if "value" in data:
                raise errors.InvalidValue('a binary value travels as the raw tail, not "value"')
            value = validation.check_value_size(tail)
        else:
            if tail:
                raise errors.InvalidRequest("bytes after the JSON part of a JSON value")
            value, binary = validation.value_from_body(data)
        ttl = validation.ttl_from_body(data)
        add, if_version = data.get("add", False), data.get("if_version")
        if not isinstance(add, bool) or (add and if_version is not None):
            raise errors.InvalidRequest('"add" is true or false, and not with "if_version"')
        if add:
            written = router.add(key, value, binary, ttl)
        elif if_version is not None:
            try:
                expected = values_version(if_version)
            except ValueError as exc:
                raise errors.PreconditionFailed(f"{if_version!r} is not a write version") from exc
            written = router.cas(key, value, binary, ttl, expected)
        else:
            written = router.set(key, value, binary, ttl)
        return _json({"version": format_version(written.version), "copies": written.copies})

    def _delete(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        return _json({"copies": router.delete(validation.validate_key(data.get("key")))})

    def _touch(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        key = validation.validate_key(data.get("key"))
        if "ttl" not in data:
            raise errors.InvalidTTL('a touch needs a "ttl" member (seconds, or null)')
        ttl = validation.ttl_from_body(data)
        return _json({"ttl": ttl, "copies": router.touch(key, ttl)})

    def _incr(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        key = validation.validate_key(data.get("key"))
        value, written = router.incr(key, validation.validate_delta(data))
        return _json({"value": value, "copies": written.copies})

    def _get_many(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        result = router.get_many(validation.key_list(data))
        return _json({"values": result.values, "missing": result.missing, "failed": result.failed})

    def _set_many(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        result = router.set_many(validation.item_list(data))
        return _json({"stored": result.count, "failed": result.failed})

    def _ratelimit(
        self, router: Any, data: Mapping[str, Any], tail: bytes, principal: Any = None
    ) -> Answer:
        key, _, rate, cost, burst = ratelimit_call(data)
        algorithm, reset = data.get("algorithm", "fixed_window"), data.get("reset", False)
        if principal is None:
            raise errors.Forbidden("a counter belongs to an API key")
        key = counter_namespace(principal[0], principal[1], key, reset)
        decision = router.ratelimit(key, algorithm, rate, cost, burst, reset)
        return _json(algorithms.to_wire(decision))

    def _delete_many(self, router: Any, data: Mapping[str, Any], tail: bytes) -> Answer:
        result = router.delete_many(validation.key_list(data))
        return _json({"deleted": result.count, "failed": result.failed})


def _limited(result: Any) -> Answer:
    """A frame's 429: the error envelope, with Retry-After and the RateLimit headers."""
    status, headers, body = _error(errors.RateLimited(f"rate limit {result.limit.rate} exceeded"))
    return status, [*headers, *((k.lower(), v) for k, v in result.headers.items())], body


def values_version(text: Any) -> Version:
    """A version given as ``if_version`` (quoted like an ETag or not)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    return parse_version(text.strip('"'))


def _skip(reader: Any, sock: Any, length: int, idle: float) -> bool:
    """Read past a frame too large to serve (without keeping it); False if the client went
    away or took too long."""
    try:
        return read_frame_body(reader, sock, length, idle, keep=False) is not None
    except OSError:
        return False
