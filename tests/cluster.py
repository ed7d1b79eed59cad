"""A real multi-node cluster for integration tests: N `runnode` processes on one registry
(file SQLite, or a fresh PostgreSQL database when 127.0.0.1:5432 answers)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from tests.processes import ROOT, NodeProcess, Registry, wait_for

PG_HOST, PG_PORT = "127.0.0.1", 5432


def postgres_available() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            pass
    except OSError:
        return False
    try:
        import psycopg

        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=3
        ):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway database on the local server; dropped afterwards."""
    import psycopg

    name = f"cache_test_{secrets.token_hex(4)}"
    admin = {
        "host": PG_HOST,
        "port": PG_PORT,
        "user": "postgres",
        "dbname": "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Cluster:
    def __init__(self, registry: Registry, log_dir: Path, size: int, **env: str) -> None:
        self.registry = registry
        self.log_dir = log_dir
        self.env = env
        self.nodes = [NodeProcess(registry, f"n{i + 1}", log_dir, **env) for i in range(size)]
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = registry.api_key

    def start(self) -> Cluster:
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_ready()
        self.wait_same_ring()
        return self

    def wait_same_ring(self, timeout: float = 30.0) -> None:
        """Wait until every node serves the same ring version (each reloads on its own)."""

        def one_version() -> bool:
            live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            seen = {requests.get(f"{n.url}/health", timeout=2).json()["ring_version"] for n in live}
            return len(seen) == 1

        wait_for(one_version, timeout=timeout)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        # Close our connections and signal every node first, so no node's graceful shutdown
        # waits on keep-alive connections held by another node that has not been told yet.
        self.session.close()
        for n in self.nodes:
            n.quit()
        for n in self.nodes:
            n.stop()

    def add_node(self, name: str, *extra: str, **env: str) -> NodeProcess:
        """Start one more node (with the cluster's settings, ``extra`` runnode arguments) and
        wait until it is up."""
        return self.start_node(self.new_node(name, **env), *extra)

    def new_node(self, name: str, **env: str) -> NodeProcess:
        proc = NodeProcess(self.registry, name, self.log_dir, **{**self.env, **env})
        self.nodes.append(proc)
        return proc

    @staticmethod
    def start_node(proc: NodeProcess, *extra: str) -> NodeProcess:
        return proc.start(*extra).wait_ready()

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def get(self, node: NodeProcess, path: str, **kw: Any) -> requests.Response:
        return self.session.get(node.url + path, timeout=10, **kw)

    def post(self, node: NodeProcess, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.session.post(node.url + path, json=body, timeout=10, **kw)

    def put(self, node: NodeProcess, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.session.put(node.url + path, json=body, timeout=10, **kw)

    def ring(self, node: NodeProcess) -> dict[str, Any]:
        return self.get(node, "/api/v1/cluster/ring").json()

    def stats(self, node: NodeProcess) -> dict[str, Any]:
        return self.get(node, "/api/v1/stats").json()

    def shell(self, code: str) -> str:
        """Run ORM code against the registry in a separate process, as an operator would."""
        out = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=self.registry.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout
