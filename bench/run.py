"""``make bench``: one node against bare Django and Redis, and gevent against gthread.

One run measures, with the same load generator (``bench/load.py``) for every row:

1. a real node (``manage.py runnode``, gevent) with its own registry, N preloaded keys;
2. single-key ``GET /api/v1/keys/{key}`` and ``PUT /api/v1/keys/{key}``;
3. the bare Django baseline (``bench/bare``: one ``JsonResponse`` view, no middleware, no apps)
   on the same gunicorn worker class and config, the same GET requests (ratio DRF / bare);
4. the full-stack plain view ``GET /bench/plain/{key}`` inside the node (for reference);
5. ``POST /api/v1/batch/get`` of 100 keys, in keys/s (against the bare app's requests/s);
6. Redis on 127.0.0.1:6379 through redis-py: GET, SET, MGET of 100 keys (skipped if absent);
7. the single GET (and plain GET, batch get) on nodes run with gthread 1 thread, gthread 4
   threads and gevent.

Items 1-5 take turns in ``--rounds`` rounds, so a burst of other work weighs on them alike.

Writes ``bench/results/foundation.md`` and ``bench/results/foundation.png``. Then the cluster
benchmark (``bench/cluster.py``: smart client vs forwarding on 1, 2 and 3 nodes) writes
``bench/results/cluster.md`` and ``cluster.png``; then the memory benchmark (``bench/memory.py``:
bytes per entry against Redis, and a node fed past its budget) writes ``memory.md`` and
``memory.png``.

    .venv/bin/python bench/run.py                     # all three (about 4 + 5 + 5 minutes)
    .venv/bin/python bench/run.py --only foundation   # the foundation benchmark only
    .venv/bin/python bench/run.py --only cluster      # the cluster benchmark only
    .venv/bin/python bench/run.py --only memory       # the memory benchmark only
    .venv/bin/python bench/run.py --only replication  # REPLICAS=1 against 2
    .venv/bin/python bench/run.py --only backend      # the Django backend against RedisCache
    .venv/bin/python bench/run.py --only ratelimit    # the rate limiter's cost per request
    .venv/bin/python bench/run.py --quick             # a smoke run of all three (about 5 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backend
import cluster
import memory
import orjson
import ratelimiting
import replication
import requests
from dataset import BATCH_KEYS, batches, make_dataset
from load import (
    NOISY_PCT,
    HttpTarget,
    LoadResult,
    RedisTarget,
    http_request,
    run_load,
    wait_for_quiet,
)
from options import parse_args
from report import (
    ROOT,
    command_line,
    fmt,
    machine_facts,
    machine_table,
    publish,
    save_figure,
    shown,
    write_bytes,
)
from servers import BareDjango, Node, Registry, batch_set, run_measured
from tqdm import tqdm

DRF_BARE_TARGET = 0.8  # node single GET ops/s / bare Django GET requests/s, at least
BATCH_BARE_TARGET = 60.0  # node batch-get keys/s / bare Django GET requests/s, at least
WORKER_CLASSES: list[tuple[str, int | None]] = [("gthread", 1), ("gthread", 4), ("gevent", None)]
PLAIN_SYSTEM = "plain view in the node (full middleware)"


# --------------------------------------------------------------------------- scenarios


@dataclass
class Row:
    section: str  # "node", "bare", "redis", "workers"
    name: str
    request: str
    system: str  # which server: "node (gevent)", "bare Django (gevent)", "Redis 7.x", ...
    result: LoadResult | None = None
    note: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[Row] = []
        self.data = make_dataset(args.keys)
        self.keys = [k for k, _ in self.data]
        self.key_batches = batches(self.keys, 500, BATCH_KEYS)
        self.bar: tqdm[Any] | None = None
        self.redis_version = ""
        self.waited = 0.0  # seconds spent waiting for other processes to calm down
        self.answer_bytes: dict[str, int] = {}  # row name -> body size of one answer

    # -- load ------------------------------------------------------------------------------
    def load(
        self,
        label: str,
        target: HttpTarget | RedisTarget,
        cpu: Callable[[], float],
        duration: float | None = None,
    ) -> LoadResult:
        a = self.args
        duration = duration or a.duration
        bar = self.bar
        base = bar.n if bar is not None else 0.0

        def progress(elapsed: float) -> None:
            if bar is not None:
                bar.n = round(base + max(0.0, elapsed), 1)
                bar.refresh()

        budget = a.quiet_wait_total - self.waited
        if budget > 0:
            if bar is not None:
                bar.set_description(f"{label} (waiting for a quiet machine)")
            waited, _ = wait_for_quiet(
                cpu, max_wait=min(a.quiet_wait, budget), threshold_pct=NOISY_PCT
            )
            self.waited += waited
        if bar is not None:
            bar.set_description(label)
        result = run_load(
            target,
            duration=duration,
            warmup=a.warmup,
            procs=a.procs,
            conns=a.conns,
            client_cpus=[1] if a.pin else None,
            server_cpu=cpu,
            progress=progress,
        )
        if bar is not None:
            bar.n = round(base + a.warmup + duration, 1)
            bar.set_postfix_str(f"{label}: {result.ops_per_s:,.0f} ops/s")
        return result

    def planned_seconds(self) -> float:
        a = self.args
        row = a.warmup + a.duration
        interleaved = a.rounds * a.warmup + a.duration  # one item run in --rounds rounds
        node = 5 * interleaved  # GET, bare GET, plain GET, SET, batch: taking turns
        return node + 3 * row + 3 * len(WORKER_CLASSES) * interleaved

    # -- a node ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def node(self, worker_class: str, threads: int | None) -> Iterator[tuple[Node, str]]:
        """A fresh registry and node (so no earlier node is in its ring), preloaded."""
        registry = Registry(CACHE_BENCH_ROUTES="1")
        node = Node(
            registry,
            "n1",
            worker_class=worker_class,
            threads=threads,
            cpu=0 if self.args.pin else None,
        )
        try:
            if self.bar is not None:
                self.bar.set_description(f"start {node.label}")
            node.start().wait_ready()
            stored = batch_set(node, registry.api_key, self.data)
            if stored != len(self.data):
                raise RuntimeError(f"preload stored {stored} of {len(self.data)} keys")
            yield node, registry.api_key
        finally:
            node.stop()
            registry.remove()

    @contextlib.contextmanager
    def bare(self) -> Iterator[BareDjango]:
        """The bare Django baseline, on the same gunicorn worker class as the node."""
        server = BareDjango(worker_class="gevent", cpu=0 if self.args.pin else None)
        try:
            if self.bar is not None:
                self.bar.set_description(f"start {server.label}")
            server.start().wait_ready()
            yield server
        finally:
            server.stop()

    def get_target(self, server: Node | BareDjango, api_key: str) -> HttpTarget:
        """``GET /api/v1/keys/{key}`` of every key, as the node's API and the bare app take it
        (the bare app ignores the API key header, but receives the same bytes)."""
        host = f"{server.host}:{server.port}"
        auth = {"X-API-Key": api_key}
        return HttpTarget(
            [(server.host, server.port)],
            [http_request("GET", f"/api/v1/keys/{k}", host=host, headers=auth) for k in self.keys],
        )

    def http_targets(self, node: Node, api_key: str) -> dict[str, HttpTarget]:
        host = f"{node.host}:{node.port}"
        ep = [(node.host, node.port)]
        auth = {"X-API-Key": api_key}
        json_auth = {**auth, "Content-Type": "application/json"}
        return {
            "get": self.get_target(node, api_key),
            "plain": HttpTarget(
                ep,
                [
                    http_request("GET", f"/bench/plain/{k}", host=host, headers=auth)
                    for k in self.keys
                ],
            ),
            "set": HttpTarget(
                ep,
                [
                    http_request(
                        "PUT",
                        f"/api/v1/keys/{k}",
                        host=host,
                        headers=json_auth,
                        body=orjson.dumps({"value": v}),
                    )
                    for k, v in self.data
                ],
            ),
            "batch": HttpTarget(
                ep,
                [
                    http_request(
                        "POST",
                        "/api/v1/batch/get",
                        host=host,
                        headers=json_auth,
                        body=orjson.dumps({"keys": b}),
                    )
                    for b in self.key_batches
                ],
                keys_per_op=BATCH_KEYS,
            ),
        }

    def run_node_section(self) -> None:
        """The node's rows and the bare Django baseline, taking turns in the same rounds."""
        with self.node("gevent", None) as (node, api_key), self.bare() as bare:
            t = self.http_targets(node, api_key)
            system = f"node ({node.label})"
            get = "GET /api/v1/keys/{key}"
            batch = f"batch get {BATCH_KEYS}"
            plan = [  # (row, progress label, target, server)
                (Row("node", "GET", get, system), "node GET", t["get"], node),
                (
                    Row("bare", "bare GET", get, bare.label),
                    f"{bare.label} GET",
                    self.get_target(bare, api_key),
                    bare,
                ),
                (
                    Row("node", "plain GET", "GET /bench/plain/{key}", PLAIN_SYSTEM),
                    "node plain GET",
                    t["plain"],
                    node,
                ),
                (Row("node", "SET", "PUT /api/v1/keys/{key}", system), "node SET", t["set"], node),
                (
                    Row("node", batch, "POST /api/v1/batch/get", system),
                    f"node {batch}",
                    t["batch"],
                    node,
                ),
            ]
            for row, _, _, server in plan[:3]:  # what one answer of each GET row weighs
                path = row.request.split()[1].replace("{key}", self.keys[0])
                answer = requests.get(server.url + path, headers={"X-API-Key": api_key}, timeout=5)
                answer.raise_for_status()
                self.answer_bytes[row.name] = len(answer.content)
            results = self.interleaved(
                [(label, target, server.cpu_seconds) for _, label, target, server in plan]
            )
            for (row, *_), result in zip(plan, results, strict=True):
                row.result = result
                self.rows.append(row)

    # -- Redis -----------------------------------------------------------------------------
    def run_redis_section(self) -> None:
        import redis

        host, port, db = self.args.redis_host, self.args.redis_port, self.args.redis_db
        client = redis.Redis(
            host=host, port=port, db=db, socket_connect_timeout=1, socket_timeout=5
        )
        requests_ = [
            ("GET", "GET key"),
            ("SET", "SET key value EX 3600"),
            (f"batch get {BATCH_KEYS}", f"MGET of {BATCH_KEYS} keys"),
        ]
        try:
            info = client.info("server")
            self.redis_version = str(info.get("redis_version", "?"))
        except (redis.RedisError, OSError) as exc:
            note = f"skipped: Redis did not answer on {host}:{port} ({type(exc).__name__})"
            for name, request in requests_:
                self.rows.append(Row("redis", name, request, "Redis", None, note))
            if self.bar is not None:
                self.bar.total -= 3 * (self.args.warmup + self.args.duration)
            return
        system = f"Redis {self.redis_version} (redis-py)"
        prefix = f"cachebench:{uuid.uuid4().hex[:8]}:"
        values = {k: orjson.dumps(v) for k, v in self.data}
        rkeys = [prefix + k for k in self.keys]

        def redis_cpu() -> float:
            cpu = client.info("cpu")
            return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

        try:
            if self.bar is not None:
                self.bar.set_description("Redis preload")
            pipe = client.pipeline(transaction=False)
            for k in self.keys:  # expiring keys: nothing stays behind even if the run dies
                pipe.set(prefix + k, values[k], ex=3600)
            pipe.execute()
            targets = {
                "GET": RedisTarget(host, port, [("GET", k) for k in rkeys], db=db),
                "SET": RedisTarget(
                    host,
                    port,
                    [("SET", prefix + k, values[k], "EX", 3600) for k in self.keys],
                    db=db,
                ),
                "MGET": RedisTarget(
                    host,
                    port,
                    [("MGET", *(prefix + k for k in b)) for b in self.key_batches],
                    keys_per_op=BATCH_KEYS,
                    db=db,
                ),
            }
            for (name, request), key in zip(requests_, targets, strict=True):
                result = self.load(f"Redis {name}", targets[key], redis_cpu)
                self.rows.append(Row("redis", name, request, system, result))
        finally:
            for i in range(0, len(rkeys), 1000):
                with contextlib.suppress(redis.RedisError, OSError):
                    client.delete(*rkeys[i : i + 1000])
            client.close()

    # -- worker classes --------------------------------------------------------------------
    def interleaved(
        self, plan: Sequence[tuple[str, HttpTarget | RedisTarget, Callable[[], float]]]
    ) -> list[LoadResult]:
        """Run every (label, target, cpu probe) of ``plan`` in ``--rounds`` alternating rounds of
        duration / rounds each and merge each item's rounds: a burst of other work on the
        machine then weighs on all the compared items alike."""
        rounds = self.args.rounds
        part = self.args.duration / rounds
        done: list[list[LoadResult]] = [[] for _ in plan]
        for i in range(rounds):
            for j, (label, target, cpu) in enumerate(plan):
                suffix = f" {i + 1}/{rounds}" if rounds > 1 else ""
                done[j].append(self.load(label + suffix, target, cpu, part))
        return [LoadResult.merge(results) for results in done]

    def run_worker_section(self) -> None:
        """The three worker classes run at once (idle nodes cost no CPU) and take turns."""
        scenarios = [
            ("GET", "GET /api/v1/keys/{key}", "get"),
            ("plain GET", "GET /bench/plain/{key}", "plain"),
            (f"batch get {BATCH_KEYS}", "POST /api/v1/batch/get", "batch"),
        ]
        with contextlib.ExitStack() as stack:
            started = [
                stack.enter_context(self.node(worker_class, threads))
                for worker_class, threads in WORKER_CLASSES
            ]
            plan = []
            for node, api_key in started:
                t = self.http_targets(node, api_key)
                for name, _, key in scenarios:
                    plan.append((f"{node.label} {name}", t[key], node.cpu_seconds))
            results = iter(self.interleaved(plan))
            for node, _ in started:
                for name, request, _ in scenarios:
                    self.rows.append(Row("workers", name, request, node.label, next(results)))

    def run(self) -> None:
        a = self.args
        total = self.planned_seconds()
        with tqdm(
            total=round(total, 1),
            unit="s",
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s load [{elapsed}<{remaining}]{postfix}",
        ) as bar:
            self.bar = bar
            self.run_node_section()
            if a.no_redis:
                for name, request in [
                    ("GET", "GET key"),
                    ("SET", "SET key value EX 3600"),
                    (f"batch get {BATCH_KEYS}", f"MGET of {BATCH_KEYS} keys"),
                ]:
                    self.rows.append(
                        Row("redis", name, request, "Redis", None, "skipped: --no-redis")
                    )
                bar.total -= 3 * (a.warmup + a.duration)
            else:
                self.run_redis_section()
            self.run_worker_section()
            bar.set_description("done")
            self.bar = None


