"""``bench/run.py --only backend``: the Django cache backend against Django's ``RedisCache``.

Four Django cache backends, driven the way a Django site drives its cache (method calls from
threads of one process), side by side in one run:

- ``ClusterCache`` on a 3-node cluster (``REPLICAS=2``), calls as frames on client streams;
- the same ``ClusterCache`` with ``OPTIONS["STREAMS"] = False`` (one HTTP request per call);
- Django's ``RedisCache`` (redis-py) on a private ``redis-server`` (no persistence);
- for reference, not a target: the same ``RedisCache`` on a second private redis-server with a
  replica, every write sent with ``WAIT 1`` in its own round trip, so that like the cluster
  (two copies, a write answered once both hold it) it acknowledges only copied writes.

Operations: ``get``, ``set``, ``get_many`` of 100 keys, ``set_many`` of 100 keys, ``incr``;
each from 1 and from 8 client threads for ``--duration`` seconds (after ``--warmup``). Reported:
ops/s, p50 and p99 latency, and server CPU per operation (the nodes' processes, or
redis-server). Targets (issue 15): get and set p50 within 2x RedisCache's; get_many(100)
keys/s at least 0.5x RedisCache's; server CPU per get over a stream at most 0.25x an HTTP
get's. The report adds the set and incr p50s against the replicated Redis, as reference lines.

Writes ``bench/results/backend.md`` and ``backend.png``.

    .venv/bin/python bench/run.py --only backend            # about 3 minutes
    .venv/bin/python bench/run.py --only backend --quick
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from redis_cluster import private_redis
from report import fmt, machine_table, publish, save_figure, shown
from servers import Node, Registry, free_port, run_measured

SIZE = 3
THREADS = (1, 8)
BATCH = 100
OPS = ("get", "set", "get_many", "set_many", "incr")
SYSTEMS = ("cluster (streams)", "cluster (HTTP)", "RedisCache", "RedisCache, replica, WAIT 1")
WAIT_MS = 1000  # how long a write waits for the Redis replica's acknowledgement, at most
P50_TARGET = 2.0  # cluster get/set p50 / RedisCache's, at most
MANY_TARGET = 0.5  # cluster get_many keys/s / RedisCache's, at least
CPU_TARGET = 0.25  # server CPU per stream get / per HTTP get, at most


@dataclass
class Row:
    system: str
    op: str
    threads: int
    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float

    @property
    def ops_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def keys_s(self) -> float:
        return self.ops_s * (BATCH if self.op.endswith("_many") else 1)

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.server_cpu_s / self.ops if self.ops else float("nan")


def _configure_django() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(USE_TZ=True, CACHES={}, SECRET_KEY="bench: signs the pickles")
        import django

        django.setup()


def drive(
    cache: Any, op: str, threads: int, seconds: float, warmup: float
) -> tuple[int, list[float]]:
    """Closed loop: ``threads`` threads call ``op`` for ``warmup + seconds``; the calls and
    latencies of the measured part."""
    keys = [f"b:{i}" for i in range(1000)]
    calls: dict[str, Callable[[int], Any]] = {
        "get": lambda i: cache.get(keys[i % 1000]),
        "set": lambda i: cache.set(keys[i % 1000], {"n": i, "s": "x" * 80}, 300),
        "get_many": lambda i: cache.get_many(keys[(i * 7) % 900 : (i * 7) % 900 + BATCH]),
        "set_many": lambda i: cache.set_many(
            dict.fromkeys(keys[i * 7 % 900 : i * 7 % 900 + BATCH], i), 300
        ),
        "incr": lambda i: cache.incr("b:counter"),
    }
    call = calls[op]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    def loop(slot: int) -> None:
        i = slot * 100_003
        mine = latencies[slot]
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            call(i)
            if began >= measure_from:
                mine.append(time.perf_counter() - began)
            i += 1

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    merged = sorted(x for part in latencies for x in part)
    return len(merged), merged


def _pct(values: list[float], q: float) -> float:
    return 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _waiting_redis_cache(location: str) -> Any:
    """Django's RedisCache whose writes are acknowledged by one replica, as the cluster's are
    by its second owner: each write and a ``WAIT 1`` go out in one pipeline (one round trip),
    so Redis pays what a synchronous copy costs it and nothing more (reference, not a target)."""
    from django.core.cache.backends.redis import RedisCache, RedisCacheClient

    class WaitingClient(RedisCacheClient):  # type: ignore[misc]
        def _waited(self, key: Any, write: Callable[[Any], Any]) -> Any:
            pipe = self.get_client(key, write=True).pipeline(transaction=False)
            write(pipe)
            pipe.execute_command("WAIT", 1, WAIT_MS)
            *results, copies = pipe.execute()
            if copies < 1:
                raise RuntimeError("the Redis replica did not acknowledge a write")
            return results[0]

        def set(self, key: Any, value: Any, timeout: Any) -> None:
            data = self._serializer.dumps(value)
            self._waited(
                key, lambda p: p.delete(key) if timeout == 0 else p.set(key, data, ex=timeout)
            )

        def incr(self, key: Any, delta: int) -> Any:
            if not self.get_client(key, write=True).exists(key):
                raise ValueError(f"Key '{key}' not found.")
            return self._waited(key, lambda p: p.incr(key, delta))

        def set_many(self, data: dict[Any, Any], timeout: Any) -> None:
            def write(p: Any) -> None:
                p.mset({k: self._serializer.dumps(v) for k, v in data.items()})
                if timeout is not None:
                    for key in data:
                        p.expire(key, timeout)

            self._waited(None, write)

    cache = RedisCache(location, {})
    cache._class = WaitingClient
    return cache


def _wait_replica_linked(port: int) -> None:
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis replica did not link to its primary")
        time.sleep(0.05)
    client.close()


@contextlib.contextmanager
def systems() -> Iterator[dict[str, tuple[Any, Callable[[], float]]]]:
    """The caches, each with a function giving its servers' CPU seconds so far."""
    _configure_django()
    from django.core.cache.backends.redis import RedisCache

    from cacheapi.backends import ClusterCache

    registry = Registry()
    nodes = [Node(registry, f"n{i}") for i in range(1, SIZE + 1)]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=60)
        with private_redis() as start_redis:
            port = free_port()
            redis_proc = psutil.Process(start_redis(port).pid)
            primary, replica = free_port(), free_port()
            waited = [psutil.Process(start_redis(primary).pid)]
            waited.append(
                psutil.Process(
                    start_redis(replica, False, "--replicaof", "127.0.0.1", str(primary)).pid
                )
            )
            _wait_replica_linked(replica)
            urls = [n.url for n in nodes]

            def nodes_cpu() -> float:
                return sum(n.cpu_seconds() for n in nodes)

            def redis_cpu() -> float:
                t = redis_proc.cpu_times()
                return t.user + t.system

            def waited_cpu() -> float:
                return sum(t.user + t.system for t in (p.cpu_times() for p in waited))

            options = {"API_KEY": registry.api_key}
            http_options = {**options, "STREAMS": False}
            yield {
                SYSTEMS[0]: (ClusterCache(urls, {"OPTIONS": options}), nodes_cpu),
                SYSTEMS[1]: (ClusterCache(urls, {"OPTIONS": http_options}), nodes_cpu),
                SYSTEMS[2]: (RedisCache(f"redis://127.0.0.1:{port}/0", {}), redis_cpu),
                SYSTEMS[3]: (_waiting_redis_cache(f"redis://127.0.0.1:{primary}/0"), waited_cpu),
            }
    finally:
        for node in nodes:
            node.stop()
        registry.remove()


