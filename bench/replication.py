"""``bench/run.py --only replication``: what a second copy of every key costs.

Two 3-node clusters run side by side, one with ``REPLICAS=1`` and one with ``REPLICAS=2`` (the
default), each preloaded with ``--keys`` keys. Every row sends its load to one entry node (n1)
of one cluster, the same requests to both; the rows take turns in ``--rounds`` rounds so both
see the same machine. Rows: SET (a PUT per key: with two copies, n1 writes every key to two
owners, one of them often itself) and GET (read from the first owner: no extra cost expected).
Target: SET with REPLICAS=2 at least 0.7x the throughput of REPLICAS=1 (issue 14).

Writes ``bench/results/replication.md`` and ``replication.png``.

    .venv/bin/python bench/run.py --only replication            # about 2 minutes
    .venv/bin/python bench/run.py --only replication --quick
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from load import HttpTarget, LoadResult, http_request, run_load
from report import fmt, machine_table, publish, save_figure, shown
from servers import Node, Registry, batch_set, run_measured

TARGET = 0.7  # REPLICAS=2 SET throughput / REPLICAS=1, at least
SIZE = 3
OPS = ("SET", "GET")


@dataclass
class Row:
    replicas: int
    op: str
    result: LoadResult


class Setup:
    def __init__(self, replicas: int, keys: list[str]) -> None:
        self.replicas = replicas
        self.registry = Registry(CACHE_REPLICAS=str(replicas))
        self.nodes = [Node(self.registry, f"n{i}") for i in range(1, SIZE + 1)]
        self.keys = keys

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def ready(self) -> None:
        for node in self.nodes:
            node.wait_ready(timeout=60)
        items = [(k, i) for i, k in enumerate(self.keys)]
        stored = batch_set(self.nodes[0], self.registry.api_key, items)
        if stored != len(self.keys):
            raise RuntimeError(f"REPLICAS={self.replicas}: stored {stored} of {len(self.keys)}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.registry.remove()

    def copies(self) -> int:
        import requests

        total = 0
        for node in self.nodes:
            r = requests.get(
                f"{node.url}/api/v1/stats",
                headers={"X-API-Key": self.registry.api_key},
                timeout=10,
            )
            total += r.json()["items"]
        return total

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes)

    def target(self, op: str) -> HttpTarget:
        n1 = self.nodes[0]
        host = f"127.0.0.1:{n1.port}"
        auth = {"X-API-Key": self.registry.api_key}
        if op == "GET":
            reqs = [
                http_request("GET", f"/api/v1/keys/{k}", host=host, headers=auth) for k in self.keys
            ]
        else:
            headers = {**auth, "Content-Type": "application/json"}
            reqs = [
                http_request(
                    "PUT",
                    f"/api/v1/keys/{k}",
                    host=host,
                    headers=headers,
                    body=orjson.dumps({"value": i}),
                )
                for i, k in enumerate(self.keys)
            ]
        return HttpTarget([("127.0.0.1", n1.port)], reqs)


@contextlib.contextmanager
def running(keys: list[str]) -> Iterator[list[Setup]]:
    setups = [Setup(1, keys), Setup(2, keys)]
    try:
        for s in setups:
            s.start()
        for s in setups:
            s.ready()
        yield setups
    finally:
        for s in setups:
            s.stop()


def run(args: argparse.Namespace) -> tuple[list[Row], dict[int, int]]:
    count = 2000 if args.quick else (args.keys or 10_000)
    keys = [f"r:{i}" for i in range(count)]
    duration = 1.0 if args.quick else (args.duration or 5.0)
    warmup = 0.5 if args.quick else (args.warmup or 1.0)
    rounds = max(1, args.rounds)
    parts: dict[tuple[int, str], list[LoadResult]] = {}
    with running(keys) as setups:
        copies = {s.replicas: s.copies() for s in setups}
        for _ in range(rounds):
            for op in OPS:
                for s in setups:
                    print(f"  REPLICAS={s.replicas} {op} ...", file=sys.stderr, flush=True)
                    result = run_load(
                        s.target(op),
                        duration=duration / rounds,
                        warmup=warmup,
                        procs=args.procs,
                        conns=args.conns,
                        server_cpu=s.cpu_seconds,
                    )
                    parts.setdefault((s.replicas, op), []).append(result)
    rows = [Row(r, op, LoadResult.merge(results)) for (r, op), results in parts.items()]
    return rows, copies


def ratio(rows: list[Row], op: str) -> float | None:
    one = next((r.result for r in rows if r.replicas == 1 and r.op == op), None)
    two = next((r.result for r in rows if r.replicas == 2 and r.op == op), None)
    if one is None or two is None or not one.ops:
        return None
    return (two.ops / two.duration) / (one.ops / one.duration)


def report(
    rows: list[Row],
    copies: dict[int, int],
    command: str,
    started: dt.datetime,
    load: tuple[str, str],
    png: Path,
) -> str:
    lines = [
        "# Replication: REPLICAS=1 against REPLICAS=2",
        "",
        f"Command: `{command}`. Two {SIZE}-node clusters side by side, load sent to n1 of one "
        "at a time, rows taking turns (`bench/replication.py`).",
        "",
        *machine_table(started, load[0], load[1]),
        "",
        "| REPLICAS | op | ops/s | p50 ms | p99 ms | cluster CPU ms per op | errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.op != "SET", r.replicas)):
        res = r.result
        ops_s = res.ops / res.duration if res.duration else 0.0
        cpu = 1000 * res.server_cpu_s / res.ops if res.server_cpu_s and res.ops else None
        lines.append(
            f"| {r.replicas} | {r.op} | {fmt(ops_s)} | {fmt(res.p50_ms, '.2f')} | "
            f"{fmt(res.p99_ms, '.2f')} | {fmt(cpu, '.3f')} | {res.errors} |"
        )
    set_ratio, get_ratio = ratio(rows, "SET"), ratio(rows, "GET")
    met = set_ratio is not None and set_ratio >= TARGET
    lines += [
        "",
        f"Copies held after the preload: REPLICAS=1 {copies.get(1, 0):,}, "
        f"REPLICAS=2 {copies.get(2, 0):,}.",
        "",
        f"- SET throughput, REPLICAS=2 / REPLICAS=1: **{fmt(set_ratio, '.2f')}x** "
        f"(target >= {TARGET}x: {'met' if met else 'not met'}).",
        f"- GET throughput, REPLICAS=2 / REPLICAS=1: {fmt(get_ratio, '.2f')}x (reads go to one "
        "owner either way).",
        "",
        f"![replication]({shown(png)})",
        "",
    ]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.35
    for i, replicas in enumerate((1, 2)):
        values = []
        for op in OPS:
            res = next((r.result for r in rows if r.replicas == replicas and r.op == op), None)
            values.append(res.ops / res.duration if res and res.duration else 0.0)
        xs = [x + i * width for x in range(len(OPS))]
        ax.bar(xs, values, width, label=f"REPLICAS={replicas}")
    ax.set_xticks([x + width / 2 for x in range(len(OPS))], OPS)
    ax.set_ylabel("ops/s through n1")
    ax.set_title(f"{SIZE} nodes: one copy or two")
    ax.legend()
    save_figure(fig, path)


def main(args: argparse.Namespace, command: str) -> int:
    measured = run_measured(lambda: run(args), "node")
    if measured is None:
        return 130
    (rows, copies), started, loads = measured
    return publish(
        args.out,
        "replication",
        lambda png: plot(rows, png),
        lambda png: report(rows, copies, command, started, loads, png),
    )