# --------------------------------------------------------------------------- report


def find(rows: list[Row], section: str, name: str, system: str | None = None) -> LoadResult | None:
    for row in rows:
        if row.section == section and row.name == name and (system is None or row.system == system):
            return row.result
    return None


def row_number(rows: list[Row], section: str, name: str) -> str:
    """The report's row number of that row (1-based), for the target lines."""
    for i, row in enumerate(rows, 1):
        if row.section == section and row.name == name:
            return str(i)
    return "-"


def ratio(a: LoadResult | None, b: LoadResult | None, per: str = "ops") -> float | None:
    if a is None or b is None:
        return None
    x, y = (a.keys_per_s, b.keys_per_s) if per == "keys" else (a.ops_per_s, b.ops_per_s)
    return x / y if y else None


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "**met**" if value >= target else "**not met**"


def bottleneck(r: LoadResult) -> str:
    label = _bottleneck(r)
    if (r.other_cpu_pct or 0.0) >= NOISY_PCT and not label.startswith("other"):
        label += f" (noisy: other processes {r.other_cpu_pct:.0f}%)"
    return label


def _bottleneck(r: LoadResult) -> str:
    """Where the time went: the server's core, the client, other processes, or waiting."""
    server = r.server_cpu_pct or 0.0
    other = r.other_cpu_pct or 0.0
    cores = 100.0 * (os.cpu_count() or 1)
    if server >= 85:
        return "server CPU"
    if other >= 50:
        return "other processes"
    if r.client_cpu_pct >= 85 * r.procs:
        return "client CPU"
    if server + r.client_cpu_pct + other >= 0.8 * cores:
        side = "client" if r.client_cpu_pct > server else "server"
        return f"all cores busy ({side}-heavy)"
    return "server waits (not CPU-bound)"


