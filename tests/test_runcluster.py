"""`manage.py runcluster`: one command starts a working local cluster and stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

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
        assert len(children) >= 6  # three runnode/gunicorn masters and their workers
    finally:
        proc.send_signal(stop_signal)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=20)
    assert alive == []
    assert "cluster stopped" in "".join(lines)
