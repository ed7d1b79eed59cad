"""A real node (gunicorn, gevent) fed bad input over raw sockets, and held connections open.
Every refusal is the API's JSON error envelope, and nothing is stored from a refused request."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import NodeProcess, Registry, wait_for

pytestmark = pytest.mark.integration

SECRET = "hardening-secret"
HEADER_TIMEOUT = 2.0  # the main node's: short, so the timeout tests are quick
BODY_TIMEOUT = 2.0
MAX_REQUEST_BYTES = 2 * 2**20
IDLE_CONNECTIONS = 10_000


# Raw HTTP -----------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the node closed the connection after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _, status, reason = status_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(status), reason, headers, body)


def exchange(port: int, data: bytes, *, shut_write: bool = False, timeout: float = 10) -> Answer:
    """Send raw bytes on a new connection (then, with ``shut_write``, end the sending side) and
    read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def head(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(body: bytes, size: int = 7) -> bytes:
    """``body`` in chunks of ``size`` bytes, with the last chunk and an empty trailer."""
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def assert_envelope(answer: Answer, status: int, code: str) -> str:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert list(body) == ["error"]
    assert sorted(body["error"]) == ["code", "message"]
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return str(body["error"]["message"])


# Nodes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    path = tmp_path_factory.mktemp("hardening") / "registry.sqlite3"
    return Registry(f"sqlite:///{path}", CACHE_SECRET=SECRET)


@pytest.fixture
def own_registry(tmp_path: Path) -> Registry:
    """For a node started by one test: alone in its ring (a stopped node would stay in it)."""
    return Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", CACHE_SECRET=SECRET)


def start(registry: Registry, log_dir: Path, name: str, *extra: str, **env: str) -> NodeProcess:
    proc = NodeProcess(registry, name, log_dir, **env)
    try:
        return proc.start(*extra).wait_ready()
    except BaseException:
        proc.stop()
        raise


@pytest.fixture(scope="module")
def node(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start(
        registry,
        tmp_path_factory.mktemp("logs"),
        "n1",
        CACHE_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        CACHE_BODY_TIMEOUT=str(BODY_TIMEOUT),
        CACHE_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
    )
    try:
        yield proc
    finally:
        proc.stop()


class Api:
    """The node's public API with the tests' key."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = api_key

    def get(self, key_path: str, **headers: str) -> requests.Response:
        url = f"{self.url}/api/v1/keys/{key_path}"
        return self.session.get(url, headers=headers, timeout=10)

    def put(self, key_path: str, value: Any) -> None:
        url = f"{self.url}/api/v1/keys/{key_path}"
        assert self.session.put(url, json={"value": value}, timeout=10).status_code == 200


@pytest.fixture
def api(node: NodeProcess, registry: Registry) -> Api:
    return Api(node.url, registry.api_key)


def auth(registry: Registry, **headers: str) -> dict[str, str]:
    return {"X-API-Key": registry.api_key, **headers}


# 1. Chunked bodies --------------------------------------------------------------------------------


def test_a_chunked_json_put_stores_the_whole_body(node, registry, api):
    body = json.dumps({"value": {"greeting": "hello, chunks", "n": [1, 2, 3]}}).encode()
    headers = auth(registry, **{"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    answer = exchange(node.port, head("PUT", "/api/v1/keys/chunked", headers) + chunked(body))
    assert answer.status == 200, answer.body
    assert api.get("chunked").json()["value"] == {"greeting": "hello, chunks", "n": [1, 2, 3]}


def test_a_chunked_octet_stream_put_stores_every_byte(node, registry, api):
    blob = bytes(range(256)) * 40
    headers = auth(
        registry, **{"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
    )
    answer = exchange(node.port, head("PUT", "/api/v1/keys/blob", headers) + chunked(blob, 1000))
    assert answer.status == 200, answer.body
    assert api.get("blob", Accept="application/octet-stream").content == blob


def test_a_chunked_incr_adds_its_delta(node, registry, api):
    api.put("counter", 5)
    headers = auth(registry, **{"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    request = head("POST", "/api/v1/keys/counter/incr", headers) + chunked(b'{"delta": 100}')
    answer = exchange(node.port, request)
    assert answer.status == 200, answer.body
    assert answer.json() == {"key": "counter", "value": 105, "copies": 1}
    assert api.get("counter").json()["value"] == 105


def test_a_chunked_body_over_the_request_limit_is_413_and_stores_nothing(node, registry, api):
    blob = b"x" * (MAX_REQUEST_BYTES + 1)
    headers = auth(
        registry, **{"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
    )
    request = head("PUT", "/api/v1/keys/too-big", headers) + chunked(blob, 65536)
    assert_envelope(exchange(node.port, request), 413, "request_too_large")
    assert api.get("too-big").status_code == 404


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'5\r\n{"val\r\nZZ\r\nue": 1}\r\n0\r\n\r\n', "invalid_request"),  # not a chunk size
        (b'20\r\n{"value": 1}', "incomplete_body"),  # the connection ends inside a chunk
        (b'c\r\n{"value": 1}\r\n', "incomplete_body"),  # ... or before the last chunk
    ],
)
def test_a_malformed_or_cut_off_chunked_body_is_400_and_stores_nothing(
    node, registry, api, body, code
):
    headers = auth(registry, **{"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    request = head("PUT", "/api/v1/keys/broken", headers) + body
    assert_envelope(exchange(node.port, request, shut_write=True), 400, code)
    assert api.get("broken").status_code == 404


# 2. Bodies shorter than their Content-Length ------------------------------------------------------


def test_a_body_cut_off_before_its_content_length_is_400_and_stores_nothing(node, registry, api):
    headers = auth(
        registry, **{"Content-Type": "application/octet-stream", "Content-Length": "1000000"}
    )
    request = head("PUT", "/api/v1/keys/short", headers) + b"x" * 1000
    message = assert_envelope(exchange(node.port, request, shut_write=True), 400, "incomplete_body")
    assert "999000 bytes" in message
    assert api.get("short").status_code == 404


def test_a_cut_off_json_body_that_parses_is_still_refused(node, registry, api):
    """The first bytes of a body can be a whole JSON document: `{"value": 1}` of a declared 40."""
    headers = auth(registry, **{"Content-Type": "application/json", "Content-Length": "40"})
    request = head("PUT", "/api/v1/keys/short-json", headers) + b'{"value": 1}'
    assert_envelope(exchange(node.port, request, shut_write=True), 400, "incomplete_body")
    assert api.get("short-json").status_code == 404


def test_a_cut_off_internal_call_is_400_and_stores_nothing(node, api):
    body = b'{"key": "short-internal", "value": "1", "binary": false, "ttl": null}'
    headers = {"X-Cluster-Secret": SECRET, "Content-Length": str(len(body) + 50)}
    request = head("POST", "/internal/v1/set", headers) + body
    assert_envelope(exchange(node.port, request, shut_write=True), 400, "incomplete_body")
    assert api.get("short-internal").status_code == 404


# 3. Integers too long for Python's int() ----------------------------------------------------------

HUGE = "7" * 5000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/keys/huge", '{"value": N}'),
        ("/api/v1/keys/huge", '{"value": {"deep": [1, -N]}}'),
        ("/api/v1/keys/huge", '{"value": 1, "ttl": N}'),
        ("/api/v1/keys/counter/incr", '{"delta": N}'),
        ("/api/v1/batch/set", '{"items": [{"key": "huge", "value": N}]}'),
        ("/api/v1/batch/get", '{"keys": ["huge"], "extra": N}'),
        ("/set", '{"key": "huge", "value": N}'),
    ],
)
def test_an_integer_of_more_than_4300_digits_anywhere_in_a_body_is_400(
    node, registry, api, path, body
):
    api.put("counter", 1)
    data = body.replace("N", HUGE).encode()
    headers = auth(
        registry, **{"Content-Type": "application/json", "Content-Length": str(len(data))}
    )
    method = "PUT" if path.startswith("/api/v1/keys/huge") else "POST"
    message = assert_envelope(
        exchange(node.port, head(method, path, headers) + data), 400, "bad_json"
    )
    assert "5000 digits" in message
    assert api.get("huge").status_code == 404
    assert api.get("counter").json()["value"] == 1


def test_integers_are_exact_up_to_4300_digits_and_refused_beyond(node, registry, api):
    headers = {"X-API-Key": registry.api_key, "Content-Type": "application/json"}
    url = f"{node.url}/api/v1/keys/long-int"
    longest = "9" * 4300
    r = requests.put(url, data='{"value": [' + longest + "]}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert api.get("long-int").text == '{"key":"long-int","value":[' + longest + '],"ttl":null}'
    r = requests.put(url, data='{"value": 1' + longest + "}", headers=headers, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "code": "bad_json",
        "message": "body is not valid JSON: an integer of 4301 digits is longer than the 4300 "
        "allowed",
    }
    assert api.get("long-int").json()["value"] == [int(longest)]


def test_a_huge_integer_in_an_internal_call_is_400_and_in_a_hops_header_harmless(node, api):
    body = '{"key": "huge", "value": "N", "binary": false, "ttl": null}'.replace("N", HUGE)
    r = requests.post(
        f"{node.url}/internal/v1/set", data=body, headers={"X-Cluster-Secret": SECRET}, timeout=10
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_value"
    r = requests.get(
        f"{node.url}/api/v1/keys/huge",
        headers={"X-Cluster-Secret": SECRET, "X-Forwarded-Hops": HUGE},
        timeout=10,
    )
    # Hops mean nothing on the public API (peers use /internal/v1/): a plain miss, no 500.
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert api.get("huge").status_code == 404


# 4. Idle and slow connections ---------------------------------------------------------------------


def wait_closed(sock: socket.socket, deadline: float, trickle: bytes = b"") -> float | None:
    """Poll until the node closes ``sock`` (EOF or reset), sending ``trickle`` one byte every
    0.2 s meanwhile; returns when it closed (time.monotonic()), or None at the deadline."""
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                try:
                    if not sock.recv(65536):
                        return time.monotonic()
                except ConnectionResetError:
                    return time.monotonic()
            elif trickle:
                try:
                    sock.send(trickle[:1])
                except OSError:
                    return time.monotonic()
                trickle = trickle[1:]
    return None


def test_a_connection_that_sends_nothing_is_closed_within_the_header_timeout(node):
    """HEADER_TIMEOUT is for a new connection's first request; between requests, gunicorn's
    keep-alive (30 s) applies, which peers' pooled connections rely on."""
    address = ("127.0.0.1", node.port)
    with socket.create_connection(address) as idle, socket.create_connection(address) as kept:
        opened = time.monotonic()
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept).status == 200
        closed = wait_closed(idle, opened + HEADER_TIMEOUT + 3)
        assert closed is not None, "the node kept an idle connection open"
        assert HEADER_TIMEOUT - 0.5 <= closed - opened <= HEADER_TIMEOUT + 1.5
        assert still_open([kept])  # idle as long, but it has served a request
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept).status == 200