def run(args: argparse.Namespace) -> list[Row]:
    seconds = 1.0 if args.quick else (args.duration or 3.0)
    warmup = 0.3 if args.quick else (args.warmup or 0.5)
    rows: list[Row] = []
    with systems() as caches:
        for cache, _ in caches.values():  # every key the loops read exists
            cache.set_many({f"b:{i}": i for i in range(1000)}, 300)
            cache.set("b:counter", 0, None)
        for op in OPS:
            for threads in THREADS:
                for name, (cache, cpu) in caches.items():  # taking turns, op by op
                    print(f"  {name} {op} x{threads} ...", file=sys.stderr, flush=True)
                    before = cpu()
                    count, lat = drive(cache, op, threads, seconds, warmup)
                    used = cpu() - before
                    share = seconds / (seconds + warmup)  # CPU of the measured part, about
                    p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
                    rows.append(Row(name, op, threads, count, seconds, p50, p99, used * share))
    return rows


def find(rows: list[Row], system: str, op: str, threads: int) -> Row | None:
    return next((r for r in rows if (r.system, r.op, r.threads) == (system, op, threads)), None)


def targets(rows: list[Row]) -> list[tuple[str, float | None, str, bool]]:
    out = []
    for op in ("get", "set"):
        for threads in THREADS:
            ours, redis = find(rows, SYSTEMS[0], op, threads), find(rows, SYSTEMS[2], op, threads)
            value = ours.p50_ms / redis.p50_ms if ours and redis and redis.p50_ms else None
            met = value is not None and value <= P50_TARGET
            out.append((f"{op} p50 / RedisCache, {threads} thread(s)", value, "<= 2", met))
    for threads in THREADS:
        ours = find(rows, SYSTEMS[0], "get_many", threads)
        redis = find(rows, SYSTEMS[2], "get_many", threads)
        value = ours.keys_s / redis.keys_s if ours and redis and redis.keys_s else None
        met = value is not None and value >= MANY_TARGET
        name = f"get_many(100) keys/s / RedisCache, {threads} thread(s)"
        out.append((name, value, f">= {MANY_TARGET}", met))
    for op in ("set", "incr"):
        for threads in THREADS:
            ours, redis = find(rows, SYSTEMS[0], op, threads), find(rows, SYSTEMS[3], op, threads)
            value = ours.p50_ms / redis.p50_ms if ours and redis and redis.p50_ms else None
            met = value is not None and value <= P50_TARGET
            name = f"reference: {op} p50 / {SYSTEMS[3]}, {threads} thread(s)"
            out.append((name, value, "<= 2", met))
    stream, http = find(rows, SYSTEMS[0], "get", 8), find(rows, SYSTEMS[1], "get", 8)
    value = stream.cpu_us / http.cpu_us if stream and http and http.cpu_us else None
    met = value is not None and value <= CPU_TARGET
    out.append(("server CPU per get, stream / HTTP (8 threads)", value, f"<= {CPU_TARGET}", met))
    return out