# Where the target lines find their rows: key -> (section, row name).
ROW_OF = {
    "get": ("node", "GET"),
    "bare": ("bare", "bare GET"),
    "plain": ("node", "plain GET"),
    "batch": ("node", f"batch get {BATCH_KEYS}"),
    "redis_get": ("redis", "GET"),
    "redis_batch": ("redis", f"batch get {BATCH_KEYS}"),
}


@dataclass
class Targets:
    """The ratios the report checks (None where a row is missing)."""

    drf_bare: float | None  # node GET ops/s / bare Django GET requests/s (target)
    batch_bare: float | None  # node batch-get keys/s / bare Django GET requests/s (target)
    drf_plain: float | None  # node GET / the full-stack plain view (reference)
    plain_bare: float | None  # the full-stack plain view / bare Django (reference)
    batch_redis: float | None  # node batch-get keys/s / Redis MGET keys/s (scale)
    get_redis: float | None  # node GET / Redis GET (scale)


def targets(rows: list[Row]) -> Targets:
    r = {key: find(rows, *where) for key, where in ROW_OF.items()}
    bare, batch = r["bare"], r["batch"]
    return Targets(
        drf_bare=ratio(r["get"], bare),
        batch_bare=(
            batch.keys_per_s / bare.ops_per_s if batch and bare and bare.ops_per_s else None
        ),
        drf_plain=ratio(r["get"], r["plain"]),
        plain_bare=ratio(r["plain"], bare),
        batch_redis=ratio(batch, r["redis_batch"], "keys"),
        get_redis=ratio(r["get"], r["redis_get"]),
    )


