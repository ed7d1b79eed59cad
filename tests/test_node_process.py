"""A real `runnode` process (gunicorn, one gevent worker) driven over HTTP with an API key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from tests.processes import ROOT, NodeProcess, Registry, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")


@pytest.fixture
def node_process(registry, tmp_path):
    proc = NodeProcess(registry, "n1", tmp_path)
    try:
        yield proc.start().wait_ready()
    finally:
        proc.stop()


def test_node_serves_the_api_over_http(node_process, registry):
    s = requests.Session()
    s.headers["Authorization"] = f"Api-Key {registry.api_key}"
    base = node_process.url

    r = s.put(f"{base}/api/v1/keys/greeting", json={"value": {"hello": "world"}, "ttl": 60})
    assert r.status_code == 200
    version = r.json()["version"]
    r = s.get(f"{base}/api/v1/keys/greeting")
    assert r.status_code == 200
    assert r.json()["value"] == {"hello": "world"}
    assert 0 < r.json()["ttl"] <= 60
    assert r.headers["ETag"] == f'"{version}"'

    assert s.post(f"{base}/api/v1/keys/hits/incr").status_code == 404
    s.put(f"{base}/api/v1/keys/hits", json={"value": 41})
    assert s.post(f"{base}/api/v1/keys/hits/incr").json()["value"] == 42

    blob = bytes(range(256))
    r = s.put(
        f"{base}/api/v1/keys/blob", data=blob, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 200
    r = s.get(f"{base}/api/v1/keys/blob", headers={"Accept": "application/octet-stream"})
    assert r.content == blob

    r = s.post(f"{base}/batch_get", json={"keys": ["greeting", "hits", "nope"]})
    assert r.json() == {
        "values": {"greeting": {"hello": "world"}, "hits": 42},
        "missing": ["nope"],
        "failed": [],
    }

    assert s.get(f"{base}/api/v1/keys/nope").status_code == 404
    r = requests.get(f"{base}/api/v1/keys/greeting")  # no key
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"

    health = requests.get(f"{base}/health").json()
    assert health == {
        "status": "ok",
        "node": "n1",
        "ring_version": health["ring_version"],
        "member": "up",
    }
    metrics = requests.get(f"{base}/metrics").text
    assert "cache_items 3.0" in metrics
    stats = s.get(f"{base}/api/v1/stats").json()
    assert stats["items"] == 3
    assert stats["node"] == "n1"


def test_runnode_refuses_more_than_one_worker(registry):
    out = subprocess.run(
        [sys.executable, "manage.py", "runnode", "--name", "x", "--port", "1", "--workers", "2"],
        cwd=ROOT,
        env=registry.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "exactly one worker" in out.stderr


def test_gunicorn_refuses_workers_from_the_environment(registry, tmp_path):
    proc = NodeProcess(registry, "n9", tmp_path, GUNICORN_CMD_ARGS="--workers 3")
    proc.start()
    try:
        assert proc.proc.wait(timeout=60) != 0
        assert "refusing to start a cache node with 3 workers" in proc.log()
    finally:
        proc.stop()


def test_nodes_on_one_machine_open_no_gunicorn_control_socket(registry, tmp_path):
    """gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
    two nodes would take it from each other and log errors, and it can change the worker
    count. Nodes run without it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": ""}
    first = NodeProcess(registry, "n1", tmp_path, **env)
    second = NodeProcess(registry, "n2", tmp_path, **env)
    try:
        first.start().wait_ready()
        second.start().wait_ready()
    finally:
        second.stop()
        first.stop()
    assert not (home / ".gunicorn").exists()
    for node in (first, second):
        assert "Control server" not in node.log()
        assert "[ERROR]" not in node.log()