def test_a_request_head_that_trickles_in_is_closed_within_the_header_timeout(node):
    slow = head("GET", "/health", {"X-Padding": "p" * 200})  # 0.2 s a byte: about 50 s in all
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        opened = time.monotonic()
        closed = wait_closed(sock, opened + HEADER_TIMEOUT + 3, trickle=slow)
    assert closed is not None, "the node waited on a request head sent a byte at a time"
    assert closed - opened <= HEADER_TIMEOUT + 1.5


def test_a_body_that_stalls_gets_408_within_the_body_timeout(node, registry, api):
    headers = auth(
        registry, **{"Content-Type": "application/octet-stream", "Content-Length": "100"}
    )
    with socket.create_connection(("127.0.0.1", node.port), timeout=BODY_TIMEOUT + 5) as sock:
        sock.sendall(head("PUT", "/api/v1/keys/stalled", headers) + b"x" * 10)
        started = time.monotonic()
        answer = read_answer(sock)  # blocks until the node answers: it must not wait forever
        waited = time.monotonic() - started
    assert_envelope(answer, 408, "request_timeout")
    assert BODY_TIMEOUT - 0.5 <= waited <= BODY_TIMEOUT + 2
    assert api.get("stalled").status_code == 404


def worker_pid(master_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                    return int(entry.name)
    raise LookupError(f"no worker under gunicorn master {master_pid}")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def open_files_limit() -> Iterator[None]:
    """This test process holds the idle connections: raise its own RLIMIT_NOFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = IDLE_CONNECTIONS + 1024
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-files limit ({hard}) is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connected sockets that never send a byte; all closed on the way out."""
    socks: list[socket.socket] = []
    try:
        with selectors.DefaultSelector() as sel:
            for _ in range(count):
                sock = socket.socket()
                socks.append(sock)
                sock.setblocking(False)
                if sock.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS:
                    sel.register(sock, selectors.EVENT_WRITE)
            deadline = time.monotonic() + 60
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    sel.unregister(key.fileobj)
            assert not sel.get_map(), f"{len(sel.get_map())} connections never completed"
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in socks)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def still_open(socks: list[socket.socket]) -> bool:
    """None of ``socks`` has been closed by the node (a closed one reads as ready: EOF)."""
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        return not sel.select(timeout=0)


