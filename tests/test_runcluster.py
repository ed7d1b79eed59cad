"""`manage.py runcluster`: one command starts a working local cluster and stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import psutil
import pytest
import requests

from tests.processes import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_runcluster_starts_three_nodes_and_stops_every_child(tmp_path, stop_signal):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'registry.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    base = free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runcluster", "--nodes", "3", "--base-port", str(base)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Ctrl-C stops the cluster" in line for line in lines), timeout=90)
        output = "".join(lines)
        key = re.search(r"API key:\s+(\S+)", output).group(1)
        admin = re.search(r"admin:\s+(\S+)\s+\(user 'admin', password '([^']+)'\)", output)
        assert admin is not None, output
        urls = re.findall(r"n\d\s+(http://127\.0\.0\.1:\d+)", output)
        assert len(urls) == 3

        ring = requests.get(f"{urls[0]}/api/v1/cluster/ring", headers={"X-API-Key": key}).json()
        assert sorted(n["url"] for n in ring["nodes"]) == sorted(urls)
        r = requests.put(
            f"{urls[1]}/api/v1/keys/hello", json={"value": "world"}, headers={"X-API-Key": key}
        )
        assert r.status_code == 200
        assert (
            requests.get(f"{urls[2]}/api/v1/keys/hello", headers={"X-API-Key": key}).json()["value"]
            == "world"
        )

        # The admin login printed once works.
        s = requests.Session()
        login = s.get(f"{admin.group(1)}login/")
        token = s.cookies["csrftoken"]
        r = s.post(
            f"{admin.group(1)}login/",
            data={
                "username": "admin",
                "password": admin.group(2),
                "csrfmiddlewaretoken": token,
                "next": "/admin/",
            },
            headers={"Referer": login.url},
        )
        assert "Log out" in r.text or "logout" in r.text

        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 7  # three runnode/gunicorn masters, their workers, a heartbeat
        beats = [c for c in children if "heartbeat" in c.cmdline()]
        assert len(beats) == 1

        # The heartbeat records every node.
        def every_node_heard() -> bool:
            nodes = requests.get(
                f"{urls[0]}/api/v1/cluster/nodes", headers={"X-API-Key": key}, timeout=5
            ).json()["nodes"]
            return len(nodes) == 3 and all(n["last_heartbeat"] for n in nodes)

        wait_for(every_node_heard, timeout=30)
    finally:
        proc.send_signal(stop_signal)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=20)
    assert alive == []
    assert "cluster stopped" in "".join(lines)


class ClusterInSession:
    """``runcluster`` in a process group of its own, as a shell starts a foreground job, with
    stdout and stderr collected apart."""

    def __init__(self, tmp_path: Path, nodes: int) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'registry.sqlite3'}",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        argv = ["manage.py", "runcluster", "--nodes", str(nodes), "--base-port", str(free_port())]
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._pumps = [
            threading.Thread(target=_collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=_collect, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        self.nodes: list[psutil.Process] = []

    def wait_up(self) -> list[str]:
        """The node URLs, once the cluster says it is up; remembers every node process."""
        wait_for(lambda: any("Ctrl-C stops the cluster" in line for line in self.out), timeout=90)
        self.nodes = psutil.Process(self.proc.pid).children(recursive=True)
        return re.findall(r"n\d\s+(http://127\.0\.0\.1:\d+)", "".join(self.out))

    def close(self) -> list[psutil.Process]:
        """Make sure nothing is left running; return the node processes that outlived the wait
        (killed by now)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(self.nodes, timeout=20)
        for leftover in alive:
            leftover.kill()
        for pump in self._pumps:
            pump.join(timeout=10)
        return alive


def _collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def _refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) != 0


def test_ctrl_c_on_the_terminal_stops_every_node_without_a_traceback(tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group; every node must
    stop once, quietly, and runcluster must say so."""
    cluster = ClusterInSession(tmp_path, nodes=2)
    try:
        urls = cluster.wait_up()
        assert len(urls) == 2
        assert len(cluster.nodes) >= 4  # two gunicorn masters and their workers
        os.killpg(cluster.proc.pid, signal.SIGINT)
        assert cluster.proc.wait(timeout=30) == 0
    finally:
        alive = cluster.close()
    assert alive == []
    assert all(_refuses_connections(url) for url in urls)
    stdout, stderr = "".join(cluster.out), "".join(cluster.err)
    assert "cluster stopped" in stdout
    for text in (stdout, stderr):
        assert "Traceback" not in text, text
        assert "SystemExit" not in text, text


def test_nodes_die_with_runcluster_even_when_it_is_killed(tmp_path):
    """The nodes run in sessions of their own (out of the terminal's reach), so only
    PR_SET_PDEATHSIG stops them when runcluster cannot (SIGKILL)."""
    cluster = ClusterInSession(tmp_path, nodes=1)
    try:
        urls = cluster.wait_up()
        assert len(cluster.nodes) >= 2  # a gunicorn master and its worker
        cluster.proc.kill()
        cluster.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(cluster.nodes, timeout=20)
        assert alive == []
    finally:
        cluster.close()
    assert all(_refuses_connections(url) for url in urls)


def test_runcluster_tls_serves_https_verified_by_its_own_ca(tmp_path):
    """``--tls``: gencerts makes a CA and node certificates; nodes serve HTTPS, peers and the
    heartbeat verify each other, and a client without the CA is refused."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'registry.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    certs = tmp_path / "certs"
    base = free_port()
    argv = ["runcluster", "--nodes", "2", "--base-port", str(base), "--tls", "--certs", str(certs)]
    proc = subprocess.Popen(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(proc.stdout),  # type: ignore[arg-type]
        daemon=True,
    )
    reader.start()
    ca = str(certs / "ca.pem")
    try:
        wait_for(lambda: any("Ctrl-C stops the cluster" in line for line in lines), timeout=90)
        output = "".join(lines)
        assert (certs / "n1.pem").exists()
        assert (certs / "n2.key").exists()
        assert oct((certs / "n1.key").stat().st_mode & 0o777) == "0o600"
        assert f"--cacert {ca}" in output
        key = re.search(r"API key:\s+(\S+)", output).group(1)
        urls = re.findall(r"n\d\s+(https://127\.0\.0\.1:\d+)", output)
        assert len(urls) == 2
        auth = {"X-API-Key": key}
        # A write through n1 of keys owned by n2 crosses verified TLS between the nodes.
        for i in range(10):
            r = requests.put(
                f"{urls[0]}/api/v1/keys/t{i}", json={"value": i}, headers=auth, verify=ca
            )
            assert r.status_code == 200, r.text
            assert r.json()["copies"] == 2
        assert (
            requests.get(f"{urls[1]}/api/v1/keys/t3", headers=auth, verify=ca).json()["value"] == 3
        )

        def heard() -> bool:
            nodes = requests.get(
                f"{urls[0]}/api/v1/cluster/nodes", headers=auth, verify=ca, timeout=5
            ).json()["nodes"]
            return all(n["last_heartbeat"] for n in nodes)

        wait_for(heard, timeout=30)  # the heartbeat probes over verified TLS too
        login = requests.get(f"{urls[0]}/admin/login/", verify=ca, timeout=5)
        assert "Secure" in login.headers["Set-Cookie"]  # the CSRF cookie goes over HTTPS only
        assert "max-age=3600" in login.headers["Strict-Transport-Security"]
        api = requests.get(f"{urls[0]}/api/v1/keys/t1", headers=auth, verify=ca, timeout=5)
        assert api.headers["X-Content-Type-Options"] == "nosniff"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{urls[0]}/health", timeout=5)  # the system CAs do not know it
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
