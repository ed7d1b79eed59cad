"""A Django cache backend on the cluster: ``CACHES["default"]`` in two lines.

    CACHES = {
        "default": {
            "BACKEND": "cacheapi.backends.ClusterCache",
            "LOCATION": ["http://10.0.0.1:8001", "http://10.0.0.2:8001"],  # or "a;b" / "a,b"
            "OPTIONS": {"API_KEY": "..."},
        }
    }

Every call goes through ``cacheapi.client.CacheClient``, which reads the ring from the nodes
and sends each key straight to its owner (no forwarding hop) and each batch to the node owning
most of it, as frames on client streams (``cacheapi.api.streams``) where the node has them.
Django builds a backend per thread and calls ``close()`` after every request; the client (its
connections and ring) is shared by every backend with the same ``LOCATION`` and ``OPTIONS``
and outlives ``close()``.

The contract is Django's own (tested side by side with ``LocMemCache`` in
``tests/test_backend.py``):

- **Values**: any picklable value. A plain ``int`` within 64 bits (not ``bool``) is stored as a
  JSON integer, so ``incr`` runs atomically on the node; everything else is pickled and stored
  as a binary value, signed (keyed BLAKE2b, a MAC, with a key derived from ``SECRET_KEY``, or
  ``OPTIONS["SIGNING_KEY"]``): any API key with the ``write`` scope can write to the cluster,
  and a value this site did not sign is never unpickled (it reads as absent, and is logged).
  ``SIGN_VALUES: False`` turns that off. ``None`` is a value like any other.
- **Timeouts**: ``DEFAULT_TIMEOUT`` means the cache's ``TIMEOUT``; ``None`` never expires; 0 or
  less expires at once (``set`` deletes the key, ``add`` stores nothing, ``touch`` expires it);
  any other number is seconds (fractions included). The TTL is always sent: the cluster's own
  ``DEFAULT_TTL`` never applies.
- **Keys**: ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` make the key as usual, and
  ``validate_key`` warns as Django's backends do. A made key the cluster would refuse (longer
  than 250 bytes, or with whitespace or control characters) is sent as a digest of itself.
- ``clear()`` flushes the whole cluster: it needs an API key with the ``admin`` scope.
- **Async**: ``aget``, ``aset`` and the rest are Django's own (``BaseCache`` runs the sync
  call through ``sync_to_async``): the event loop goes on while a call is in flight (tested),
  and calls from many coroutines take turns on one thread, each a sub-millisecond frame on a
  stream, which is enough for a cache; a native asyncio client would not wait its turn.
- **Unreachable cluster**: by default the error is raised (``cacheapi.client.Unavailable``);
  with ``OPTIONS["IGNORE_EXCEPTIONS"] = True`` (as django-redis) reads return the default,
  writes return False (``set_many`` its keys) and the error is logged.

OPTIONS: ``API_KEY`` (required), ``SOCKET_TIMEOUT`` (seconds per call, 5), ``CA_BUNDLE`` (the
CA that node certificates are checked against, for ``https://`` nodes), ``POOL_SIZE``
(connections per node, 16), ``MAX_BATCH_KEYS`` (the nodes' limit, 1000),
``IGNORE_EXCEPTIONS`` (False), ``LOG_IGNORED_EXCEPTIONS`` (True), ``PICKLE_VERSION`` (the
highest protocol), ``STREAMS`` (True: calls go as frames on client streams, where a node has
them; False: one HTTP request each).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import hmac
import logging
import pickle
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from cacheapi.client import (
    MAX_BATCH_KEYS,
    CacheClient,
    CacheClientError,
    InvalidRequest,
    NotAnInteger,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INT64 = (-(2**63), 2**63 - 1)
MAX_KEY_BYTES = 250  # the nodes' default MAX_KEY_BYTES
MAX_TTL = 10 * 365 * 86400  # the nodes' default MAX_TTL
_BAD_KEY_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # as cacheapi.validation refuses
DIGEST_PREFIX = "sha256:"
_MISSING = object()
REFUSED = object()  # a binary value this site did not sign: treated as absent
SIGNED = b"CCs2"  # the head of a signed pickle, then MAC bytes of keyed BLAKE2b
_SIGNED_BEFORE = b"CCs1"  # HMAC-SHA256 signatures (earlier versions): read as absent, quietly
MAC = 16


def signing_key(options: Mapping[str, Any]) -> bytes | None:
    """The key pickles are signed with: OPTIONS["SIGNING_KEY"], else derived from Django's
    SECRET_KEY (the same in every process of the site); None with SIGN_VALUES False."""
    if not options.get("SIGN_VALUES", True):
        return None
    from django.conf import settings

    secret = options.get("SIGNING_KEY") or settings.SECRET_KEY
    return hashlib.sha256(b"cacheapi.backends.ClusterCache:" + str(secret).encode()).digest()


_clients: dict[tuple[Any, ...], CacheClient] = {}
_clients_lock = threading.Lock()


@atexit.register
def _close_clients() -> None:
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def shared_client(urls: tuple[str, ...], options: Mapping[str, Any]) -> CacheClient:
    """One client per (LOCATION, OPTIONS), shared by every backend instance and thread."""
    key = (urls, tuple(sorted((k, repr(v)) for k, v in options.items())))
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = CacheClient(
                    list(urls),
                    api_key=options["API_KEY"],
                    timeout=float(options.get("SOCKET_TIMEOUT", 5.0)),
                    pool_size=int(options.get("POOL_SIZE", 16)),
                    ca_certs=options.get("CA_BUNDLE") or None,
                    max_batch_keys=int(options.get("MAX_BATCH_KEYS", MAX_BATCH_KEYS)),
                    streams=bool(options.get("STREAMS", True)),
                )
    return client


def _mac(key: bytes, data: bytes | memoryview) -> bytes:
    """BLAKE2b in keyed mode (RFC 7693), a MAC in one call: a third of HMAC-SHA256's cost on
    the small values a cache holds, paid on every read of a pickled value."""
    return hashlib.blake2b(data, digest_size=MAC, key=key).digest()


def cluster_key(key: str) -> str:
    """A made key as the cluster takes it: itself when the cluster accepts it, else a digest
    (stable, so every process maps it the same way)."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8 the cluster can take
        size = 0
    if 0 < size <= MAX_KEY_BYTES and not _BAD_KEY_CHARS.search(key):
        return key
    return DIGEST_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class ClusterCache(BaseCache):
    def __init__(self, server: str | list[str] | tuple[str, ...], params: dict[str, Any]) -> None:
        super().__init__(params)
        if isinstance(server, str):
            urls = [u.strip() for u in server.replace(";", ",").split(",") if u.strip()]
        else:
            urls = [str(u).strip() for u in server]
        if not urls:
            raise ValueError("ClusterCache needs LOCATION: the URL of at least one node")
        options = dict(params.get("OPTIONS") or {})
        if not options.get("API_KEY"):
            raise ValueError('ClusterCache needs OPTIONS["API_KEY"]')
        self._urls = tuple(u.rstrip("/") for u in urls)
        self._options = options
        self._ignore = bool(options.get("IGNORE_EXCEPTIONS", False))
        self._log_ignored = bool(options.get("LOG_IGNORED_EXCEPTIONS", True))
        self._pickle_protocol = int(options.get("PICKLE_VERSION", pickle.HIGHEST_PROTOCOL))
        self._signing_key = signing_key(options)

    @functools.cached_property
    def client(self) -> CacheClient:
        return shared_client(self._urls, self._options)

    # -- values, keys, timeouts -------------------------------------------------------------
    def encode(self, value: Any) -> Any:
        if type(value) is int and INT64[0] <= value <= INT64[1]:
            return value  # a JSON integer: incr works on it on the node
        data = pickle.dumps(value, self._pickle_protocol)
        if self._signing_key is None:
            return data
        return SIGNED + _mac(self._signing_key, data) + data

    def decode(self, stored: Any) -> Any:
        """The value, or ``REFUSED`` for bytes this site did not sign (never unpickled)."""
        if not isinstance(stored, bytes):
            return stored  # an integer (or JSON another client stored)
        if self._signing_key is None:
            return pickle.loads(stored)
        head = len(SIGNED) + MAC
        data = memoryview(stored)[head:]  # no copies of the pickle
        mac = _mac(self._signing_key, data)
        if not stored.startswith(SIGNED) or not hmac.compare_digest(
            stored[len(SIGNED) : head], mac
        ):
            if not stored.startswith(_SIGNED_BEFORE):  # else written before an upgrade
                log.warning("a cached value without this site's signature was ignored")
            return REFUSED
        return pickle.loads(data)

    def _key(self, key: Any, version: int | None) -> str:
        return cluster_key(self.make_and_validate_key(key, version=version))

    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to keep a value, None for ever; <= 0 means "expired already". Past the
        nodes' MAX_TTL (ten years) is for ever, as good as: Django's own backends take any."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        seconds = float(timeout)
        return None if seconds > MAX_TTL else seconds

    def _guard(self, call: Callable[[], T], fallback: T) -> T:
        """Run ``call``; a cluster that cannot be reached raises, or with IGNORE_EXCEPTIONS
        gives ``fallback`` (logged)."""
        if not self._ignore:
            return call()
        try:
            return call()
        except Unavailable as exc:
            if self._log_ignored:
                log.warning("cache cluster unreachable, ignored: %s", exc)
            return fallback
        except CacheClientError as exc:
            if exc.status and exc.status < 500:
                raise  # the call itself was wrong: not an outage
            if self._log_ignored:
                log.warning("cache cluster error, ignored: %s", exc)
            return fallback

    # -- single keys ----------------------------------------------------------------------
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        made = self._key(key, version)
        found = self._guard(lambda: self.client.get(made, _MISSING), _MISSING)
        value = REFUSED if found is _MISSING else self.decode(found)
        return default if value is REFUSED else value

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made = self._key(key, version)
        self._guard(lambda: self._set(made, value, self._ttl(timeout)), None)

    def _set(self, made: str, value: Any, ttl: float | None, encoded: bool = False) -> bool:
        if ttl is not None and ttl <= 0:
            self.client.delete(made)
            return True
        try:
            self.client.set(made, value if encoded else self.encode(value), ttl=ttl)
        except InvalidRequest as exc:
            if exc.code != "value_too_large":
                raise
            # As Django's memcached backends: a value too large is not stored, and the key
            # must not keep an older one.
            log.warning("value of %r too large for the cluster; not stored", made)
            self.client.delete(made)
            return False
        return True

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made = self._key(key, version)
        ttl = self._ttl(timeout)

        def add() -> bool:
            if ttl is not None and ttl <= 0:
                return not self.client.exists(made)  # absent: "added", and gone at once
            return self.client.add(made, self.encode(value), ttl=ttl)

        return self._guard(add, False)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made = self._key(key, version)
        ttl = self._ttl(timeout)

        def touch() -> bool:
            if ttl is not None and ttl <= 0:
                return self.client.delete(made)
            return self.client.touch(made, ttl)

        return self._guard(touch, False)

    def delete(self, key: Any, version: int | None = None) -> bool:
        made = self._key(key, version)
        return self._guard(lambda: self.client.delete(made), False)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        made = self._key(key, version)
        return self._guard(lambda: self.client.exists(made), False)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """The new value; ValueError if the key is missing. The TTL stays. With
        IGNORE_EXCEPTIONS an unreachable cluster gives None (as django-redis)."""
        made = self._key(key, version)

        def incr() -> int | None:
            try:
                value = self.client.incr(made, delta)
            except NotAnInteger:
                return self._incr_slowly(key, made, delta)
            if value is None:
                raise ValueError(f"Key '{key}' not found")
            return value

        return self._guard(incr, None)

    def _incr_slowly(self, key: Any, made: str, delta: int) -> int:
        """A value the node cannot add to (pickled, or past 64 bits): read, add, write back
        with the TTL it had, as Django's own ``BaseCache.incr`` does (not atomic)."""
        found = self.client.get_with_ttl(made)
        if found is None:
            raise ValueError(f"Key '{key}' not found")
        stored, ttl = found
        current = self.decode(stored)
        if current is REFUSED:
            raise ValueError(f"Key '{key}' not found")
        value = current + delta
        self.client.set(made, self.encode(value), ttl=ttl if ttl is None or ttl > 0 else 0.001)
        return value

    # -- batches ----------------------------------------------------------------------------
    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self._key(key, version): key for key in keys}

        def get_many() -> dict[str, Any]:
            try:
                return self.client.get_many(list(made))
            except Unavailable as exc:
                if not self._ignore:
                    raise
                if self._log_ignored:
                    log.warning("cache cluster: %d keys unreachable, ignored", len(exc.failed))
                return exc.found

        found = get_many()
        decoded = {made[k]: self.decode(v) for k, v in found.items()}
        return {k: v for k, v in decoded.items() if v is not REFUSED}

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        made = {self._key(key, version): key for key in data}
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            self.delete_many(list(data), version=version)
            return []
        values = {k: self.encode(data[original]) for k, original in made.items()}
        try:
            self.client.set_many(values, ttl=ttl)
        except InvalidRequest as exc:
            if exc.code != "value_too_large":
                raise
            # One value too large refuses the whole batch: set them one by one instead, and
            # report the keys that were not stored.
            return [made[k] for k, v in values.items() if not self._set(k, v, ttl, encoded=True)]
        except Unavailable as exc:
            if not self._ignore and len(exc.failed) == len(made):
                raise  # nothing reached the cluster
            if self._log_ignored or not self._ignore:
                log.warning("cache cluster: %d of %d keys not set", len(exc.failed), len(made))
            return [made[k] for k in exc.failed if k in made]
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self._key(key, version) for key in keys]
        if made:
            self._guard(lambda: self.client.delete_many(made), 0)

    def clear(self) -> None:
        """Flush every node (needs an ``admin``-scoped API key)."""
        self._guard(self.client.flush, 0)

    def close(self, **kwargs: Any) -> None:
        """Kept open: the client's pool serves the next request (Django calls this after
        every request)."""