def timed(call: Any) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = call()
    return time.perf_counter() - started, response


@pytest.fixture
def patient_node(own_registry, tmp_path) -> Iterator[NodeProcess]:
    """Default limits, but idle connections are kept (a long HEADER_TIMEOUT): the node must
    serve while they are all held, not only once they time out."""
    proc = start(own_registry, tmp_path, "n1", CACHE_HEADER_TIMEOUT="300")
    try:
        yield proc
    finally:
        proc.stop()


def test_a_node_answers_within_1s_while_10000_idle_connections_are_held(
    patient_node, own_registry, open_files_limit
):
    registry = own_registry
    node = patient_node
    keyed = {"X-API-Key": registry.api_key}
    Api(node.url, registry.api_key).put("k", 42)
    worker = worker_pid(node.proc.pid)
    before = open_files(worker)
    with idle_connections(node.port, IDLE_CONNECTIONS) as held:
        # Accepted by the worker, not waiting in the listen backlog (give or take a few of the
        # worker's own files, such as the connection of the PUT above, which come and go).
        wait_for(lambda: open_files(worker) >= before + IDLE_CONNECTIONS - 20, timeout=60)
        health = timed(lambda: requests.get(f"{node.url}/health", timeout=5))
        key = timed(lambda: requests.get(f"{node.url}/api/v1/keys/k", headers=keyed, timeout=5))
        peer = timed(
            lambda: requests.post(
                f"{node.url}/internal/v1/get",
                data=b'{"key": "k"}',
                headers={"X-Cluster-Secret": SECRET},
                timeout=5,
            )
        )
        assert still_open(held)
    for seconds, response in (health, key, peer):
        assert response.status_code == 200, response.text
        assert seconds < 1.0, (response.url, seconds)
    assert key[1].json()["value"] == 42
    assert peer[1].content == b"42"