def bare_paragraph(bench: Bench) -> str:
    """Exactly what the bare Django baseline is, for the report."""
    sizes = bench.answer_bytes
    size = ", ".join(f"{name} {n} bytes" for name, n in sizes.items()) or "not measured"
    return (
        "**The bare Django baseline** (`bench/bare`, row `bare GET`): Django with its own "
        "settings module (`bench.bare.settings`: no installed apps, `MIDDLEWARE = []`, no "
        "database, `DEBUG = False`) and one view on the node's own path "
        '`/api/v1/keys/<path:key>` that answers `JsonResponse({"key": key, "value": VALUE, '
        '"ttl": None})`, `VALUE` a constant dict shaped like the benchmark\'s values, rendered '
        "by the standard library's `json`; the view sets `Content-Length` itself (in the node, "
        "`CommonMiddleware` does). No store, no authentication, no validation. It is served by "
        "`python -m gunicorn -c cache_project/gunicorn_conf.py bench.bare.wsgi:application` "
        "with the environment `runnode` gives a node: the same worker class (gevent), one "
        "worker, the same keep-alive, timeouts, worker connections and log level; Django's "
        "`get_wsgi_application()` is the whole app (none of the node's WSGI wrappers or "
        "background tasks). It receives the same request bytes as the node's GET rows (the API "
        f"key header included, unread). One answer's body: {size}."
    )


