"""Start and stop the servers the benchmarks measure: cache nodes and the bare Django baseline.

A :class:`Registry` is a throwaway registry (a migrated SQLite file in a temp directory plus an
API key made with ``manage.py createapikey``); a :class:`Node` is one ``manage.py runnode``
child; a :class:`BareDjango` is the bare Django app of ``bench/bare`` served by gunicorn with
the nodes' own gunicorn config. Each is a :class:`Server`: its own process group, a free
loopback port, its log in a temp directory. Every server started through
:func:`cleanup_on_exit`-protected code is stopped (SIGTERM to the whole group, then SIGKILL),
also on Ctrl-C or SIGTERM of the benchmark.

The cluster benchmark reuses these pieces: several :class:`Node` objects over one
:class:`Registry`, and :meth:`Server.cpu_seconds` for server CPU per 1,000 operations.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

import psutil
import requests
from report import ROOT, loadavg

T = TypeVar("T")

PYTHON = sys.executable
GUNICORN_CONF = ROOT / "cache_project" / "gunicorn_conf.py"  # the nodes' (and the bare app's)

# Inherited settings that would change what is measured (a debug server, an access log, a
# developer's CACHE_* overrides) are dropped so that every run measures the defaults.
_DROPPED_ENV_PREFIXES = ("CACHE_",)
_DROPPED_ENV = {"DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY"}

_live: list[Server] = []
_handed_out: set[int] = set()


def free_port() -> int:
    """A port to start a server on: free now, never handed out before by this process, and
    below the kernel's ephemeral range, so that no outgoing connection (a load lane, a peer)
    takes it between this check and the server's bind (bind(0) picks from that very range).
    The same picker as the tests' (``tests/processes.py``); bench/ does not import tests/."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
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


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_ENV and not k.startswith(_DROPPED_ENV_PREFIXES)
    }
    env.update({"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING", **extra})
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


class Registry:
    """A private registry: SQLite file + admin-scoped API key, in a temp directory."""

    def __init__(self, **extra_env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
        self.database_url = f"sqlite:///{self.dir / 'registry.sqlite3'}"
        self.env = _clean_env(DATABASE_URL=self.database_url, **extra_env)
        try:
            manage(self.env, "migrate", "--noinput", "-v0")
            self.api_key = manage(
                self.env,
                "createapikey",
                "--name",
                "bench",
                "--scopes",
                "read,write,admin",
                "--quiet",
            ).strip()
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """One server process group on a free loopback port: ``start()``, ``wait_ready()``,
    ``cpu_seconds()``, ``stop()``. Subclasses give the command line and the readiness path."""

    ready_path = "/health"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        cpu: int | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.cpu = cpu
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.env = env
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        argv = self.argv()
        if self.cpu is not None and hasattr(os, "sched_setaffinity"):
            argv = ["taskset", "-c", str(self.cpu), *argv] if shutil.which("taskset") else argv
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        _live.append(self)
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills gunicorn and workers
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> Self:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return self
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {timeout}s ({last}):\n{self.log()[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        """The server's processes: the gunicorn master and its worker."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server's processes."""
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, self.stop_signal)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc is not None:
            # Workers left behind by a dead master are still in the group: kill them too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in _live:
            _live.remove(self)


class Node(Server):
    """One ``manage.py runnode`` process group (the command execs gunicorn in place)."""

    # gunicorn's quick stop: SIGTERM would hand the node's keys to the others first.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        registry: Registry,
        name: str = "n1",
        *,
        worker_class: str = "gevent",
        threads: int | None = None,
        cpu: int | None = None,
        port: int | None = None,
        **env: str,
    ) -> None:
        super().__init__(name, {**registry.env, **env}, registry.dir, cpu=cpu, port=port)
        self.registry = registry
        self.worker_class = worker_class
        self.threads = threads

    @property
    def label(self) -> str:
        if self.worker_class == "gthread":
            return f"gthread --threads {self.threads or 4}"
        return self.worker_class

    def argv(self) -> list[str]:
        argv = [PYTHON, "manage.py", "runnode", "--name", self.name, "--port", str(self.port)]
        argv += ["--worker-class", self.worker_class]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        return argv


class BareDjango(Server):
    """The bare Django baseline (``bench/bare``): one ``JsonResponse`` view, no middleware,
    no apps, served by gunicorn with the nodes' config file and the environment ``runnode``
    gives a node (bind, worker class, worker connections): same worker class, one worker, same
    keep-alive, timeouts and log level. Its log lives in its own temp directory."""

    ready_path = "/api/v1/keys/ready"  # the one view answers every key

    def __init__(
        self, *, worker_class: str = "gevent", cpu: int | None = None, port: int | None = None
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cache-bench-bare-"))
        port = port or free_port()
        env = _clean_env(
            DJANGO_SETTINGS_MODULE="bench.bare.settings",
            CACHE_BIND=f"127.0.0.1:{port}",
            CACHE_WORKER_CLASS=worker_class,
            CACHE_WORKER_CONNECTIONS="1000",  # a node's default (CACHE_CLUSTER WORKER_CONNECTIONS)
            CACHE_NODE_NAME="bare-django",  # gunicorn's proc_name: cache-node-bare-django
        )
        super().__init__("bare-django", env, self.dir, cpu=cpu, port=port)
        self.worker_class = worker_class

    @property
    def label(self) -> str:
        return f"bare Django ({self.worker_class})"

    def argv(self) -> list[str]:
        return [PYTHON, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "bench.bare.wsgi:application"]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_all() -> None:
    """Stop every server still running (idempotent; called from finally blocks and atexit)."""
    for server in list(_live):
        server.stop()


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt and stop every server on the way out."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        # Ctrl-C during cleanup must not leave a server behind.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stop_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_measured(run: Callable[[], T], what: str) -> tuple[T, dt.datetime, tuple[str, str]] | None:
    """``run()`` with every server it starts stopped on the way out, and when it started and
    the load average before and after; None (after saying so) if it was interrupted."""
    started = dt.datetime.now(dt.UTC)
    before = loadavg()
    try:
        with cleanup_on_exit():
            result = run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: every {what} was stopped; no results written", file=sys.stderr)
        return None
    return result, started, (before, loadavg())


atexit.register(stop_all)


@contextlib.contextmanager
def running_node(registry: Registry, name: str = "n1", **kwargs: Any) -> Iterator[Node]:
    node = Node(registry, name, **kwargs)
    try:
        node.start().wait_ready()
        yield node
    finally:
        node.stop()


def batch_set(node: Node, api_key: str, items: list[tuple[str, Any]], chunk: int = 1000) -> int:
    """Store ``(key, value)`` pairs through ``POST /api/v1/batch/set``; returns how many."""
    stored = 0
    with requests.Session() as s:
        s.headers["X-API-Key"] = api_key
        for i in range(0, len(items), chunk):
            body = {"items": [{"key": k, "value": v} for k, v in items[i : i + chunk]]}
            r = s.post(f"{node.url}/api/v1/batch/set", json=body, timeout=30)
            r.raise_for_status()
            data = r.json()
            if data.get("failed"):
                raise RuntimeError(f"batch set failed for {len(data['failed'])} keys")
            stored += data["stored"]
    return stored