def report(
    rows: list[Row], command: str, started: dt.datetime, load: tuple[str, str], png: Path
) -> str:
    lines = [
        "# Django cache backend: ClusterCache against RedisCache",
        "",
        f"Command: `{command}`. A {SIZE}-node cluster (REPLICAS=2), a private redis-server, and "
        "for reference a private redis-server with a replica whose writes wait for it "
        f"(`WAIT 1` in the write's pipeline: `{SYSTEMS[3]}`), driven through Django cache "
        "backends from threads of one process (`bench/backend.py`).",
        "",
        *machine_table(started, load[0], load[1]),
        "",
        "| backend | op | threads | ops/s | keys/s | p50 ms | p99 ms | server CPU us/op |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.op} | {r.threads} | {fmt(r.ops_s)} | {fmt(r.keys_s)} | "
            f"{fmt(r.p50_ms, '.3f')} | {fmt(r.p99_ms, '.3f')} | {fmt(r.cpu_us, ',.0f')} |"
        )
    lines += ["", "| target | value | wanted | |", "|---|---:|---|---|"]
    for name, value, wanted, met in targets(rows):
        lines.append(f"| {name} | {fmt(value, '.2f')} | {wanted} | {'met' if met else 'NOT MET'} |")
    lines += ["", f"![backend]({shown(png)})", ""]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.2
    for ax, threads in zip(axes, THREADS, strict=True):
        for i, system in enumerate(SYSTEMS):
            found = [find(rows, system, op, threads) for op in OPS]
            values = [r.p50_ms if r is not None else 0.0 for r in found]
            ax.bar([x + i * width for x in range(len(OPS))], values, width, label=system)
        ax.set_xticks([x + 1.5 * width for x in range(len(OPS))], OPS)
        ax.set_ylabel("p50 latency, ms")
        ax.set_title(f"{threads} client thread(s)")
        ax.legend()
    save_figure(fig, path)


def main(args: argparse.Namespace, command: str) -> int:
    measured = run_measured(lambda: run(args), "server")
    if measured is None:
        return 130
    rows, started, loads = measured
    return publish(
        args.out,
        "backend",
        lambda png: plot(rows, png),
        lambda png: report(rows, command, started, loads, png),
    )
