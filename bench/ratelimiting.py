"""``bench/run.py --only ratelimit``: what the rate limiter costs a request, side by side.

A 3-node cluster (``CACHE_BENCH_ROUTES=1``) serves one trivial view over the store
(``/bench/plain/<key>``) and the same view limited in each way, at a rate nothing reaches, so
every request pays for its check (``cacheapi/api/bench_views.py``):

- ``@ratelimit`` with the ``local`` storage (this process), the ``cluster`` storage (the
  counter's owner, one of the three nodes) and ``cache:bench-redis`` (Django's RedisCache on a
  private redis-server);
- django-ratelimit's ``@ratelimit`` on the same Redis cache;
- DRF's ``ScopedRateThrottle`` on the same Redis cache, against the same view as a DRF
  ``APIView`` without a throttle.

Load goes to n1, rows taking turns; reported: requests/s, p50, p99 and the cluster's CPU per
request, and each limited row's overhead over its unlimited twin. Target (issue 16): at most
10% more CPU per request with the local storage. Then checks per second of each algorithm,
in-process on the local storage and through ``CacheClient.ratelimit`` (client streams) on the
cluster.

Writes ``bench/results/ratelimit.md`` and ``ratelimit.png``.

    .venv/bin/python bench/run.py --only ratelimit            # about 2 minutes
    .venv/bin/python bench/run.py --only ratelimit --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from load import HttpTarget, LoadResult, http_request, run_load
from redis_cluster import private_redis
from report import fmt, machine_table, publish, save_figure, shown
from servers import Node, Registry, free_port, run_measured

SIZE = 3
TARGET = 0.10  # local storage: CPU per request at most 10% above the plain view's
ROWS = [
    ("plain view", "/bench/plain/", None),
    ("@ratelimit, local storage", "/bench/limited/local/", "plain view"),
    ("@ratelimit, cluster storage", "/bench/limited/cluster/", "plain view"),
    ("@ratelimit, cache:redis storage", "/bench/limited/redis/", "plain view"),
    ("django-ratelimit, Redis cache", "/bench/limited/django-ratelimit/", "plain view"),
    ("DRF APIView", "/bench/plain-drf/", None),
    (
        "DRF APIView + ScopedRateThrottle, Redis cache",
        "/bench/limited/drf-throttle/",
        "DRF APIView",
    ),
]


@dataclass
class Row:
    name: str
    twin: str | None
    result: LoadResult

    @property
    def rps(self) -> float:
        return self.result.ops / self.result.duration if self.result.duration else 0.0

    @property
    def cpu_us(self) -> float:
        r = self.result
        return 1e6 * (r.server_cpu_s or 0.0) / r.ops if r.ops else float("nan")


def overhead(rows: list[Row], row: Row) -> float | None:
    twin = next((r for r in rows if r.name == row.twin), None)
    if twin is None or not twin.cpu_us:
        return None
    return row.cpu_us / twin.cpu_us - 1.0


def checks_per_second(seconds: float, urls: list[str], api_key: str) -> dict[str, dict[str, float]]:
    """Checks per second of each algorithm: in-process (local storage), and through the
    cluster (CacheClient.ratelimit over client streams, one thread)."""
    from cacheapi.client import CacheClient
    from ratelimit.rates import Rate
    from ratelimit.storages import LocalStorage

    out: dict[str, dict[str, float]] = {}
    client = CacheClient(urls, api_key=api_key)
    try:
        rate = Rate(100_000_000, 3600.0)
        for algorithm in ("fixed_window", "sliding_window", "token_bucket"):
            local = LocalStorage()
            calls: dict[str, Callable[[], object]] = {
                "local": functools.partial(local.check, "k", algorithm, rate),
                "cluster": functools.partial(
                    client.ratelimit, f"bench:{algorithm}", "100000000/h", algorithm
                ),
            }
            out[algorithm] = {}
            for name, call in calls.items():
                count, stop = 0, time.perf_counter() + seconds
                while time.perf_counter() < stop:
                    call()
                    count += 1
                out[algorithm][name] = count / seconds
    finally:
        client.close()
    return out


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, dict[str, float]]]:
    seconds = 1.0 if args.quick else (args.duration or 4.0)
    warmup = 0.3 if args.quick else (args.warmup or 0.5)
    rounds = max(1, args.rounds)
    with private_redis() as start_redis:
        port = free_port()
        start_redis(port)
        registry = Registry(
            CACHE_BENCH_ROUTES="1", CACHE_BENCH_REDIS_URL=f"redis://127.0.0.1:{port}/0"
        )
        nodes = [Node(registry, f"n{i}") for i in range(1, SIZE + 1)]
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_ready(timeout=60)

            def cpu() -> float:
                return sum(n.cpu_seconds() for n in nodes)

            n1 = nodes[0]
            host = f"127.0.0.1:{n1.port}"
            parts: dict[str, list[LoadResult]] = {}
            for _ in range(rounds):
                for name, prefix, _twin in ROWS:
                    print(f"  {name} ...", file=sys.stderr, flush=True)
                    requests = [http_request("GET", f"{prefix}k{i}", host=host) for i in range(200)]
                    target = HttpTarget(
                        [("127.0.0.1", n1.port)], requests, ok_status=frozenset({200, 404})
                    )
                    result = run_load(
                        target,
                        duration=seconds / rounds,
                        warmup=warmup,
                        procs=args.procs,
                        conns=args.conns,
                        server_cpu=cpu,
                    )
                    parts.setdefault(name, []).append(result)
            rows = [Row(name, twin, LoadResult.merge(parts[name])) for name, _, twin in ROWS]
            checks = checks_per_second(
                0.5 if args.quick else 2.0, [n.url for n in nodes], registry.api_key
            )
        finally:
            for node in nodes:
                node.stop()
            registry.remove()
    return rows, checks


def report(
    rows: list[Row],
    checks: dict[str, dict[str, float]],
    command: str,
    started: dt.datetime,
    load: tuple[str, str],
    png: Path,
) -> str:
    lines = [
        "# Rate limiter: cost per request, side by side",
        "",
        f"Command: `{command}`. A {SIZE}-node cluster, load on n1's bench views, rows taking "
        "turns (`bench/ratelimiting.py`); CPU is the three nodes' together.",
        "",
        *machine_table(started, load[0], load[1]),
        "",
        "| view | requests/s | p50 ms | p99 ms | cluster CPU us/request | overhead |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        extra = overhead(rows, r)
        lines.append(
            f"| {r.name} | {fmt(r.rps)} | {fmt(r.result.p50_ms, '.2f')} | "
            f"{fmt(r.result.p99_ms, '.2f')} | {fmt(r.cpu_us, ',.0f')} | "
            f"{'' if extra is None else f'{extra:+.0%}'} |"
        )
    local = next(r for r in rows if r.name.endswith("local storage"))
    value = overhead(rows, local)
    met = value is not None and value <= TARGET
    lines += [
        "",
        f"- Local storage: {'' if value is None else f'{value:+.1%}'} CPU per request over the "
        f"plain view (target <= +{TARGET:.0%}: {'met' if met else 'NOT MET'}).",
        "",
        "Checks per second, one thread:",
        "",
        "| algorithm | local (in-process) | cluster (CacheClient over streams) |",
        "|---|---:|---:|",
    ]
    for algorithm, by in checks.items():
        lines.append(f"| {algorithm} | {fmt(by['local'])} | {fmt(by['cluster'])} |")
    lines += ["", f"![ratelimit]({shown(png)})", ""]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh([r.name for r in rows], [r.cpu_us for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("cluster CPU per request, us")
    ax.set_title("Rate limiting: CPU per request")
    save_figure(fig, path)


def main(args: argparse.Namespace, command: str) -> int:
    measured = run_measured(lambda: run(args), "server")
    if measured is None:
        return 130
    (rows, checks), started, loads = measured
    return publish(
        args.out,
        "ratelimit",
        lambda png: plot(rows, png),
        lambda png: report(rows, checks, command, started, loads, png),
    )
