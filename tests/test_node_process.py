"""A real `runnode` process (gunicorn, one gevent worker) driven over HTTP with an API key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from tests.processes import ROOT, NodeProcess, Registry

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
    assert health == {"status": "ok", "node": "n1", "ring_version": health["ring_version"]}
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