def report(
    bench: Bench, command: str, started: dt.datetime, load_before: str, load_after: str
) -> str:
    a = bench.args
    rows = bench.rows
    out: list[str] = []
    w = out.append
    w("# Foundation benchmark: one node, bare Django, Redis, worker classes\n")
    w(f"Command: `{command}` (what `make bench` runs, from `{ROOT}`)\n")
    facts = machine_facts()
    redis_version = bench.redis_version or "not measured"
    redis_row = f"| Redis server | {redis_version} on {a.redis_host}:{a.redis_port} |"
    out += machine_table(started, load_before, load_after, [redis_row])
    w("")
    pin = (
        "node pinned to CPU 0 and load processes to CPU 1 (taskset / sched_setaffinity)"
        if a.pin
        else "no CPU pinning (the OS schedules node, Redis and load processes)"
    )
    w(
        f"Load: {a.procs} client processes x {a.conns} keep-alive connections each "
        f"({a.procs * a.conns} requests in flight), closed loop, {a.warmup:g} s warm-up then "
        f"{a.duration:g} s measured per row; random keys from {len(bench.keys):,} preloaded keys "
        f"with compact JSON values of about {avg_value_size(bench):.0f} bytes; batch rows ask for "
        f"{BATCH_KEYS} random distinct keys. Each node is one gunicorn worker process "
        f"with a fresh SQLite registry; {pin}. HTTP clients send pre-built request bytes on "
        "raw sockets and frame answers by Content-Length (no JSON decoding); the Redis rows use "
        "the same processes, connections and loop with one redis-py Connection per lane "
        "(commands packed and answers parsed by redis-py).\n"
    )
    w(bare_paragraph(bench) + "\n")
    w("## Results\n")
    w(
        "| # | scenario | request | server | ops/s | keys/s | p50 ms | mean ms | p99 ms | errors "
        "| server CPU | client CPU | other CPU | server CPU ms / 1k ops | limited by |"
    )
    w(
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |"
    )
    for i, row in enumerate(rows, 1):
        r = row.result
        if r is None:
            w(
                f"| {i} | {row.name} | `{row.request}` | {row.system} | {row.note} "
                "| | | | | | | | | | |"
            )
            continue
        per_1k = r.server_cpu_per_1k_ops
        w(
            f"| {i} | {row.name} | `{row.request}` | {row.system} | {fmt(r.ops_per_s)} "
            f"| {fmt(r.keys_per_s)} | {fmt(r.p50_ms, '.2f')} | {fmt(r.mean_ms, '.2f')} "
            f"| {fmt(r.p99_ms, '.2f')} | {r.errors} | {fmt(r.server_cpu_pct, '.0f')}% "
            f"| {fmt(r.client_cpu_pct, '.0f')}% | {fmt(r.other_cpu_pct, '.0f')}% "
            f"| {fmt(None if per_1k is None else per_1k * 1000, '.0f')} | {bottleneck(r)} |"
        )
    w("")
    w(
        "CPU columns are percent of one core over the measured window (the machine has "
        f"{facts['nproc']} cores = {100 * (os.cpu_count() or 1)}%): server = the node's gunicorn "
        "master + worker (psutil; the bare app's likewise) or Redis (`INFO cpu`); client = "
        f"the load processes' own CPU time, summed over the {a.procs} processes; other = "
        "everything else the machine ran (other people's tests, the OS), from `/proc/stat`. "
        "Limited by: server CPU when the server uses >= 85% of its core; client CPU when each "
        "load process uses >= 85% of a core; all cores busy when server + client + other >= "
        "80% of the machine; server waits when none is the case (the server is idle part of "
        f"the time although {a.procs * a.conns} requests are always outstanding)."
    )
    noisy = [
        str(i)
        for i, row in enumerate(rows, 1)
        if row.result is not None and (row.result.other_cpu_pct or 0.0) >= NOISY_PCT
    ]
    w(
        f"Before each row the run waited (at most {a.quiet_wait:g} s a row, "
        f"{a.quiet_wait_total:g} s in all) for other processes to use less than {NOISY_PCT:g}% "
        f"of a core; it waited {bench.waited:.0f} s in all. "
        + (
            f"Rows measured while other processes still used >= {NOISY_PCT:g}% of a core "
            f"(numbers there are low and unreliable): {', '.join(noisy)}."
            if noisy
            else "No row was disturbed by other processes."
        )
    )
    first_worker_row = 1 + sum(1 for r in rows if r.section != "workers")
    turns = sum(1 for r in rows if r.section in ("node", "bare"))
    w(
        f"Rows 1-{turns} (the node's rows and the bare Django app, both running side by side, "
        f"idle while the other is measured) take turns in {a.rounds} rounds of "
        f"{a.duration / a.rounds:g} s each (each with its own warm-up) and each row's rounds are "
        f"merged; so do the worker-class rows ({first_worker_row}-{len(rows)}), whose three "
        "nodes run side by side and take turns."
    )
    w("")

    t = targets(rows)
    n = {key: row_number(rows, *where) for key, where in ROW_OF.items()}
    w("## Targets\n")
    w("| check | measured | target | verdict |")
    w("| --- | ---: | ---: | --- |")
    w(
        f"| DRF GET ops/s / bare Django GET requests/s (rows {n['get']}, {n['bare']}) "
        f"| {fmt(t.drf_bare, '.2f')} | >= {DRF_BARE_TARGET:g} "
        f"| {verdict(t.drf_bare, DRF_BARE_TARGET)} |"
    )
    w(
        f"| node batch-get-{BATCH_KEYS} keys/s / bare Django GET requests/s "
        f"(rows {n['batch']}, {n['bare']}) | {fmt(t.batch_bare, '.1f')} "
        f"| >= {BATCH_BARE_TARGET:g} | {verdict(t.batch_bare, BATCH_BARE_TARGET)} |"
    )
    w(
        f"| DRF GET ops/s / full-stack plain view in the node (rows {n['get']}, {n['plain']}; "
        f"reference) | {fmt(t.drf_plain, '.2f')} | | |"
    )
    w(
        f"| full-stack plain view in the node / bare Django (rows {n['plain']}, {n['bare']}; "
        f"reference) | {fmt(t.plain_bare, '.2f')} | | |"
    )
    w(
        f"| node batch-get keys/s / Redis MGET-{BATCH_KEYS} keys/s (rows {n['batch']}, "
        f"{n['redis_batch']}; scale) | {fmt(t.batch_redis, '.2f')} | | |"
    )
    w(
        f"| node GET ops/s / Redis GET ops/s (rows {n['get']}, {n['redis_get']}; scale) "
        f"| {fmt(t.get_redis, '.3f')} | | |"
    )
    w("")
    w(
        "Both targets are held against the bare Django app measured in the same run, taking "
        "turns with the node's rows. The full-stack plain view (a plain Django view over the "
        "node's store, behind the node's whole middleware stack and WSGI wrappers) and Redis "
        "are shown for scale, without a target."
    )
    w("")

    w("## Worker class (same load; three nodes side by side, taking turns)\n")
    w(
        "| worker class | DRF GET ops/s | DRF GET p99 ms | plain GET ops/s | DRF / plain "
        f"| batch get {BATCH_KEYS} keys/s | DRF GET vs gevent |"
    )
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    batch_name = f"batch get {BATCH_KEYS}"
    labels = [r.system for r in rows if r.section == "workers" and r.name == "GET"]
    gevent_get = next(
        (find(rows, "workers", "GET", lab) for lab in labels if lab == "gevent"), None
    )
    for lab in labels:
        g = find(rows, "workers", "GET", lab)
        p = find(rows, "workers", "plain GET", lab)
        b = find(rows, "workers", batch_name, lab)
        w(
            f"| {lab} | {fmt(g and g.ops_per_s)} | {fmt(g and g.p99_ms, '.2f')} "
            f"| {fmt(p and p.ops_per_s)} | {fmt(ratio(g, p), '.2f')} | {fmt(b and b.keys_per_s)} "
            f"| {fmt(ratio(g, gevent_get), '.2f')} |"
        )
    w("")
    w("## Observations (computed from this run)\n")
    for line in observations(bench, t, gevent_get, labels):
        w(f"- {line}")
    w("")
    w("## Notes and limits\n")
    w(
        f"- The machine has {facts['nproc']} cores: the node (one worker process, so at most one "
        "core) and the load processes share them. The HTTP client costs a few percent of a core "
        "per 1,000 requests/s (see the client CPU column), so node rows measure the node. "
        "Redis serves a request in a few microseconds, so its rows are limited by this "
        "Python client (redis-py parsing) and by sharing the cores with it: they are a lower "
        "bound of what Redis can do, measured from the same client as the node's rows."
    )
    w(
        "- Latency is measured per request by the client (`time.perf_counter`, send to full "
        f"answer) under a closed loop with {a.procs * a.conns} requests in flight, so it includes "
        "queueing at a saturated server (mean ~ in-flight / throughput). p99 also shows how "
        "fairly the server shares itself between connections."
    )
    w("- Other processes on the machine (tests, editors) were not stopped; see the load average.")
    w("- Raw per-row data: `bench/results/foundation.json`.")
    return "\n".join(out) + "\n"


