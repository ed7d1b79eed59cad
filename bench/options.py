"""The command-line options of ``bench/run.py`` (both benchmarks share them)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from dataset import BATCH_KEYS
from load import NOISY_PCT

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=None, help="measured seconds per row (5)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row (1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s rows, 2,000 keys")
    p.add_argument("--keys", type=int, default=None, help="preloaded keys (10000)")
    p.add_argument("--procs", type=int, default=2, help="load processes (2)")
    p.add_argument("--conns", type=int, default=4, help="connections per load process (4)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="compared rows (DRF / plain GET, worker classes) take turns in this many rounds "
        "of duration / rounds seconds (2)",
    )
    p.add_argument(
        "--pin", action="store_true", help="pin the node to CPU 0 and the load processes to CPU 1"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each row, wait up to this many seconds while other processes "
        f"use more than {NOISY_PCT:g}%% of a core (10)",
    )
    p.add_argument(
        "--quiet-wait-total",
        type=float,
        default=None,
        help="most seconds of such waiting in the whole run (30; --quick: 10)",
    )
    p.add_argument("--no-redis", action="store_true", help="skip the Redis rows")
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--redis-db", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--name", default="foundation", help="results file stem (foundation)")
    p.add_argument(
        "--only",
        choices=["foundation", "cluster", "memory", "replication", "backend", "ratelimit"],
        default=None,
        help="run only one benchmark: foundation, cluster, memory, replication, backend or "
        "ratelimit (default: all)",
    )
    p.add_argument(
        "--cluster-duration",
        type=float,
        default=None,
        help="cluster benchmark: measured seconds per item (N x path x op), split over "
        "--rounds (8; --quick: 1)",
    )
    p.add_argument(
        "--client-duration",
        type=float,
        default=None,
        help="cluster benchmark: seconds of each CacheClient sanity row (3; --quick: 1)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cluster benchmark: after the measured items, load three of them again with "
        "py-spy on every node and report where the CPU goes (default: on if py-spy is "
        "installed, off with --quick)",
    )
    p.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cluster benchmark: also measure the lone node at the per-node concurrency of the "
        "3-node smart client (GET, SET; on by default)",
    )
    p.add_argument(
        "--profile-duration",
        type=float,
        default=3.0,
        help="cluster benchmark: seconds of each profiled load (3)",
    )
    p.add_argument(
        "--entries",
        type=int,
        default=None,
        help="memory benchmark: entries per measurement (1000000; --quick: 100000)",
    )
    p.add_argument(
        "--budget-mib",
        type=int,
        default=64,
        help="memory benchmark: CACHE_MAX_BYTES of the node fed past its budget, MiB (64)",
    )
    a = p.parse_args(argv)
    a.duration = a.duration if a.duration is not None else (1.0 if a.quick else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.3 if a.quick else 1.0)
    a.keys = a.keys if a.keys is not None else (2000 if a.quick else 10_000)
    if a.cluster_duration is None:
        a.cluster_duration = 1.0 if a.quick else 8.0
    if a.client_duration is None:
        a.client_duration = 1.0 if a.quick else 3.0
    if a.profile is None:
        a.profile = not a.quick and (
            shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()
        )
    if a.quiet_wait_total is None:
        a.quiet_wait_total = 10.0 if a.quick else 30.0
    if a.redis_host not in ("127.0.0.1", "localhost", "::1"):
        p.error("--redis-host: loopback only")
    if a.cluster_duration <= 0 or a.client_duration <= 0:
        p.error("need --cluster-duration > 0 and --client-duration > 0")
    if min(a.procs, a.conns, a.rounds) < 1 or a.duration <= 0 or a.warmup < 0:
        p.error("need --duration > 0, --warmup >= 0 and --procs, --conns, --rounds >= 1")
    if (a.entries is not None and a.entries < 1000) or a.budget_mib < 1:
        p.error("need --entries >= 1000 and --budget-mib >= 1")
    if a.keys < BATCH_KEYS:
        p.error(f"--keys must be at least {BATCH_KEYS}")
    return a
