"""Python client: routes every key straight to its owner with the nodes' own ring code.

    from cacheapi.client import CacheClient
    c = CacheClient(["http://127.0.0.1:8001"], api_key="...")
    c.set("k", {"a": 1}, ttl=60); c.get("k"); c.get_many(["a", "b"]); c.incr("hits")

The client reads the ring from any seed node, hashes each key to its primary and calls that
node directly, so no single-key request is forwarded. A batch is cut into parts of at most
``max_batch_keys`` (the nodes' ``MAX_BATCH_KEYS``). On client streams each owner gets its own
keys as one frame, every frame sent before any answer is read (``_stream_parts``). Over HTTP
each part goes as one request to the node that owns most of its keys, which fetches the rest
from their owners over the peer protocol: an HTTP request costs a node about 0.4 ms of CPU, a
framed call about a tenth of that, so one request per part costs the cluster less than one
request per owner. When a node answers with a newer ``X-Ring-Version``, or does not answer,
the client re-reads the ring (and retries a failed call once, on the new owner or, for a batch
part, on the node that owns most of the part's other keys, or any other, when repeating it is
safe: a read or plain set, or any call whose connection never opened).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3

from cacheapi import values
from cacheapi.peer import frames
from cacheapi.peer.transport import Call, Response, StreamsRefused, Transport
from nodes.ring import Ring, RingNode, read_order

DEFAULT: Any = object()  # "no ttl given": the cluster's default TTL applies
STREAM_PATH = "/api/v1/stream"  # client streams (cacheapi.api.streams)
STREAM_PROTOCOL = "cache/1"
BATCH_OPS = {
    "/api/v1/batch/get": "get_many",
    "/api/v1/batch/set": "set_many",
    "/api/v1/batch/delete": "delete_many",
}
MAX_BATCH_KEYS = 1000  # the nodes' default MAX_BATCH_KEYS: a batch part at most


class CacheClientError(Exception):
    """Base of the client's errors; ``status`` and ``code`` come from the node's answer."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AuthenticationError(CacheClientError):
    """401: no key, or an unknown or revoked one."""


class PermissionDenied(CacheClientError):
    """403: the key lacks the scope."""


class InvalidRequest(CacheClientError):
    """400/413/415: a bad key, value, ttl or batch."""


class NotAnInteger(CacheClientError):
    """409: incr on a value that is not an integer (or would overflow)."""