@pytest.fixture
def small_node(own_registry, tmp_path) -> Iterator[NodeProcess]:
    proc = start(
        own_registry,
        tmp_path,
        "n1",
        CACHE_WORKER_CONNECTIONS="20",
        CACHE_PEER_CONNECTIONS="8",
        CACHE_HEADER_TIMEOUT="300",
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_connections_beyond_the_client_limit_are_kept_for_peers(small_node, own_registry):
    registry = own_registry
    node = small_node
    keyed = {"X-API-Key": registry.api_key}
    Api(node.url, registry.api_key).put("k", 7)
    worker = worker_pid(node.proc.pid)
    before = open_files(worker)
    with idle_connections(node.port, 20):
        wait_for(lambda: open_files(worker) >= before + 20 - 5, timeout=30)
        client = timed(lambda: requests.get(f"{node.url}/api/v1/keys/k", headers=keyed, timeout=5))
        peer = timed(
            lambda: requests.post(
                f"{node.url}/internal/v1/get",
                data=b'{"key": "k"}',
                headers={"X-Cluster-Secret": SECRET},
                timeout=5,
            )
        )
        health = timed(lambda: requests.get(f"{node.url}/health", timeout=5))
    seconds, response = client
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response.headers["Retry-After"] == "1"
    assert seconds < 1.0
    for seconds, response in (peer, health):
        assert response.status_code == 200, response.text
        assert seconds < 1.0
    assert peer[1].content == b"7"
    # Once the clients let go, clients are served again.
    assert requests.get(f"{node.url}/api/v1/keys/k", headers=keyed, timeout=5).json()["value"] == 7


# 5. Keys that are not UTF-8, or hold a newline ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/api/v1/keys/%ff"),
        ("GET", "/api/v1/keys/%ff"),
        ("PUT", "/api/v1/keys/caf%e9"),  # latin-1, not UTF-8
        ("POST", "/api/v1/keys/%c3/incr"),  # a UTF-8 sequence cut short
        ("GET", "/get?key=%ff"),
        ("DELETE", "/delete?key=%ff"),
        ("PUT", "/api/v1/keys/a%0Ab"),
        ("GET", "/api/v1/keys/a%0Ab"),
        ("PUT", "/api/v1/keys/a%0A"),
        ("POST", "/api/v1/keys/k%0A/incr"),
        ("PUT", "/api/v1/keys/k/incr%0A"),
        ("GET", "/get?key=a%0Ab"),
    ],
)
def test_a_key_that_is_not_utf8_or_holds_a_newline_is_400_invalid_key(
    node, registry, api, method, target
):
    api.put("k", 1)
    body = b'{"value": 1}'
    headers = auth(registry, **{"Content-Type": "application/json"})
    headers["Content-Length"] = str(len(body)) if method in ("PUT", "POST") else "0"
    data = head(method, target, headers) + (body if method in ("PUT", "POST") else b"")
    assert_envelope(exchange(node.port, data), 400, "invalid_key")
    for stored in ("%25FF", "a", "caf%25E9", "%25C3"):  # the keys "%FF", "a", ...
        assert api.get(stored).status_code == 404, stored
    assert api.get("k").json()["value"] == 1