def test_peers_send_internal_calls_to_a_gevent_node_on_one_stream(registry, tmp_path):
    """Against a real node (gunicorn, gevent), a coordinator's calls go as frames on one
    upgraded connection, not as an HTTP request each (after the first, which opens it)."""

    from cacheapi import errors
    from cacheapi.peer.client import PeerClient
    from nodes.ring import RingNode

    proc = NodeProcess(registry, "n1", tmp_path, CACHE_SECRET="stream-test-secret")
    try:
        proc.start().wait_ready()
        peers = PeerClient(secret="stream-test-secret", timeout=2.0)
        owner = RingNode(name="n1", url=proc.url)
        pool = peers._transport.pool(proc.url)
        big = b'{"n":123456789012345678901234567890}'
        # The first call goes as HTTP (no stream yet) and opens a stream in the background.
        version = peers.set(owner, "k", big, False, 30.0)
        assert len(pool._idle) == 1
        wait_for(lambda: len(pool._idle_streams) == 1, timeout=5)
        entry = peers.get(owner, "k")
        assert (entry.value, entry.version) == (big, version)
        assert peers.get(owner, "nope") is None
        assert list(peers.start_get_many(owner, ["k", "nope"]).result()) == ["k"]
        with pytest.raises(errors.CacheError) as info:
            peers.incr(owner, "k", 1)  # not an integer: the owner's 409, relayed
        assert info.value.status == 409
        stats = requests.get(
            f"{proc.url}/api/v1/stats", headers={"X-API-Key": registry.api_key}, timeout=5
        ).json()
        assert len(pool._idle_streams) == 1  # every later call went on the one stream
        assert len(pool._idle) == 1  # and none as another HTTP request
    finally:
        proc.stop()
    assert stats["ops"]["internal_stream"] == 1
    assert stats["ops"]["internal_set"] == 1
    assert stats["ops"]["internal_get"] == 2
    assert stats["ops"]["internal_get_many"] == 1


def test_peers_fall_back_to_one_request_per_call_on_a_gthread_node(registry, tmp_path):
    """gthread workers cannot hand a connection to the app: the node refuses the upgrade and
    the coordinator sends each call as an HTTP request (and does not ask again at once)."""
    import time

    from cacheapi.peer.client import PeerClient
    from nodes.ring import RingNode

    proc = NodeProcess(registry, "n1", tmp_path, CACHE_SECRET="stream-test-secret")
    try:
        proc.start("--worker-class", "gthread").wait_ready()
        peers = PeerClient(secret="stream-test-secret", timeout=2.0)
        owner = RingNode(name="n1", url=proc.url)
        peers.set(owner, "k", b"1", False, None)
        assert peers.get(owner, "k").value == b"1"
        assert peers.start_delete_many(owner, ["k"]).result() == ["k"]
        pool = peers._transport.pool(proc.url)
        wait_for(lambda: pool._streams_refused_until > time.monotonic(), timeout=5)
        assert peers.get(owner, "missing") is None  # still served, as HTTP
        assert pool._idle_streams == []
        assert pool._idle  # keep-alive HTTP connections instead
        stats = requests.get(
            f"{proc.url}/api/v1/stats", headers={"X-API-Key": registry.api_key}, timeout=5
        ).json()
    finally:
        proc.stop()
    assert "internal_stream" not in stats["ops"]
    assert stats["ops"]["internal_set"] == 1


def test_ctrl_c_on_the_terminal_stops_a_node_without_a_traceback(registry, tmp_path):
    """A terminal's Ctrl-C reaches gunicorn's master and its worker alike (one process group);
    the worker must exit once, on its master's word, not print gevent's SystemExit traceback."""
    node = NodeProcess(registry, "n1", tmp_path).start()  # its own process group, as a shell's job
    try:
        node.wait_ready()
        os.killpg(node.proc.pid, signal.SIGINT)
        assert node.proc.wait(timeout=30) == 0
    finally:
        node.stop()
    log = node.log()
    assert "Handling signal: int" in log
    assert "Traceback" not in log, log
    assert "SystemExit" not in log, log