def avg_value_size(bench: Bench) -> float:
    return sum(len(orjson.dumps(v)) for _, v in bench.data) / max(1, len(bench.data))


def observations(
    bench: Bench, t: Targets, gevent_get: LoadResult | None, labels: list[str]
) -> list[str]:
    """Plain statements computed from the numbers (the human reading is in the report)."""
    rows = bench.rows
    lines = []
    quiet = [
        r.result
        for r in rows
        if r.section in ("node", "bare", "workers")
        and r.result
        and (r.result.other_cpu_pct or 0.0) < NOISY_PCT
    ]
    if quiet:
        saturated = [r for r in quiet if (r.server_cpu_pct or 0.0) >= 85]
        lines.append(
            f"Node and bare-Django rows on a quiet machine ({len(quiet)}): the server used "
            f"{min(r.server_cpu_pct or 0 for r in quiet):.0f}-"
            f"{max(r.server_cpu_pct or 0 for r in quiet):.0f}% of a core, the load processes "
            f"at most {max(r.client_cpu_pct for r in quiet):.0f}% together; {len(saturated)} of "
            f"them have the server's core saturated (the server, not the client, is the limit)."
        )
    for row in rows:
        r = row.result
        if row.section == "redis" and r is not None:
            lines.append(
                f"Redis {row.name}: Redis at {fmt(r.server_cpu_pct, '.0f')}% of a core, the "
                f"client at {r.client_cpu_pct:.0f}%, other processes at "
                f"{fmt(r.other_cpu_pct, '.0f')}%: "
                + (
                    "Redis is saturated."
                    if (r.server_cpu_pct or 0) >= 85
                    else "Redis is not saturated; the Python client (and the shared cores) "
                    "is the limit, so Redis can do more than shown."
                )
            )
    get, bare = find(rows, "node", "GET"), find(rows, "bare", "bare GET")
    plain, batch = find(rows, "node", "plain GET"), find(rows, "node", f"batch get {BATCH_KEYS}")
    if t.drf_bare is not None:
        lines.append(
            f"DRF GET reaches {t.drf_bare:.2f}x the bare Django app's requests/s "
            f"(target >= {DRF_BARE_TARGET:g}): {verdict(t.drf_bare, DRF_BARE_TARGET)}. "
            f"For reference, the full-stack plain view in the node reaches "
            f"{fmt(t.plain_bare, '.2f')}x the bare app, and DRF GET {fmt(t.drf_plain, '.2f')}x "
            "that plain view."
        )
    cpu = {
        name: r.server_cpu_per_1k_ops
        for name, r in (("DRF GET", get), ("plain view", plain), ("bare Django", bare))
        if r is not None and r.server_cpu_per_1k_ops is not None
    }
    if len(cpu) == 3 and cpu["bare Django"]:
        lines.append(
            "Server CPU per request (less sensitive to other processes than requests/s): "
            + ", ".join(f"{name} {1000 * v:.0f} µs" for name, v in cpu.items())
            + f"; the bare app's CPU / DRF GET's = {cpu['bare Django'] / cpu['DRF GET']:.2f}."
        )
    if t.batch_bare is not None and batch is not None and bare is not None:
        lines.append(
            f"Batch get of {BATCH_KEYS} keys: {batch.keys_per_s:,.0f} keys/s on the node = "
            f"{t.batch_bare:.1f}x the bare Django app's {bare.ops_per_s:,.0f} requests/s "
            f"(target >= {BATCH_BARE_TARGET:g}): {verdict(t.batch_bare, BATCH_BARE_TARGET)}."
        )
    if t.batch_redis is not None:
        m = find(rows, "redis", f"batch get {BATCH_KEYS}")
        assert m is not None
        lines.append(
            f"Redis MGET of {BATCH_KEYS} keys from the same client: {m.keys_per_s:,.0f} keys/s "
            f"(the node's batch get: {t.batch_redis:.2f}x that; no target)."
        )
    if gevent_get is not None and len(labels) > 1:
        got = {lab: find(rows, "workers", "GET", lab) or gevent_get for lab in labels}
        best = max(labels, key=lambda lab: got[lab].ops_per_s)
        rel = ", ".join(
            f"{ratio(gevent_get, got[lab]):.2f}x {lab}" for lab in labels if lab != "gevent"
        )
        lines.append(
            f"Worker class, DRF GET ops/s: gevent = {rel}; the fastest here is {best}. "
            "DESIGN.md's anchors (plain Django, wrk): gevent = 1.35x gthread/1 and 1.9x gthread/4."
        )
        tails = ", ".join(
            f"{lab} p50 {got[lab].p50_ms:.2f} / mean {got[lab].mean_ms:.2f} / "
            f"p99 {got[lab].p99_ms:.1f} ms"
            for lab in labels
        )
        lines.append(f"DRF GET latency by worker class: {tails}.")
    return lines


