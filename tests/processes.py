"""Real node processes for integration tests: a registry database, `runnode` children on free
ports, readiness polled with a deadline, and every child stopped (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port to start a server on: free now, never handed out before by this process, and
    below the kernel's ephemeral range, so that no outgoing connection (a peer, a test client)
    takes it between this check and the server's bind (bind(0) picks from that very range)."""
    low, _ = _ephemeral_range()
    top = low - 1 if low > 12_000 else 60_999
    for _ in range(1000):
        port = random.randint(10_000, top)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value or raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last error: {last_error})")


def manage(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


class Registry:
    """A registry database shared by the node processes of one test (SQLite file or a URL)."""

    def __init__(self, database_url: str, **extra_env: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        manage(self.env, "migrate", "--noinput", "-v0")
        self.api_key = manage(
            self.env, "createapikey", "--name", "tests", "--scopes", "read,write,admin", "--quiet"
        ).strip()


class NodeProcess:
    def __init__(self, registry: Registry, name: str, log_dir: Path, **env: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.registry = registry
        self.log_path = log_dir / f"{name}.log"
        self.env = {**registry.env, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> NodeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runnode",
                "--name",
                self.name,
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 30.0, member: str | None = "up") -> NodeProcess:
        """Wait until /health answers 200 and (unless ``member`` is None) the node's ring
        lists it with that status: a started node is ``joining`` until it pulled its keys."""

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log()}")
            r = requests.get(f"{self.url}/health", timeout=1)
            return r.status_code == 200 and (member is None or r.json()["member"] == member)

        wait_for(healthy, timeout=timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Die at once, as a crashed machine would (the whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: gunicorn's graceful stop, which first hands the node's keys off."""
        self.signal(signal.SIGTERM)

    def quit(self) -> None:
        """SIGINT: gunicorn's quick stop, no hand-off (``stop`` waits for it)."""
        self.signal(signal.SIGINT)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.quit()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def running_node(registry: Registry, name: str, log_dir: Path, **env: str) -> Iterator[NodeProcess]:
    """A started, healthy node, stopped on the way out (also when it fails to start)."""
    proc = NodeProcess(registry, name, log_dir, **env)
    try:
        proc.start().wait_ready()
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def running_heartbeat(
    registry: Registry, log_path: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py heartbeat`` with ``args`` in the background, stopped on the way out."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "heartbeat", *args],
            cwd=ROOT,
            env=registry.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
