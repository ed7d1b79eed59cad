"""``bench/run.py --only memory``: what an entry costs in memory, a node against Redis.

Two parts, both measured on real servers fed over their own protocols:

1. **Bytes per entry** at ``--entries`` (1,000,000) entries of 10-byte keys, for JSON values of
   10, 100 and 1,000 bytes, and 100 bytes with a TTL: a node (``manage.py runnode``, a budget
   large enough that nothing is evicted) fed through ``POST /api/v1/batch/set``, and a private
   ``redis-server`` (no persistence) fed the same keys and bytes with pipelined ``SET``. The
   figure is the growth of the serving process's RSS divided by the entries (Redis's own
   ``used_memory`` growth is shown too). Target: the node within 1.5x Redis.
2. **The budget holds**: a node with ``CACHE_MAX_BYTES`` = ``--budget-mib`` (64) fed four
   budgets' worth of entries (at most ``--entries``) at every value size from 10 bytes to
   100 KB; its RSS growth over the idle node must stay within the budget.

Writes ``bench/results/memory.md`` and ``memory.png``.

    .venv/bin/python bench/run.py --only memory            # about 3 minutes
    .venv/bin/python bench/run.py --only memory --quick    # 100,000 entries
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import psutil
import requests
from redis_cluster import private_redis
from report import fmt, machine_facts, machine_table, publish, save_figure, shown, write_text
from servers import Node, Registry, free_port, run_measured, running_node

MIB = 2**20
KEY_WIDTH = 10  # "k" and nine digits, as in the issue that found the leak
PER_ENTRY_SIZES = (10, 100, 1000)
BUDGET_SIZES = (10, 100, 1000, 10_000, 100_000)
TTL = 3600
REDIS_TARGET = 1.5  # node RSS per entry / Redis RSS per entry, at most
BODY_BYTES = 1 * MIB  # a feeding batch stays about this large


@dataclass
class PerEntry:
    value_bytes: int
    ttl: bool
    entries: int
    node_rss: float  # bytes per entry
    redis_rss: float | None
    redis_used: float | None  # Redis's used_memory growth per entry

    @property
    def ratio(self) -> float | None:
        return self.node_rss / self.redis_rss if self.redis_rss else None


@dataclass
class Budget:
    value_bytes: int
    entries_sent: int
    items_kept: int
    charged_bytes: int  # the store's own count ("bytes" in /api/v1/stats)
    rss_growth: int
    budget: int

    @property
    def held(self) -> bool:
        return self.rss_growth <= self.budget


def json_value(size: int) -> bytes:
    """A JSON string whose text is ``size`` bytes."""
    return b'"' + b"x" * (size - 2) + b'"'


def keys(prefix: str, count: int) -> Iterator[str]:
    digits = KEY_WIDTH - len(prefix)
    return (f"{prefix}{i:0{digits}d}" for i in range(count))


def rss(process: psutil.Process) -> int:
    return process.memory_info().rss


def worker(node: Node) -> psutil.Process:
    """The gunicorn worker of a node: where the store lives."""
    procs = node.processes()
    return procs[-1] if len(procs) > 1 else procs[0]


def feed_node(node: Node, api_key: str, prefix: str, count: int, size: int, ttl: bool) -> None:
    value = json_value(size).decode()
    chunk = max(1, min(1000, BODY_BYTES // (size + 40)))
    with requests.Session() as s:
        s.headers.update({"X-API-Key": api_key, "Content-Type": "application/json"})
        batch: list[dict[str, object]] = []
        for key in keys(prefix, count):
            item: dict[str, object] = {"key": key, "value": value}
            if ttl:
                item["ttl"] = TTL
            batch.append(item)
            if len(batch) == chunk:
                _post(s, node, batch)
                batch = []
        if batch:
            _post(s, node, batch)


def _post(s: requests.Session, node: Node, batch: list[dict[str, object]]) -> None:
    r = s.post(f"{node.url}/api/v1/batch/set", data=orjson.dumps({"items": batch}), timeout=60)
    if r.status_code != 200 or r.json().get("failed"):
        raise RuntimeError(f"batch set answered {r.status_code}: {r.text[:300]}")


def node_stats(node: Node, api_key: str) -> dict[str, int]:
    r = requests.get(f"{node.url}/api/v1/stats", headers={"X-API-Key": api_key}, timeout=10)
    r.raise_for_status()
    return r.json()


def node_per_entry(registry: Registry, entries: int, size: int, ttl: bool) -> float:
    with running_node(registry, CACHE_MAX_BYTES=str(64 * 2**30)) as node:
        feed_node(node, registry.api_key, "w", 1000, size, ttl)  # warm: code paths, buffers
        proc = worker(node)
        before = rss(proc)
        feed_node(node, registry.api_key, "k", entries, size, ttl)
        kept = node_stats(node, registry.api_key)["items"]
        if kept < entries:
            raise RuntimeError(f"the node kept {kept} of {entries} entries")
        return (rss(proc) - before) / entries


def redis_per_entry(entries: int, size: int, ttl: bool) -> tuple[float, float]:
    import redis

    value = json_value(size)
    with private_redis() as start:
        port = free_port()
        proc = start(port)
        client = redis.Redis(port=port)
        ps = psutil.Process(proc.pid)
        _redis_feed(client, "w", 1000, value, ttl)
        before, used_before = rss(ps), client.info("memory")["used_memory"]
        _redis_feed(client, "k", entries, value, ttl)
        if client.dbsize() < entries:
            raise RuntimeError(f"Redis kept fewer than {entries} entries")
        after, used_after = rss(ps), client.info("memory")["used_memory"]
        client.close()
    return (after - before) / entries, (used_after - used_before) / entries


def _redis_feed(client: object, prefix: str, count: int, value: bytes, ttl: bool) -> None:
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for n, key in enumerate(keys(prefix, count), 1):
        pipe.set(key, value, ex=TTL if ttl else None)
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()


def budget_run(registry: Registry, budget: int, entries: int, size: int) -> Budget:
    sent = min(entries, 4 * budget // (KEY_WIDTH + size + 160))
    with running_node(registry, CACHE_MAX_BYTES=str(budget)) as node:
        feed_node(node, registry.api_key, "w", 100, size, False)
        proc = worker(node)
        before = rss(proc)
        feed_node(node, registry.api_key, "k", sent, size, False)
        stats = node_stats(node, registry.api_key)
        grown = rss(proc) - before
    return Budget(size, sent, stats["items"], stats["bytes"], grown, budget)


def run(args: argparse.Namespace) -> tuple[list[PerEntry], list[Budget]]:
    entries = args.entries or (100_000 if args.quick else 1_000_000)
    registry = Registry()
    per_entry: list[PerEntry] = []
    budgets: list[Budget] = []
    try:
        have_redis = shutil.which("redis-server") is not None and not args.no_redis
        for size, ttl in [*((s, False) for s in PER_ENTRY_SIZES), (100, True)]:
            what = f"{entries:,} entries of {size} B" + (" with a TTL" if ttl else "")
            print(f"memory: {what}", file=sys.stderr)
            node = node_per_entry(registry, entries, size, ttl)
            r_rss, r_used = redis_per_entry(entries, size, ttl) if have_redis else (None, None)
            per_entry.append(PerEntry(size, ttl, entries, node, r_rss, r_used))
        for size in BUDGET_SIZES:
            print(f"memory: budget {args.budget_mib} MiB, values of {size} B", file=sys.stderr)
            budgets.append(budget_run(registry, args.budget_mib * MIB, entries, size))
    finally:
        registry.remove()
    return per_entry, budgets


def report(
    per_entry: list[PerEntry],
    budgets: list[Budget],
    command: str,
    started: dt.datetime,
    load_before: str,
    load_after: str,
) -> str:
    lines = ["# Memory: bytes per entry, a node against Redis; the budget under load\n"]
    lines += machine_table(started, load_before, load_after)
    lines += ["", f"Command: `{command}`", ""]
    lines += [
        "## Bytes per entry\n",
        f"Growth of the serving process's RSS per entry, after {per_entry[0].entries:,} entries "
        f"with {KEY_WIDTH}-byte keys (each server warmed with 1,000 entries first). The node is "
        "one `runnode` (gevent) with a budget nothing reaches, fed through "
        "`POST /api/v1/batch/set`; Redis is a private `redis-server` (no persistence) fed the "
        "same keys and value bytes with pipelined `SET`.\n",
        "| value | node RSS B/entry | Redis RSS B/entry | Redis used_memory B/entry "
        f"| node / Redis | target <= {REDIS_TARGET:g}x |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in per_entry:
        label = f"{row.value_bytes} B JSON" + (f", TTL {TTL} s" if row.ttl else "")
        verdict = "-" if row.ratio is None else ("met" if row.ratio <= REDIS_TARGET else "not met")
        lines.append(
            f"| {label} | {fmt(row.node_rss)} | {fmt(row.redis_rss)} | {fmt(row.redis_used)} "
            f"| {fmt(row.ratio, '.2f')} | {verdict} |"
        )
    lines += [
        "",
        "## The budget holds\n",
        "A node with `CACHE_MAX_BYTES` at the budget, fed four budgets' worth of entries (by the "
        "store's own count: key, value and its per-entry bookkeeping) at each value size; "
        "RSS growth over the warmed, idle node.\n",
        "| value | entries sent | kept | store's count | RSS growth | budget | held |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for b in budgets:
        lines.append(
            f"| {b.value_bytes:,} B | {b.entries_sent:,} | {b.items_kept:,} "
            f"| {b.charged_bytes / MIB:,.1f} MiB | {b.rss_growth / MIB:,.1f} MiB "
            f"| {b.budget / MIB:,.0f} MiB | {'yes' if b.held else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def plot(per_entry: list[PerEntry], budgets: list[Budget], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [f"{r.value_bytes} B" + (" +TTL" if r.ttl else "") for r in per_entry]
    xs = range(len(per_entry))
    left.bar([x - 0.2 for x in xs], [r.node_rss for r in per_entry], 0.4, label="node")
    left.bar([x + 0.2 for x in xs], [r.redis_rss or 0 for r in per_entry], 0.4, label="Redis")
    left.set_xticks(list(xs), labels)
    left.set_ylabel("RSS bytes per entry")
    left.set_title(f"{per_entry[0].entries:,} entries, {KEY_WIDTH}-byte keys")
    left.legend()
    bx = range(len(budgets))
    right.bar(bx, [b.rss_growth / MIB for b in budgets], 0.6, label="RSS growth")
    if budgets:
        right.axhline(budgets[0].budget / MIB, color="red", linestyle="--", label="budget")
    right.set_xticks(list(bx), [f"{b.value_bytes:,} B" for b in budgets])
    right.set_ylabel("MiB")
    right.set_title("node fed 4x its budget")
    right.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(args: argparse.Namespace, command: str) -> int:
    measured = run_measured(lambda: run(args), "server")
    if measured is None:
        return 130
    (per_entry, budgets), started, (load_before, load_after) = measured
    publish(
        args.out,
        "memory",
        lambda png: plot(per_entry, budgets, png),
        lambda png: report(per_entry, budgets, command, started, load_before, load_after),
    )
    write_text(
        args.out / "memory.json",
        orjson.dumps(
            {
                "command": command,
                "date": started.isoformat(),
                **machine_facts(),
                "per_entry": [asdict(r) | {"ratio": r.ratio} for r in per_entry],
                "budget": [asdict(b) | {"held": b.held} for b in budgets],
            },
            option=orjson.OPT_INDENT_2,
        ).decode(),
    )
    print(f"wrote {shown(args.out / 'memory.md')}, memory.png, memory.json", file=sys.stderr)
    return 0 if all(b.held for b in budgets) else 1
