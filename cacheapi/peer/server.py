"""The owner's side of the peer protocol: ``/internal/v1/``, served without Django.

Every call from one node to another lands here: a coordinator forwarding a key or fanning a
batch out, and the cluster-wide calls (stats, flush, sync). These calls are leaves
(docs/architecture.md, the request path): they work on this node's own store and never call
another node. They come only from peers, so none of what Django and DRF add for clients applies
to them (sessions, CSRF, API keys, content negotiation), and that stack cost about 0.4 ms of CPU
per call on top of gunicorn's own 0.11 ms. This app is a plain WSGI callable in front of Django
(``cache_project.serving.NodeApp``): it checks the cluster secret in constant time, reads a JSON
body, runs one operation and answers with the same error envelope as the public API. The frame
layout lives in ``cacheapi.peer.frames``, the value wire format in ``cacheapi.peer.wire``.

Every input is checked with the public API's validators, and JSON text must be one strict JSON
document: a peer with the secret still gets a 4xx, never a 500, and nothing changes, for a
malformed call. Escaping JSON text inside a string can double its size (every quote gains a
backslash), so an internal body may be up to ``2 x MAX_REQUEST_BYTES`` (plus 1 MiB).

Operations (body -> answer):

- ``get`` ``{"key"}`` -> the stored bytes as the body, with ``X-Value-Type`` (json or binary),
  ``X-TTL`` (seconds left, or none) and ``X-Version``; 404 when absent, 503 ``joining`` when
  absent from a node still pulling its keys (the coordinator asks the next owner)
- ``set`` ``{"key", "value", "binary", "ttl", "if_absent"?, "if_version"?, "version"?}`` ->
  ``{"version", "applied"}``; 412 when the condition fails. With ``version`` (a replicated
  write, stamped by the coordinator) the write applies only if newer than what the node holds;
  ``applied`` says whether it did (a newer value there is still a copy)
- ``delete`` ``{"key", "version"?}`` -> ``{"deleted": bool}`` (a version leaves a tombstone)
- ``touch`` ``{"key", "ttl"}`` -> ``{"touched": bool}``: a new TTL; the value's version stays
- ``incr`` ``{"key", "delta"}`` -> ``{"value", "version", "ttl"}``; 404 when absent, 409 not an
  integer
- ``get_many`` ``{"keys"}`` -> ``{"values": {key: json text}, "binary": {key: base64}}``;
  503 ``joining`` if some are absent from a joining node
- ``set_many`` ``{"items": [[key, value, binary, ttl], ...], "version"?}`` -> ``{"stored": n}``
- ``delete_many`` ``{"keys", "version"?}`` -> ``{"deleted": n, "removed": [key, ...]}``
- ``sync`` ``{"items": [[key, value, binary, ttl, version], ...]}`` -> ``{"stored", "skipped"}``:
  versioned writes (migration, replication); an older version never replaces a newer one
- ``scan`` ``{"owner", "ring_version", "cursor", "limit"}`` -> ``{"items": [[key, value,
  binary, ttl, version], ...], "cursor": next or null, "layout": n}``: the live entries in
  ``limit`` store slots from ``cursor`` whose owners (in this node's ring) include ``owner``;
  a joining node pulls its keys with it. 503 ``ring_behind`` while this node's ring is older
  than ``ring_version``
- ``ratelimit`` ``{"key", "algorithm", "limit", "period", "cost", "burst"}`` -> ``{"allowed",
  "limit", "remaining", "reset_after", "retry_after"}``: one atomic check in this node's counter
  store (``cacheapi.store.counters``)
- ``stats`` ``{}`` -> this node's stats (as ``GET /api/v1/stats``)
- ``clear`` ``{}`` -> ``{"flushed": n}``: empties this node's store

A missing key is a 404 with code ``not_found``; an unknown operation or path is a 404 with code
``unknown_operation``. Every answer carries ``X-Cache-Internal: 1``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from cacheapi import errors, validation
from cacheapi.peer import frames
from cacheapi.peer.frames import PREFIX, STREAM_OP, STREAM_PROTOCOL
from cacheapi.peer.transport import send_all
from cacheapi.peer.wire import (
    INTERNAL_HEADER,
    RING_HEADER,
    SECRET_ENVIRON,
    VERSION_HEADER,
    check_json_value,
    decode_value,
    decode_version,
    encode_value,
    hit_headers,
    secrets_match,
)
from cacheapi.store import SetItem, Store, StoreError, Version, format_version
from cacheapi.store.versions import check_version
from ratelimit import algorithms
from ratelimit.rates import MAX_LIMIT, MAX_PERIOD, Rate, parse_rate

log = logging.getLogger(__name__)

SCAN_LIMIT = 10_000  # most store slots one scan call walks
STREAM_IDLE_SECONDS = 60.0  # an idle stream is closed; the coordinator opens another
STREAM_FRAME_SECONDS = 30.0  # most time one frame may take to arrive, once it has begun
_JSON = [("Content-Type", "application/json")]
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    411: "411 Length Required",
    412: "412 Precondition Failed",
    413: "413 Content Too Large",
    500: "500 Internal Server Error",
    501: "501 Not Implemented",
    503: "503 Service Unavailable",
}

Answer = tuple[int, bytes, list[tuple[str, str]]]


def _ttl(body: Mapping[str, Any]) -> float | None:
    """The TTL the coordinator resolved: seconds, or null for no expiry (no default here)."""
    return validation.validate_ttl(body.get("ttl"))


def _key(body: Mapping[str, Any]) -> str:
    return validation.validate_key(body.get("key"))


def _keys(body: Mapping[str, Any]) -> list[str]:
    return validation.key_list(body)


def _items(body: Mapping[str, Any], width: int) -> list[Any]:
    items = body.get("items")
    if not isinstance(items, list):
        raise errors.InvalidRequest('body must have an "items" list')
    validation.check_batch_size(len(items))
    for index, item in enumerate(items):
        if not isinstance(item, list) or len(item) != width:
            raise errors.InvalidRequest(f"items[{index}] must be a list of {width}")
    return items


def ratelimit_call(body: Mapping[str, Any]) -> tuple[str, Any, Rate, int, int | None]:
    """A rate-limit check's arguments, checked: (counter key, the algorithm's check, rate,
    cost, burst). ``limit`` and ``period`` (seconds), or ``rate`` as text ("100/m"). With
    ``"reset": true`` the check is one that forgets the counter (``reset_check``)."""
    key = validation.validate_key(body.get("key"))
    reset = body.get("reset", False)
    if not isinstance(reset, bool):
        raise errors.InvalidRequest('"reset" must be true or false')
    try:
        check = algorithms.get(body.get("algorithm", "fixed_window"))
    except (ValueError, TypeError) as exc:
        raise errors.InvalidRequest(str(exc)) from exc
    try:
        if "rate" in body:
            rate = parse_rate(body["rate"])
        else:
            limit, period = body.get("limit"), body.get("period")
            if type(limit) is not int or not isinstance(period, int | float):
                raise ValueError('give "rate" ("100/m"), or "limit" and "period" (seconds)')
            if isinstance(period, bool):
                raise ValueError('"period" is a number of seconds')
            rate = Rate(limit, float(period))
            if not 1 <= rate.limit <= MAX_LIMIT or not 1 <= rate.period <= MAX_PERIOD:
                raise ValueError("limit 1 to 10**9, period 1 s to 366 days")
    except ValueError as exc:
        raise errors.InvalidRequest(f"rate: {exc}") from exc
    cost, burst = body.get("cost", 1), body.get("burst")
    if type(cost) is not int or not 0 <= cost <= MAX_LIMIT:
        raise errors.InvalidRequest('"cost" must be a whole number, 0 or more')
    if burst is not None and (type(burst) is not int or not 1 <= burst <= MAX_LIMIT):
        raise errors.InvalidRequest('"burst" must be a whole number, 1 or more')
    return key, (algorithms.reset_check if reset else check), rate, cost, burst


def _version(body: Mapping[str, Any]) -> Version | None:
    """The coordinator's write version of a replicated write, if the call has one."""
    text = body.get("version")
    return None if text is None else decode_version(text)