def test_a_key_is_the_utf8_its_percent_encoding_spells(node, registry, api):
    api.put("%C3%A9t%C3%A9%2F%25", "summer")  # "été/%"
    r = api.session.get(f"{node.url}/get", params={"key": "été/%"}, timeout=10)
    assert r.json() == {"key": "été/%", "value": "summer", "ttl": None}
    latin1 = head("GET", "/api/v1/keys/%E9t%E9%2F%25", auth(registry))  # "été/%" in latin-1
    assert_envelope(exchange(node.port, latin1), 400, "invalid_key")


# 6. Accept headers and methods --------------------------------------------------------------------


ACCEPTS = [
    ("text/html", 406, "application/json"),
    ("image/png, text/*", 406, "application/json"),
    ("application/json;q=0", 406, "application/json"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", 200, "application/json"),
    ("application/*", 200, "application/json"),
    ("*/*", 200, "application/json"),
    ("text/html, application/octet-stream", 200, "application/octet-stream"),
]


def test_a_key_get_answers_406_when_accept_admits_nothing_it_serves(node, api):
    """... and JSON (or raw bytes) when it admits them, a browser's ``*/*;q=0.8`` included."""
    api.put("accepted", 1)
    for accept, status, content_type in ACCEPTS:
        r = api.get("accepted", Accept=accept)
        assert r.status_code == status, accept
        assert r.headers["Content-Type"].startswith(content_type), accept
        if status == 406:
            assert r.json()["error"]["code"] == "not_acceptable"
        elif content_type == "application/json":
            assert r.json()["value"] == 1
        else:
            assert r.content == b"1"


def test_the_schema_documents_406_on_every_operation(node):
    schema = requests.get(f"{node.url}/api/schema/?format=json", timeout=10).json()
    for path, item in schema["paths"].items():
        if path == "/metrics":
            continue
        for method, operation in item.items():
            assert "406" in operation["responses"], (method, path)
    key_get = schema["paths"]["/api/v1/keys/{key}"]["get"]["responses"]["406"]
    assert "octet-stream" in key_get["description"]


@pytest.mark.parametrize("path", ["/metrics", "/health"])
def test_metrics_and_health_serve_get_and_head_and_answer_other_methods_405(node, path):
    assert requests.get(f"{node.url}{path}", timeout=10).status_code == 200
    r = requests.head(f"{node.url}{path}", timeout=10)
    assert r.status_code == 200
    assert r.content == b""
    for method in ("TRACE", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        answer = exchange(node.port, head(method, path, {"Content-Length": "0"}))
        assert_envelope(answer, 405, "method_not_allowed")
        assert answer.headers["allow"] == "GET, HEAD", method


# 7. What gunicorn rejects itself ------------------------------------------------------------------

REJECTED = [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (
        b"GET /health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        431,
        "headers_too_large",
    ),
    (
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"G@T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, "bad_request"),
    (
        b"PUT /set HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        400,
        "bad_request",
    ),
    (
        b"PUT /set HTTP/1.1\r\nHost: x\r\nContent-Length: " + HUGE.encode() + b"\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        b"PUT /set HTTP/1.1\r\nHost: x\r\nExpect: 100-nope\r\nContent-Length: 0\r\n\r\n",
        417,
        "expectation_failed",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status", "code"), REJECTED)
def test_what_gunicorn_rejects_is_the_json_envelope(node, request_bytes, status, code):
    assert_envelope(exchange(node.port, request_bytes), status, code)


@pytest.fixture
def gthread_node(own_registry, tmp_path) -> Iterator[NodeProcess]:
    proc = start(own_registry, tmp_path, "n1", "--worker-class", "gthread")
    try:
        yield proc
    finally:
        proc.stop()


def test_a_gthread_node_rejects_with_the_json_envelope_too(gthread_node):
    for request_bytes, status, code in REJECTED[:4]:
        assert_envelope(exchange(gthread_node.port, request_bytes), status, code)