class Unavailable(CacheClientError):
    """No node answered for this key (refused, timed out, or 503). From a batch, ``failed``
    lists the keys that failed (the others were served)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        failed: Sequence[str] = (),
        found: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.failed = list(failed)
        self.found = dict(found or {})  # from get_many: the keys that were served and found


_BY_STATUS: dict[int, type[CacheClientError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    409: NotAnInteger,
    413: InvalidRequest,
    415: InvalidRequest,
    503: Unavailable,
}


class CacheClient:
    def __init__(
        self,
        urls: str | Sequence[str],
        api_key: str,
        *,
        timeout: float = 5.0,
        pool_size: int = 16,
        ca_certs: str | None = None,
        max_batch_keys: int = MAX_BATCH_KEYS,
        streams: bool = True,
    ) -> None:
        """``max_batch_keys``: the nodes' ``MAX_BATCH_KEYS`` (the size of a batch part).
        ``streams``: send calls as frames on client streams where a node has them (the
        default), else one HTTP request each."""
        if max_batch_keys < 1:
            raise ValueError("max_batch_keys must be at least 1")
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.replace(";", ",").split(",") if u.strip()]
        if not urls:
            raise ValueError("give at least one node URL")
        self.seeds = [u.rstrip("/") for u in urls]
        self.max_batch_keys = max_batch_keys
        self._headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self._http = urllib3.PoolManager(
            num_pools=64,
            maxsize=pool_size,
            retries=False,
            ca_certs=ca_certs,
            timeout=urllib3.Timeout(total=timeout),
        )
        # Streams: one pool of upgraded connections per node, shared by threads.
        self._frames = (
            Transport(timeout=timeout, ca_certs=ca_certs, keep_http=False) if streams else None
        )
        self._upgrade = (STREAM_PATH, {"X-API-Key": api_key}, STREAM_PROTOCOL)
        self._ring: Ring | None = None
        self._ring_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- the ring ---------------------------------------------------------------------------
    @property
    def ring(self) -> Ring:
        return self._ring if self._ring is not None else self.refresh_ring()

    def refresh_ring(self) -> Ring:
        """Read the ring from the first node that answers (known members first, then seeds)."""
        with self._ring_lock:
            candidates = [n.url for n in self._ring.members] if self._ring else []
            candidates += [s for s in self.seeds if s not in candidates]
            last: Exception | None = None
            for url in candidates:
                try:
                    response = self._http.request(
                        "GET", url.rstrip("/") + "/api/v1/cluster/ring", headers=self._headers
                    )
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    last = exc
                    continue
                if response.status != 200:
                    raise _error(Reply(response.status, response.headers, response.data))
                self._ring = Ring.from_dict(values.loads(response.data))
                return self._ring
            raise Unavailable(f"no node answered for the ring: {last}")

    def _owner(self, key: str, avoid: Collection[str] = ()) -> RingNode:
        """The node to send a key's call to: its first owner that is up (a joining one may
        still lack it), skipping ``avoid`` (nodes that just failed) while another member is
        left: every node coordinates, and a replica owner serves a read from its own store."""
        ring = self.ring
        owners = read_order(ring.owners(key))
        if not owners:
            raise Unavailable("the ring has no live node")
        for node in [*owners, *ring.members]:
            if node.name not in avoid:
                return node
        return owners[0]  # nobody else: the one retry goes to the same node

    def _request(
        self,
        method: str,
        key: str | None,
        path: str | Callable[[], str],
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        node: RingNode | None = None,
        ok: tuple[int, ...] = (200,),
        missing: tuple[int, ...] = (),
        *,
        pick: Callable[[Collection[str]], RingNode | None] | None = None,
        repeatable: bool | None = None,
        frame: tuple[str, Mapping[str, Any], bytes] | None = None,
    ) -> Reply | None:
        """One call to the key's owner (or to ``node``, or to ``pick(nodes that failed)``);
        on a dead node, refresh the ring and retry once (never with ``node``) on the key's
        next owner: a dead node stays in the ring until the heartbeat marks it down.

        ``frame`` (operation, JSON part, raw tail) is the call as a client-stream frame: it
        goes that way where the node serves streams, else as the HTTP request (whose ``path``
        and ``body`` may be callables, then built only if it goes over HTTP). A stream's
        answer (``Reply.stream``) is a frame's: any 2xx is success.

        The retry is safe only when repeating the call cannot change its outcome: always when
        no connection was made (the request was never sent), otherwise only for reads and
        plain sets (``repeatable`` says so for a POST). An incr, add, compare-and-set or
        delete that reached the node before its answer was lost would otherwise be applied
        twice, or reported as failed."""
        if repeatable is None:
            repeatable = method in ("GET", "HEAD") or (method == "PUT" and not headers)
        dead: list[str] = []
        for attempt in (0, 1):
            if node is not None:
                target = node
            elif pick is not None:
                chosen = pick(dead)
                if chosen is None:  # nobody else to ask
                    raise Unavailable(f"{dead[-1]} did not answer and no other node can serve")
                target = chosen
            else:
                target = self._owner(key or "", dead)
            try:
                reply = self._send(target, method, path, body, headers, frame)
            except _Failed as exc:
                self.refresh_ring()
                if attempt or node is not None or not (repeatable or not exc.sent):
                    raise Unavailable(f"{target.name} did not answer: {exc}") from exc
                dead.append(target.name)
                continue
            self._note_version(reply)
            if reply.status in missing:
                return None
            if reply.status in ok or (reply.stream and 200 <= reply.status < 300):
                return reply
            raise _error(reply)
        raise AssertionError("unreachable")

    def _send(
        self,
        target: RingNode,
        method: str,
        path: str | Callable[[], str],
        body: Any,
        headers: Mapping[str, str] | None,
        frame: tuple[str, Mapping[str, Any], bytes] | None,
    ) -> Reply:
        url = target.url.rstrip("/")
        if frame is not None and self._frames is not None:
            try:
                call = self._start_frame(target, frame)
            except StreamsRefused:
                pass  # a node without streams (gthread), or it refused: HTTP
            except OSError as exc:
                raise _Failed(str(exc), sent=False) from exc
            else:
                try:
                    return Reply.of_frame(call.response())
                except OSError as exc:
                    raise _Failed(str(exc), sent=True) from exc
        if callable(path):  # built only for HTTP: a frame has no use for them
            path = path()
        if callable(body):
            body = body()
        try:
            response = self._http.request(
                method,
                url + path,
                body=values.dumps(body) if body is not None else None,
                headers={**self._headers, **(headers or {})},
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Failed(str(exc), sent=not _not_sent(exc)) from exc
        return Reply(response.status, response.headers, response.data, stream=False)

    def _start_frame(self, target: RingNode, frame: tuple[str, Mapping[str, Any], bytes]) -> Call:
        """Send ``frame`` (operation, JSON part, raw tail) on a stream to ``target``; its answer
        is read with ``Call.response()``. StreamsRefused where the node has no streams,
        OSError when it cannot be sent."""
        assert self._frames is not None
        op, data, raw = frame
        payload = frames.encode_body(values.dumps(data), raw)
        return self._frames.send_frame(
            target.url.rstrip("/"), self._upgrade, op, payload, open_now=True
        )

    def _note_version(self, response: Reply) -> None:
        seen = response.headers.get("X-Ring-Version")
        if seen is not None and self._ring is not None and int(seen) > self._ring.version:
            self.refresh_ring()

    # -- single keys ------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        found = self._get(key)
        return default if found is None else found[0]

    def exists(self, key: str) -> bool:
        """Whether the key has a live value (``HEAD``, or ``has`` on a stream: no value sent)."""
        reply = self._request(
            "HEAD", key, values.key_path(key), missing=(404,), frame=("has", {"key": key}, b"")
        )
        return reply is not None

    def get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        found = self._get(key)
        return None if found is None else (found[0], found[1])

    def gets(self, key: str) -> tuple[Any, str] | None:
        """The value and its version, for ``cas``."""
        found = self._get(key)
        return None if found is None else (found[0], found[2])

    def _get(self, key: str) -> tuple[Any, float | None, str] | None:
        """(value, TTL left, version), or None on a miss."""
        reply = self._request(
            "GET",
            key,
            lambda: values.key_path(key),
            missing=(404,),
            frame=("get", {"key": key}, b""),
        )
        if reply is None:
            return None
        if reply.stream:  # the stored bytes, described by headers
            ttl = reply.headers.get("x-ttl", "none")
            seconds = None if ttl == "none" else float(ttl)
            version = reply.headers.get("x-version", "")
            if reply.headers.get("x-value-type") == "binary":
                return bytes(reply.data), seconds, version
            return values.client_decode(values.loads(reply.data)), seconds, version
        data = values.loads(reply.data)
        etag = reply.headers.get("ETag", "").strip('"')
        return values.client_decode(data["value"]), data["ttl"], etag

    def _put(
        self, key: str, value: Any, ttl: Any, headers: Mapping[str, str] | None, **flags: Any
    ) -> Reply | None:
        data: dict[str, Any] = {"key": key, **flags}
        raw = b""
        if isinstance(value, bytes | bytearray | memoryview):
            data["binary"], raw = True, bytes(value)
        else:
            data["value"] = values.client_encode(value)
        if ttl is not DEFAULT:
            data["ttl"] = ttl
        return self._request(
            "PUT",
            key,
            lambda: values.key_path(key),
            lambda: _body(value, ttl),
            headers=headers,
            missing=(412,),
            frame=("set", data, raw),
        )

    def set(self, key: str, value: Any, ttl: float | None = DEFAULT) -> str:
        """Store ``value``; ``ttl`` seconds, ``None`` = never expires. Returns the version."""
        reply = self._put(key, value, ttl, None)
        assert reply is not None  # a plain set has no condition to fail
        return values.loads(reply.data)["version"]

    def add(self, key: str, value: Any, ttl: float | None = DEFAULT) -> bool:
        """Store only if absent; False if the key exists."""
        return self._put(key, value, ttl, {"If-None-Match": "*"}, add=True) is not None

    def cas(self, key: str, value: Any, version: str, ttl: float | None = DEFAULT) -> bool:
        """Replace only if the key still has ``version`` (from ``set`` or ``gets``)."""
        reply = self._put(key, value, ttl, {"If-Match": f'"{version}"'}, if_version=version)
        return reply is not None

    def delete(self, key: str) -> bool:
        reply = self._request(
            "DELETE",
            key,
            values.key_path(key),
            ok=(204,),
            missing=(404,),
            frame=("delete", {"key": key}, b""),
        )
        return reply is not None

    def touch(self, key: str, ttl: float | None) -> bool:
        reply = self._request(
            "PATCH",
            key,
            values.key_path(key),
            {"ttl": ttl},
            missing=(404,),
            frame=("touch", {"key": key, "ttl": ttl}, b""),
        )
        return reply is not None

    def incr(self, key: str, delta: int = 1) -> int | None:
        """The new value, or None if the key is missing."""
        reply = self._request(
            "POST",
            key,
            values.key_path(key) + "/incr",
            {"delta": delta},
            missing=(404,),
            frame=("incr", {"key": key, "delta": delta}, b""),
        )
        return None if reply is None else values.loads(reply.data)["value"]

    def decr(self, key: str, delta: int = 1) -> int | None:
        return self.incr(key, -delta)

    def ratelimit(
        self,
        key: str,
        rate: str,
        algorithm: str = "fixed_window",
        cost: int = 1,
        burst: int | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        """Count one request against a rate limit in the cluster's counter store: one atomic
        check on the counter's owner (``reset``: forget the counter instead). Returns
        ``{"allowed", "limit", "remaining", "reset_after", "retry_after"}``."""
        body: dict[str, Any] = {"key": key, "rate": rate, "algorithm": algorithm, "cost": cost}
        if reset:
            body["reset"] = True
        if burst is not None:
            body["burst"] = burst
        reply = self._request(
            "POST",
            key,
            "/api/v1/ratelimit/hit",
            body,
            repeatable=False,
            frame=("ratelimit", body, b""),
        )
        assert reply is not None
        return values.loads(reply.data)

    # -- batches: parts of at most max_batch_keys, per owner on streams, else to the majority --
    def _parts(self, keys: list[str]) -> list[list[str]]:
        if len(keys) <= self.max_batch_keys:  # one part: the ring is read later, per part
            return [keys] if keys else []
        return _batch_parts(self.ring, keys, self.max_batch_keys)

    def _coordinator(self, keys: Sequence[str], dead: Collection[str] = ()) -> RingNode | None:
        """The part's coordinator (see ``_majority_owner``); when its owners are all ``dead``,
        another member (it reads from the keys' other owners); None when only dead ones are
        left."""
        ring = self.ring
        node = _majority_owner(ring, keys, dead)
        if node is None and not dead:
            raise Unavailable("the ring has no live node")
        if node is None:  # the part's owners failed: any other node coordinates (and fails over)
            node = next((m for m in read_order(list(ring.members)) if m.name not in dead), None)
        return node

    def _send_parts(
        self,
        keys: list[str],
        path: str,
        body: Callable[[list[str]], Any],
        *,
        repeatable: bool,
        served: Callable[[Any], None] = lambda answer: None,
    ) -> list[Any]:
        """One request per part (parts in parallel); the answers of the parts that were
        served. Raises Unavailable, with every failed key, when any key failed: the keys a
        node reported in ``failed`` and every key of a part that no node answered."""

        def send(part: list[str], avoid: Sequence[str] = ()) -> tuple[Any, list[str], str]:
            try:
                data = body(part)
                response = self._request(
                    "POST",
                    None,
                    path,
                    data,
                    pick=lambda dead: self._coordinator(part, [*avoid, *dead]),
                    repeatable=repeatable,
                    frame=(BATCH_OPS[path], data, b""),
                )
                assert response is not None
            except Unavailable as exc:
                return None, part, str(exc)
            answer = values.loads(response.data)
            return answer, answer["failed"], ""

        if self._frames is not None and keys:
            results = self._stream_parts(keys, BATCH_OPS[path], body, send, repeatable=repeatable)
        else:
            parts = self._parts(keys)
            if len(parts) <= 1:
                results = [send(part) for part in parts]
            else:
                results = list(self._executor().map(send, parts))
        for answer, _, _ in results:
            if answer is not None:
                served(answer)
        failed = [k for _, part_failed, _ in results for k in part_failed]
        if failed:
            reasons = "; ".join(dict.fromkeys(r for _, _, r in results if r))
            raise Unavailable(
                f"{len(failed)} keys failed" + (f": {reasons}" if reasons else ""),
                code="failed",
                failed=failed,
            )
        return [answer for answer, _, _ in results]

    def _stream_parts(
        self,
        keys: list[str],
        op: str,
        body: Callable[[list[str]], Any],
        send: Callable[..., tuple[Any, list[str], str]],
        *,
        repeatable: bool,
    ) -> list[tuple[Any, list[str], str]]:
        """Streams: each owner's keys go to it as one frame (cut at ``max_batch_keys``), every
        frame sent before any answer is read. The parts run on their nodes at once, with no
        thread per part and no node forwarding: a frame costs a node a fraction of an HTTP
        request, so one per owner costs the cluster no more than one to a coordinator that
        calls the other owners itself, and saves that second hop's wait. A part whose frame
        cannot be sent (a node without streams), whose node does not answer or answers 503
        goes the general way, ``send``: over HTTP, or to another node that fetches from the
        owners (a part that may have been applied is not repeated unless ``repeatable``)."""
        assert self._frames is not None
        try:
            ring = self.ring
        except Unavailable as exc:  # no node answered for the ring: every key failed
            return [(None, keys, str(exc))]
        parts = _owner_parts(ring, keys, self.max_batch_keys)
        if not parts:  # an empty ring: the general way says so, for every key
            return [send(keys)]
        sent: list[tuple[RingNode, list[str], Call | None]] = []
        # (part, its node, the answer; None: not sent, or no answer, with the error if sent)
        answers: list[tuple[list[str], RingNode, Reply | None, str]] = []
        try:
            for node, part in parts:
                try:
                    call: Call | None = self._start_frame(node, (op, body(part), b""))
                except (StreamsRefused, OSError):
                    call = None  # never sent: the general way
                sent.append((node, part, call))
            for i, (node, part, call) in enumerate(sent):
                if call is None:
                    answers.append((part, node, None, ""))
                    continue
                sent[i] = (node, part, None)
                try:
                    got = call.response()
                except OSError as exc:
                    answers.append((part, node, None, str(exc) or type(exc).__name__))
                    continue
                answers.append((part, node, Reply.of_frame(got), ""))
        finally:
            for _, _, call in sent:
                if call is not None:
                    call.close()
        results: list[tuple[Any, list[str], str]] = []
        for part, node, reply, error in answers:
            if reply is None and not error:  # never sent
                results.append(send(part))
            elif reply is None and not repeatable:  # it may have been applied: not again
                self.refresh_ring()
                results.append((None, part, f"{node.name} did not answer: {error}"))
            elif reply is None or (reply.status == 503 and repeatable):
                self.refresh_ring()
                results.append(send(part, (node.name,)))
            elif 200 <= reply.status < 300:
                self._note_version(reply)
                data = values.loads(reply.data)
                results.append((data, data["failed"], ""))
            elif reply.status == 503:
                results.append((None, part, str(_error(reply))))
            else:
                raise _error(reply)
        return results

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cache-client")
            return self._pool

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Found keys only (as Django's cache does); if any key failed, Unavailable, with the
        failed keys in ``failed`` and what the other keys found in ``found``."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}

        def decoded() -> dict[str, Any]:
            return {k: values.client_decode(found[k]) for k in keys if k in found}

        try:
            self._send_parts(
                keys,
                "/api/v1/batch/get",
                lambda part: {"keys": part},
                repeatable=True,
                served=lambda answer: found.update(answer["values"]),
            )
        except Unavailable as exc:
            exc.found = decoded()
            raise
        return decoded()

    def set_many(self, mapping: Mapping[str, Any], ttl: float | None = DEFAULT) -> int:
        items = dict(mapping)

        def body(part: list[str]) -> Any:
            return {"items": [{"key": k, **_body(items[k], ttl)} for k in part]}

        answers = self._send_parts(list(items), "/api/v1/batch/set", body, repeatable=True)
        return sum(answer["stored"] for answer in answers)

    def delete_many(self, keys: Iterable[str]) -> int:
        answers = self._send_parts(
            list(dict.fromkeys(keys)),
            "/api/v1/batch/delete",
            lambda part: {"keys": part},
            repeatable=False,  # a repeat would count the first attempt's deletes as misses
        )
        return sum(answer["deleted"] for answer in answers)

    # -- the cluster --------------------------------------------------------------------------
    def stats(self, scope: str = "cluster") -> dict[str, Any]:
        node = self.ring.members[0] if self.ring.members else self._owner("")
        response = self._request("GET", None, f"/api/v1/stats?scope={scope}", node=node)
        assert response is not None
        return values.loads(response.data)

    def flush(self) -> int:
        node = self.ring.members[0] if self.ring.members else self._owner("")
        response = self._request("POST", None, "/api/v1/flush", node=node)
        assert response is not None
        return values.loads(response.data)["flushed"]

    def close(self) -> None:
        self._http.clear()
        if self._frames is not None:
            self._frames.close()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


def batch_plan(
    ring: Ring, keys: Sequence[str], max_batch_keys: int = MAX_BATCH_KEYS
) -> list[tuple[RingNode, list[str]]]:
    """Where ``CacheClient`` sends a batch of ``keys`` over HTTP (``streams=False``, or nodes
    without streams) when every node answers: its parts, each with the node it goes to. For
    tools that must send exactly what the client sends without a client of their own
    (``bench/cluster.py``)."""
    keys = list(dict.fromkeys(keys))
    plan = []
    for part in _batch_parts(ring, keys, max_batch_keys):
        node = _majority_owner(ring, part)
        if node is None:
            raise Unavailable("the ring has no live node")
        plan.append((node, part))
    return plan


def _owner_parts(ring: Ring, keys: list[str], limit: int) -> list[tuple[RingNode, list[str]]]:
    """Keys by the node a single-key call for each would go to (its first up owner), each
    node's keys cut at the limit. An empty ring: no parts (the caller reports the keys)."""
    groups: dict[str, list[str]] = {}
    for name, group in ring.group_by_owner(keys).items():
        primary = ring.node(name)
        if primary is not None and primary.status != "joining":
            groups.setdefault(name, []).extend(group)
            continue
        for key in group:  # a joining primary is read last (read_order), as single keys go
            groups.setdefault(read_order(ring.owners(key))[0].name, []).append(key)
    return [
        (node, group[i : i + limit])
        for name, group in groups.items()
        if (node := ring.node(name)) is not None
        for i in range(0, len(group), limit)
    ]


def _batch_parts(ring: Ring, keys: list[str], limit: int) -> list[list[str]]:
    """Keys ordered by owner, then cut at the limit: the fewest requests, and in each part the
    fewest other owners for its coordinator to call."""
    if len(keys) <= limit:
        return [keys] if keys else []
    ordered = [k for group in ring.group_by_owner(keys).values() for k in group]
    if not ordered:  # an empty ring: the coordinator of each part says so
        ordered = keys
    return [ordered[i : i + limit] for i in range(0, len(ordered), limit)]


def _majority_owner(ring: Ring, keys: Sequence[str], dead: Collection[str] = ()) -> RingNode | None:
    """The live owner of most of ``keys`` (ties: the first name), ``dead`` left out; None when
    no other is left. It serves its keys and calls the other owners itself."""
    counts = {
        name: len(group) for name, group in ring.group_by_owner(keys).items() if name not in dead
    }
    if not counts:
        return None
    return ring.node(min(counts, key=lambda name: (-counts[name], name)))


def _not_sent(exc: Exception) -> bool:
    """The call failed before a connection existed, so the node never saw the request."""
    return isinstance(
        exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    )


def _body(value: Any, ttl: Any) -> dict[str, Any]:
    body = {"value": values.client_encode(value)}
    if ttl is not DEFAULT:
        body["ttl"] = ttl
    return body


class _Failed(Exception):
    """A call got no answer; ``sent``: the node may have received it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True, slots=True)
class Reply:
    """A node's answer, over HTTP or a stream (``stream``: a frame's, whose body for a read is
    the stored bytes described by headers)."""

    status: int
    headers: Any  # case-insensitive ``get``
    data: bytes
    stream: bool = False

    @classmethod
    def of_frame(cls, answer: Response) -> Reply:
        return cls(answer.status, answer.headers, answer.data, stream=True)


def _error(response: Reply) -> CacheClientError:
    try:
        error = values.loads(response.data)["error"]
        code, message = error["code"], error["message"]
    except (values.DecodeError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status}"
    cls = _BY_STATUS.get(response.status, CacheClientError)
    return cls(message, status=response.status, code=code)