def plot(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bench.rows
    batch_name = f"batch get {BATCH_KEYS}"
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(
        f"Foundation benchmark ({bench.args.procs}x{bench.args.conns} connections, "
        f"{bench.args.duration:g} s per bar, {os.cpu_count()} cores)"
    )

    def bars(
        ax: Any,
        groups: list[str],
        series: dict[str, list[float | None]],
        ylabel: str,
        title: str,
        log: bool = False,
        fmt_spec: str = ",.0f",
    ) -> None:
        n = len(series)
        width = 0.8 / max(1, n)
        for i, (label, vals) in enumerate(series.items()):
            xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
            ys = [v if v is not None else 0 for v in vals]
            rects = ax.bar(xs, ys, width, label=label)
            for rect, v in zip(rects, vals, strict=True):
                if v is not None:
                    ax.annotate(
                        format(v, fmt_spec),
                        (rect.get_x() + rect.get_width() / 2, v),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        rotation=0,
                    )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    def val(section: str, name: str, attr: str) -> float | None:
        r = find(rows, section, name)
        return None if r is None else getattr(r, attr)

    def target_line(ax: Any, group: int, y: float | None, label: str) -> None:
        if y:
            ax.hlines(y, group - 0.45, group + 0.45, colors="red", linestyles="dashed", label=label)
            ax.legend(fontsize=8)

    groups = ["GET", "SET", f"batch {BATCH_KEYS}"]
    names = ["GET", "SET", batch_name]
    bare = find(rows, "bare", "bare GET")
    bare_label = next((r.system for r in rows if r.section == "bare"), "bare Django")
    for ax, attr, ylabel, title, spec in [
        (axes[0][0], "ops_per_s", "requests/s (log)", "Throughput: requests per second", ",.0f"),
        (axes[0][1], "p99_ms", "ms (log)", "p99 latency", ".2f"),
    ]:
        bars(
            ax,
            groups,
            {
                "node (DRF, gevent)": [val("node", n, attr) for n in names],
                bare_label: [val("bare", "bare GET", attr), None, None],
                PLAIN_SYSTEM: [val("node", "plain GET", attr), None, None],
                "Redis (redis-py)": [val("redis", n, attr) for n in names],
            },
            ylabel,
            title,
            log=True,
            fmt_spec=spec,
        )
    target_line(
        axes[0][0],
        0,
        None if bare is None else DRF_BARE_TARGET * bare.ops_per_s,
        f"target: {DRF_BARE_TARGET:g}x bare Django",
    )
    bars(
        axes[1][0],
        ["single GET", f"batch get / MGET {BATCH_KEYS}"],
        {
            "node": [val("node", "GET", "keys_per_s"), val("node", batch_name, "keys_per_s")],
            bare_label: [val("bare", "bare GET", "keys_per_s"), None],
            "Redis": [val("redis", "GET", "keys_per_s"), val("redis", batch_name, "keys_per_s")],
        },
        "keys/s (log)",
        "Keys per second",
        log=True,
    )
    target_line(
        axes[1][0],
        1,
        None if bare is None else BATCH_BARE_TARGET * bare.ops_per_s,
        f"target: {BATCH_BARE_TARGET:g}x bare Django requests/s",
    )
    labels = [r.system for r in rows if r.section == "workers" and r.name == "GET"]

    def wval(name: str, lab: str, attr: str) -> float | None:
        r = find(rows, "workers", name, lab)
        return None if r is None else getattr(r, attr)

    bars(
        axes[1][1],
        ["DRF GET", "plain GET", f"batch {BATCH_KEYS} (x100 keys)"],
        {
            lab: [
                wval("GET", lab, "ops_per_s"),
                wval("plain GET", lab, "ops_per_s"),
                wval(batch_name, lab, "ops_per_s"),
            ]
            for lab in labels
        },
        "requests/s",
        "Worker class: requests per second",
    )
    fig.tight_layout()
    save_figure(fig, path)


def write_json(bench: Bench, path: Path, meta: dict[str, Any]) -> None:
    rows = []
    for row in bench.rows:
        r = row.result
        item: dict[str, Any] = {
            "section": row.section,
            "scenario": row.name,
            "request": row.request,
            "server": row.system,
            "note": row.note,
        }
        if r is not None:
            item.update(
                ops=r.ops,
                errors=r.errors,
                duration_s=r.duration,
                ops_per_s=r.ops_per_s,
                keys_per_s=r.keys_per_s,
                p50_ms=r.p50_ms,
                mean_ms=r.mean_ms,
                p99_ms=r.p99_ms,
                server_cpu_s=r.server_cpu_s,
                client_cpu_s=r.client_cpu_s,
                machine_cpu_s=r.machine_cpu_s,
                other_cpu_pct=r.other_cpu_pct,
                server_cpu_per_1k_ops_s=r.server_cpu_per_1k_ops,
                procs=r.procs,
                conns=r.conns,
                error_samples=r.error_samples,
            )
        rows.append(item)
    write_bytes(path, orjson.dumps({**meta, "rows": rows}, option=orjson.OPT_INDENT_2))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    command = command_line("bench/run.py", sys.argv[1:] if argv is None else argv)
    rc = 0
    if args.only in (None, "foundation"):
        rc = run_foundation(args, command)
        if rc:
            return rc
    if args.only in (None, "cluster"):
        rc = cluster.main(args, command)
        if rc:
            return rc
    if args.only in (None, "memory"):
        rc = memory.main(args, command)
        if rc:
            return rc
    if args.only in (None, "replication"):
        rc = replication.main(args, command)
        if rc:
            return rc
    if args.only in (None, "backend"):
        rc = backend.main(args, command)
        if rc:
            return rc
    if args.only in (None, "ratelimit"):
        rc = ratelimiting.main(args, command)
    return rc


def run_foundation(args: argparse.Namespace, command: str) -> int:
    bench = Bench(args)
    measured = run_measured(bench.run, "node")
    if measured is None:
        return 130
    _, started, (load_before, load_after) = measured
    publish(
        args.out,
        args.name,
        lambda png: plot(bench, png),
        lambda png: report(bench, command, started, load_before, load_after),
    )
    write_json(
        bench,
        args.out / f"{args.name}.json",
        {
            "command": command,
            "date": started.isoformat(),
            **machine_facts(),
            "targets": {
                "drf_get_vs_bare_get": DRF_BARE_TARGET,
                "batch_keys_vs_bare_get": BATCH_BARE_TARGET,
            },
            "ratios": dataclasses.asdict(targets(bench.rows)),
            "answer_bytes": bench.answer_bytes,
        },
    )
    md = args.out / f"{args.name}.md"
    print(f"wrote {shown(md)}, {args.name}.png, {args.name}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