def read_frame_body(
    reader: Any, sock: Any, length: int, idle: float = STREAM_IDLE_SECONDS, *, keep: bool = True
) -> bytearray | None:
    """``length`` bytes of a frame, read as they arrive (a claimed length costs no memory
    before its bytes come) within ``STREAM_FRAME_SECONDS``, then the socket back on its
    ``idle`` timeout; None if the other side went away. With ``keep=False`` the bytes are
    read past and dropped (a frame too large to serve) and the answer is empty."""
    deadline = time.monotonic() + STREAM_FRAME_SECONDS
    frame = bytearray()
    left = length
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("a frame took too long to arrive")
        sock.settimeout(remaining)
        chunk = reader.read1(min(left, 1 << 20))
        if not chunk:
            return None
        left -= len(chunk)
        if keep:
            frame += chunk
    sock.settimeout(idle)
    return frame


def _end_stream(sock: Any) -> None:
    """Shut the stream down and drain what the peer already sent, so that the server, which
    reads the connection again once the app is done, finds its end and not frame bytes."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(0)
        for _ in range(64):  # bounded: what was queued before the shutdown
            if not sock.recv(1 << 16):
                break


def _parse(raw: bytes) -> Mapping[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJSON(f"body is not valid JSON: {exc}") from exc
    return validation.json_object(body)


def _json(data: Any, status: int = 200) -> Answer:
    return status, orjson.dumps(data), _JSON


class InternalApp:
    """The WSGI app for ``/internal/v1/``. ``store`` and ``secret`` are read per call, so
    tests and settings changes see the current ones; ``observe(op, seconds, error)`` records
    each call's latency (``internal_<op>`` in the node's metrics). With ``already_handled``
    (the server's marker for "the app kept the connection"), ``/internal/v1/stream`` upgrades
    a connection to a stream of framed calls; without it, it answers 501 and coordinators use
    one HTTP request per call."""

    def __init__(
        self,
        store: Callable[[], Store],
        secret: Callable[[], str],
        *,
        max_body: Callable[[], int],
        ring_version: Callable[[], int] = lambda: 0,
        ring: Callable[[], Any] | None = None,
        name: Callable[[], str] = lambda: "",
        clear: Callable[[], int] | None = None,
        counters: Callable[[], Any] | None = None,
        stats: Callable[[], dict[str, Any]] = dict,
        observe: Callable[[str, float, bool], None] = lambda op, seconds, error: None,
        already_handled: object | None = None,
        pause: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._store = store
        self._secret = secret
        self._max_body = max_body
        self._ring_version = ring_version
        self._ring = ring
        self._name = name
        self._clear_all = clear  # empties the store and what else the node keeps for it
        self._counters = counters  # the rate-limit counter store (cacheapi.store.counters)
        self._stats = stats
        self._observe = observe
        # Streams need a server that lets the app keep the connection: gunicorn's async
        # (gevent) workers do, when the app returns their ALREADY_HANDLED marker.
        self._already_handled = already_handled
        self._pause = pause  # after each framed answer: gevent.sleep, to let others run
        self._ops: dict[str, Callable[[Store, Mapping[str, Any]], Answer]] = {
            "get": self._get,
            "set": self._set,
            "delete": self._delete,
            "touch": self._touch,
            "incr": self._incr,
            "get_many": self._get_many,
            "set_many": self._set_many,
            "delete_many": self._delete_many,
            "sync": self._sync,
            "stats": self._node_stats,
            "clear": self._clear,
            "scan": self._scan,
            "ratelimit": self._ratelimit,
        }
        # Operations whose body is binary (``frames``), not a JSON object.
        self._raw_ops: dict[str, Callable[[Store, bytes], Answer]] = {"put": self._put}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        op = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if op == STREAM_OP:
            try:
                sock = self._stream_socket(environ)
            except errors.CacheError as exc:
                status, body, headers = self._finish(self._error(exc))
            else:
                self._observe("internal_stream", 0.0, False)  # streams opened, by count
                self._run_stream(sock)
                return self._already_handled  # type: ignore[return-value]
        else:
            status, body, headers = self._answer(op, lambda: self._serve(op, environ))
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS.get(status, f"{status} Error"), headers)
        return [body]

    def _answer(self, op: str, serve: Callable[[], Answer]) -> Answer:
        """Run one call: its answer, or the error envelope; counted in the metrics."""
        started = time.perf_counter()
        try:
            status, body, headers = serve()
        except errors.CacheError as exc:
            status, body, headers = self._error(exc)
        except StoreError as exc:
            status, body, headers = self._error(errors.from_store_error(exc))
        except Exception:  # a bug: still an answer a coordinator can tell from a miss
            log.exception("internal call %s failed", op)
            status, body, headers = self._error(errors.ServerError("the internal call failed"))
        if op in self._ops or op in self._raw_ops:
            error = status >= 400 and status not in (404, 412)
            self._observe(f"internal_{op}", time.perf_counter() - started, error)
        return self._finish((status, body, headers))

    def _finish(self, answer: Answer) -> Answer:
        status, body, headers = answer
        extra = [(RING_HEADER, str(self._ring_version())), (INTERNAL_HEADER, "1")]
        return status, body, [*headers, *extra]

    @staticmethod
    def _error(exc: errors.CacheError) -> Answer:
        return _json(errors.error_body(exc.code, exc.message), exc.status)

    def _check_secret(self, environ: dict[str, Any]) -> None:
        presented = environ.get(SECRET_ENVIRON)
        if presented is None:
            raise errors.Forbidden("internal calls need the cluster secret (X-Cluster-Secret)")
        if not secrets_match(presented, self._secret()):
            raise errors.Forbidden("wrong cluster secret")

    def _serve(self, op: str, environ: dict[str, Any]) -> Answer:
        self._check_secret(environ)
        if op not in self._ops and op not in self._raw_ops:
            raise errors.UnknownOperation(
                f"no internal operation at {environ.get('PATH_INFO', '')!r}"
            )
        if environ.get("REQUEST_METHOD") != "POST":
            raise errors.MethodNotAllowed("internal calls are POST")
        return self._dispatch(op, self._read_body(environ))

    def _dispatch(self, op: str, raw: bytes) -> Answer:
        binary = self._raw_ops.get(op)
        if binary is not None:  # a body that is not JSON
            return binary(self._store(), raw)
        handler = self._ops.get(op)
        if handler is None:
            raise errors.UnknownOperation(f"no internal operation {op!r}")
        return handler(self._store(), _parse(raw))

    # Streams: one upgraded connection carries many calls as length-prefixed frames.
    def _stream_socket(self, environ: dict[str, Any]) -> Any:
        self._check_secret(environ)
        if environ.get("HTTP_UPGRADE", "").lower() != STREAM_PROTOCOL:
            raise errors.UnknownOperation(f"{PREFIX}{STREAM_OP} needs Upgrade: {STREAM_PROTOCOL}")
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or environ.get("SERVER_PROTOCOL") != "HTTP/1.1"
            or (environ.get("CONTENT_LENGTH") or "0") != "0"
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            # Bytes after the upgrade request would sit in the server's buffer, out of reach.
            raise errors.InvalidRequest("an upgrade is an HTTP/1.1 POST with an empty body")
        sock = environ.get("gunicorn.socket")
        if self._already_handled is None or sock is None:
            raise errors.StreamsUnavailable("this node serves internal calls over HTTP only")
        return sock

    def _run_stream(self, sock: Any) -> None:
        """Serve frames until the peer closes the connection or leaves it idle.

        Request frame: u32 length, u8 operation length, the operation, the JSON body. Answer
        frame: u32 length, u16 status, u16 headers length, the headers (a JSON object), the
        body. Each call is answered as over HTTP, through the same operations. The peer sends
        nothing before the 101."""
        limit = self._max_body() + 256
        reader = None
        try:
            sock.settimeout(STREAM_IDLE_SECONDS)
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: "
                + STREAM_PROTOCOL.encode()
                + b"\r\nConnection: Upgrade\r\n\r\n"
            )
            reader = sock.makefile("rb")
            while True:
                head = reader.read(4)
                if len(head) < 4:
                    return  # the peer closed the stream (or left it idle)
                (length,) = frames.LENGTH.unpack(head)
                if not 1 <= length <= limit:
                    # Answer, so the coordinator sees a refusal and not a dead node; the rest
                    # of the frame is dropped with the stream.
                    too_large = errors.RequestTooLarge(f"frame of {length} bytes; limit {limit}")
                    self._send_answer(sock, self._finish(self._error(too_large)))
                    return
                frame = read_frame_body(reader, sock, length)
                if frame is None:
                    return
                op, raw = frames.decode_request(frame)
                answer = self._answer(op, functools.partial(self._dispatch, op, raw))
                self._send_answer(sock, answer)
                self._pause(0)
        except (OSError, ValueError):  # reset, idle or frame timeout
            return
        except Exception:  # a bug: close this stream, never hand it back half-read
            log.exception("internal stream failed")
        finally:
            if reader is not None:
                reader.close()
            _end_stream(sock)

    @staticmethod
    def _send_answer(sock: Any, answer: Answer) -> None:
        status, body, headers = answer
        send_all(sock, frames.encode_answer(status, headers, body))

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        limit = self._max_body()
        length_text = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length_text:
            if not (length_text.isascii() and length_text.isdigit()):
                raise errors.InvalidRequest("Content-Length must be a whole number")
            length = int(length_text)
            if length > limit:
                raise errors.RequestTooLarge(f"body is {length} bytes; the limit is {limit}")
            raw = stream.read(length) if length else b""
        elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise errors.RequestTooLarge(f"body is over the limit of {limit} bytes")
        else:
            raise errors.LengthRequired("internal calls need a Content-Length or a chunked body")
        return bytes(raw)

    # Operations: each validates its body, then runs one store call.
    def _joining(self) -> bool:
        """This node is joining: it may lack keys it owns (it is still pulling them)."""
        if self._ring is None:
            return False
        me = self._ring().node(self._name())
        return me is not None and me.status == "joining"

    def _get(self, store: Store, body: Mapping[str, Any]) -> Answer:
        key = _key(body)
        hit = store.read(key)
        if hit is None or (hit.ttl is not None and hit.ttl <= 0):
            if self._joining():
                raise errors.Joining(f"no key {key!r} here yet (joining)")
            raise errors.NotFound(f"no key {key!r}")
        return 200, hit.value, [("Content-Type", "application/octet-stream"), *hit_headers(hit)]

    def _set(self, store: Store, body: Mapping[str, Any]) -> Answer:
        key = _key(body)
        value, binary = decode_value(body.get("value"), body.get("binary"))
        ttl = _ttl(body)
        if_absent = body.get("if_absent", False)
        if_version = body.get("if_version")
        version = _version(body)
        conditions = bool(if_absent) + (if_version is not None) + (version is not None)
        if not isinstance(if_absent, bool) or conditions > 1:
            raise errors.InvalidRequest(
                'at most one of "if_absent" (true or false), "if_version" and "version"'
            )
        applied = True
        if if_absent:
            written = store.add(key, value, binary=binary, ttl=ttl)
        elif if_version is not None:
            expected = decode_version(if_version, '"if_version"')
            written = store.cas(key, value, expected, binary=binary, ttl=ttl)
        elif version is not None:
            written = store.set(key, value, binary=binary, ttl=ttl, version=version)
            applied, written = written is not None, version
        else:
            written = store.set(key, value, binary=binary, ttl=ttl)
        if written is None:
            raise errors.PreconditionFailed(f"the condition on key {key!r} does not hold")
        tag = format_version(written)
        answer = orjson.dumps({"version": tag, "applied": applied})
        return 200, answer, [*_JSON, (VERSION_HEADER, tag)]

    def _put(self, store: Store, raw: bytes) -> Answer:
        """A replicated write in its compact form (``frames.encode_put``): what ``set`` with a
        ``version`` does, with the value raw and no JSON either way. The coordinator knows the
        version it sent, so the answer is only the status."""
        try:
            key, value, binary, ttl, version = frames.decode_put(raw)
            check_version(version)
        except ValueError as exc:  # FrameError too
            raise errors.InvalidRequest(str(exc)) from exc
        key, ttl = validation.validate_key(key), validation.validate_ttl(ttl)
        validation.check_value_size(value)
        if not binary:
            check_json_value(value)
        store.set(key, value, binary=binary, ttl=ttl, version=version)  # None: a newer one won
        return 200, b"", []

    def _delete(self, store: Store, body: Mapping[str, Any]) -> Answer:
        return _json({"deleted": store.delete(_key(body), version=_version(body))})

    def _touch(self, store: Store, body: Mapping[str, Any]) -> Answer:
        key = _key(body)
        if "ttl" not in body:
            raise errors.InvalidTTL('body must have a "ttl" member (seconds, or null)')
        return _json({"touched": store.touch(key, _ttl(body))})

    def _incr(self, store: Store, body: Mapping[str, Any]) -> Answer:
        key = _key(body)
        result = store.incr(key, validation.validate_delta(body))
        if result is None:
            raise errors.NotFound(f"no key {key!r}")
        value, version = result
        entry = store.peek(key)
        ttl = None if entry is None else store.remaining(entry)
        answer = {"value": value, "version": format_version(version), "ttl": ttl}
        return 200, orjson.dumps(answer), _JSON

    def _get_many(self, store: Store, body: Mapping[str, Any]) -> Answer:
        keys = _keys(body)
        found = store.values_many(keys)
        if len(found) < len(set(keys)) and self._joining():
            raise errors.Joining("some keys are not here yet (joining)")
        texts = {k: v.decode("utf-8") for k, (v, binary) in found.items() if not binary}
        blobs = {k: encode_value(v, True) for k, (v, binary) in found.items() if binary}
        return _json({"values": texts, "binary": blobs})

    def _set_many(self, store: Store, body: Mapping[str, Any]) -> Answer:
        version = _version(body)  # one for the whole batch (a replicated write), or None
        parsed: list[SetItem] = []
        for key, text, binary, ttl in _items(body, 4):
            value, binary = decode_value(text, binary)
            key, ttl = validation.validate_key(key), validation.validate_ttl(ttl)
            parsed.append((key, value, binary, ttl, version))
        stored = store.set_many(parsed)
        return _json({"stored": sum(1 for v in stored if v is not None)})

    def _delete_many(self, store: Store, body: Mapping[str, Any]) -> Answer:
        keys = _keys(body)
        version = _version(body)
        removed = [key for key in keys if store.delete(key, version=version)]
        return _json({"deleted": len(removed), "removed": removed})

    def _sync(self, store: Store, body: Mapping[str, Any]) -> Answer:
        parsed = []
        for key, text, binary, ttl, version in _items(body, 5):
            value, binary = decode_value(text, binary)
            parsed.append(
                (
                    validation.validate_key(key),
                    value,
                    binary,
                    validation.validate_ttl(ttl),
                    decode_version(version),
                )
            )
        applied = store.set_many(parsed)
        stored = sum(1 for v in applied if v is not None)
        return _json({"stored": stored, "skipped": len(applied) - stored})

    def _scan(self, store: Store, body: Mapping[str, Any]) -> Answer:
        owner, wanted = body.get("owner"), body.get("ring_version")
        cursor, limit = body.get("cursor"), body.get("limit")
        if not isinstance(owner, str) or not owner:
            raise errors.InvalidRequest('"owner" must be a node name')
        for name, number in (("ring_version", wanted), ("cursor", cursor), ("limit", limit)):
            if type(number) is not int or number < 0:
                raise errors.InvalidRequest(f'"{name}" must be a whole number')
        if not 1 <= limit <= SCAN_LIMIT:  # type: ignore[operator]
            raise errors.InvalidRequest(f'"limit" must be 1 to {SCAN_LIMIT}')
        if self._ring is None:
            raise errors.UnknownOperation("this node cannot scan by owner")
        ring = self._ring()
        if ring.version < wanted:  # type: ignore[operator]
            raise errors.RingBehind(f"ring version {ring.version} is older than {wanted}")
        entries, after, layout = store.entries_from(cursor, limit)  # type: ignore[arg-type]
        items = []
        for key, entry in entries:
            if any(node.name == owner for node in ring.owners(key)):
                ttl = store.remaining(entry)
                if ttl is None or ttl > 0:
                    value = encode_value(entry.value, entry.binary)
                    items.append([key, value, entry.binary, ttl, format_version(entry.version)])
        return _json({"items": items, "cursor": after, "layout": layout})

    def _ratelimit(self, store: Store, body: Mapping[str, Any]) -> Answer:
        if self._counters is None:
            raise errors.UnknownOperation("this node keeps no rate-limit counters")
        key, check, rate, cost, burst = ratelimit_call(body)
        return _json(algorithms.to_wire(self._counters().check(key, check, rate, cost, burst)))

    def _node_stats(self, store: Store, body: Mapping[str, Any]) -> Answer:
        return _json(self._stats())

    def _clear(self, store: Store, body: Mapping[str, Any]) -> Answer:
        flushed = store.clear() if self._clear_all is None else self._clear_all()
        return _json({"flushed": flushed})
