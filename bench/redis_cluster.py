"""A reference point for the cluster benchmark: the same 100-key batch on Redis.

One Redis answers a batch with one ``MGET``; a 3-node Redis Cluster cannot (the keys live in
different hash slots on different nodes), so its clients split the batch: redis-py's
``mget_nonatomic`` groups the keys by slot and sends one pipeline per node. Both are started
here as private ``redis-server`` processes on free ports (no persistence), loaded with the same
keys as the cluster benchmark, and measured by the servers' CPU per batch, like our nodes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from servers import free_port  # below the ephemeral range: the bus port (+10000) stays valid

VALUE = b"x" * 105  # about the size of the benchmark's JSON values


@dataclass
class Reference:
    version: str
    one_node_us: float  # server CPU per batch: one Redis, MGET
    cluster_us: float  # server CPU per batch: 3-node Redis Cluster, mget_nonatomic
    one_node_rate: float  # batches/s from this one Python client (for scale only)
    cluster_rate: float

    @property
    def ratio(self) -> float:
        return self.cluster_us / self.one_node_us


def missing() -> str | None:
    """Why the reference cannot run here, or None."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed"
    return None


def _cpu(procs: Sequence[subprocess.Popen[bytes]]) -> float:
    return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs)


@contextlib.contextmanager
def private_redis() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Yields ``start(port, cluster=False, *extra)``, which starts a private ``redis-server``
    on the loopback port (no persistence, its files in a temp directory, ``extra`` arguments
    after the rest) and returns once it answers PING; every server started is stopped, and the
    directory removed, on the way out."""
    import redis

    workdir = tempfile.mkdtemp(prefix="cache-bench-redis-")
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int, cluster: bool = False, *extra: str) -> subprocess.Popen[bytes]:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", workdir, *extra]
        if cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        log = Path(workdir) / f"redis-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port).ping()
                return proc
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline or proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server on {port} did not start:\n{tail}") from exc
                time.sleep(0.05)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def measure(keys: Sequence[str], batches: Sequence[Sequence[str]], seconds: float) -> Reference:
    import redis
    from redis.cluster import RedisCluster

    with private_redis() as start:
        one_port = free_port()
        one = start(one_port)
        ports = [free_port() for _ in range(3)]
        members = [start(p, cluster=True) for p in ports]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                ["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                capture_output=True,
                timeout=5,
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

        single = redis.Redis(host="127.0.0.1", port=one_port)
        cluster = RedisCluster(host="127.0.0.1", port=ports[0])
        for i in range(0, len(keys), 500):
            chunk = dict.fromkeys(keys[i : i + 500], VALUE)
            single.mset(chunk)
            cluster.mset_nonatomic(chunk)
        if cluster.mget_nonatomic(list(batches[0])) != [VALUE] * len(batches[0]):
            raise RuntimeError("the Redis Cluster did not return the values it was given")

        def run(fn: Callable[[list[str]], object], servers: list[subprocess.Popen[bytes]]):
            for batch in batches[:50]:  # warm-up
                fn(list(batch))
            cpu0, t0, n = _cpu(servers), time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                fn(list(batches[n % len(batches)]))
                n += 1
            elapsed = time.perf_counter() - t0
            return 1e6 * (_cpu(servers) - cpu0) / n, n / elapsed

        one_us, one_rate = run(single.mget, [one])
        cluster_us, cluster_rate = run(cluster.mget_nonatomic, members)
        version = single.info("server")["redis_version"]
        cluster.close()
        single.close()
        return Reference(version, one_us, cluster_us, one_rate, cluster_rate)
