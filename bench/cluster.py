"""The cluster benchmark: through the smart client vs through a fixed entry node (forwarding).

For N = 1, 2 and 3 nodes, each cluster a fresh SQLite registry with N ``manage.py runnode``
nodes (gevent) that register themselves, 10,000 preloaded ~100-byte JSON values, it measures
with the load generator of ``bench/load.py``:

- **smart client**: every single-key GET (``GET /api/v1/keys/{key}``) and SET
  (``PUT /api/v1/keys/{key}``) goes straight to the key's primary, computed here with
  ``nodes.ring.Ring.from_dict`` over the cluster's own ``/api/v1/cluster/ring`` (exactly what
  ``cacheapi.client.CacheClient`` does); a batch get of 100 keys goes as one request to the
  node ``cacheapi.client.batch_plan`` names (the client's own choice: the owner of most of the
  keys, which fetches the rest from the other owners over its peer streams);
- **split per owner (reference)**: the batch split per owner, the parts sent at once, one
  request per owner (``HttpFanoutTarget``), what the smart client did before it sent a batch
  to one node;
- **forwarding**: every request goes to n1, which forwards the keys it does not own to their
  owners and fans batches out in parallel.

The three clusters run side by side (an idle node costs nothing) and the 17 measured items
(N x path x op; with one node every path is the same requests) take turns in ``--rounds``
rounds, so a burst of other work on this 2-core machine weighs on all of them alike. The fair
measure of scaling on 2 cores is CPU cost: the sum of every node process's CPU seconds
(gunicorn master + worker, psutil) per 1,000 operations, per 1,000 keys and per 1,000 requests.

Writes ``bench/results/cluster.md``, ``cluster.png`` and ``cluster.json``. Run it with
``bench/run.py --only cluster`` (``make bench`` runs it after the foundation benchmark).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The project root after bench/, for nodes.ring and cacheapi.client (bench/ has no nodes.py).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import orjson
import psutil
import redis_cluster
import requests
from dataset import BATCH_KEYS, batches, make_dataset
from load import (
    NOISY_PCT,
    HttpFanoutTarget,
    HttpTarget,
    LoadResult,
    http_request,
    run_load,
    wait_for_quiet,
)
from options import parse_args
from report import (
    command_line,
    fmt,
    machine_facts,
    machine_table,
    publish,
    save_figure,
    shown,
    write_bytes,
)
from servers import Node, Registry, batch_set, run_measured
from tqdm import tqdm

from cacheapi.client import CacheClient, batch_plan
from cacheapi.values import client_decode
from nodes.ring import Ring

SIZES = (1, 2, 3)
OPS = ("GET", "SET", f"batch get {BATCH_KEYS}")
REQUEST = {
    "GET": "GET /api/v1/keys/{key}",
    "SET": "PUT /api/v1/keys/{key}",
    f"batch get {BATCH_KEYS}": "POST /api/v1/batch/get",
}
ACTION = {"GET": "retrieve", "SET": "update", f"batch get {BATCH_KEYS}": "get_many"}  # stats ops
SMART, FORWARD, ONE = "smart client", "forwarding via n1", "one node"
SPLIT = "split per owner (reference)"  # a smart batch sent as one request per owner
CONTROL = "one node, control"  # the lone node at the per-node concurrency of 3 smart nodes
# CPU per op on 3 nodes / on 1 node, at most; the smart client's single keys against CONTROL.
TARGETS = {SMART: 1.15, FORWARD: 1.3}  # issue 13: forwarded ops <= 1.3x one node
# The real client's rows (run_client): its GET, its batch, and that batch as one frame to n1.
CLIENT_CALLS = ("GET", f"get_many {BATCH_KEYS}", f"get_many {BATCH_KEYS} via n1")
BATCH_TARGET = 1.0  # smart batch CPU / forwarding batch CPU on 3 nodes, at most
SPOT = 50  # keys read back per path in the correctness checks

# The profiling pass (py-spy, after the measured items): a sample goes to the first category
# with a frame containing one of its markers, so nested work is counted where it belongs.
PROFILE_RULES: list[tuple[str, tuple[str, ...]]] = [
    (
        "outbound calls to peers (`PeerClient`, `Pending.result`: the HTTP client)",
        ("PeerClient.request (", "PeerClient.send (", "Pending.result ("),
    ),
    ("JSON decode (`values.loads`: digit-run regex + orjson)", ("loads (cacheapi/values.py",)),
    ("ring lookup (`primary`, `group_by_owner`)", ("Ring.group_by_owner (", "Ring.primary (")),
    ("store (`cacheapi/store/`)", ("(cacheapi/store/",)),
    ("internal calls served (`cacheapi.peer.server`, no Django)", ("InternalApp.__call__ (",)),
    ("DRF + views (auth, parsing, negotiation, rendering)", ("APIView.dispatch (",)),
    ("Django (middleware, URL resolving, signals)", ("WSGIHandler.__call__ (",)),
    ("gunicorn (HTTP parsing, writing answers)", ("AsyncWorker.handle (",)),
]
PROFILE_OTHER = "gevent hub, sockets, other"


# --------------------------------------------------------------------------- a cluster


class CpuProbe:
    """The cluster's node CPU seconds (sum), remembering each node's value and the nodes'
    context switches at every call, so that the window's per-node split is known (run_load
    calls it at the window's two edges)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.samples: list[list[float]] = []
        self.switches: list[tuple[int, int]] = []  # (voluntary, involuntary), all nodes

    def __call__(self) -> float:
        per_node = [n.cpu_seconds() for n in self.nodes]
        vol = invol = 0
        for node in self.nodes:
            for proc in node.processes():
                with contextlib.suppress(psutil.Error):
                    cs = proc.num_ctx_switches()
                    vol += cs.voluntary
                    invol += cs.involuntary
        self.samples.append(per_node)
        self.switches.append((vol, invol))
        return sum(per_node)

    def window(self) -> list[float]:
        a, b = self.samples[-2], self.samples[-1]
        return [y - x for x, y in zip(a, b, strict=True)]

    def window_switches(self) -> tuple[int, int]:
        (v0, i0), (v1, i1) = self.switches[-2], self.switches[-1]
        return v1 - v0, i1 - i0


@dataclass
class Cluster:
    size: int
    registry: Registry
    nodes: list[Node]
    ring: Ring | None = None
    ring_doc: dict[str, Any] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)  # ring node name -> endpoint index

    @property
    def api_key(self) -> str:
        return self.registry.api_key

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes)

    def owner(self, key: str) -> int:
        assert self.ring is not None
        primary = self.ring.primary(key)
        assert primary is not None
        return self.index[primary.name]

    def get_json(self, node: Node, path: str) -> Any:
        r = requests.get(node.url + path, headers={"X-API-Key": self.api_key}, timeout=5)
        r.raise_for_status()
        return r.json()

    def stats(self) -> list[dict[str, Any]]:
        return [self.get_json(n, "/api/v1/stats") for n in self.nodes]

    def counters(self, action: str) -> tuple[list[int], list[int]]:
        """Per node: forwards made, and client requests of ``action`` served (internal calls
        are counted apart, as ``internal_<op>``)."""
        st = self.stats()
        return [s["forwards"] for s in st], [s["ops"].get(action, 0) for s in st]

    def wait_ring(self, timeout: float = 45.0) -> None:
        """Until every node serves a ring of all N nodes, up, with one version; then build it."""
        names = {n.name: n.url for n in self.nodes}
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                docs = [self.get_json(n, "/api/v1/cluster/ring") for n in self.nodes]
            except requests.RequestException as exc:
                last = exc
                time.sleep(0.2)
                continue
            last = docs
            versions = {d["version"] for d in docs}
            good = all(
                {m["name"]: m["url"] for m in d["nodes"]} == names
                and all(m["status"] == "up" for m in d["nodes"])
                for d in docs
            )
            if good and len(versions) == 1:
                self.ring_doc = docs[0]
                self.ring = Ring.from_dict(docs[0])
                self.index = {n.name: i for i, n in enumerate(self.nodes)}
                if len(self.ring) != self.size:
                    raise RuntimeError(f"ring has {len(self.ring)} members, expected {self.size}")
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.size}-node ring did not converge in {timeout:g}s: {last}")


# --------------------------------------------------------------------------- measured items


@dataclass
class Item:
    size: int
    path: str  # SMART, SPLIT, FORWARD, ONE or CONTROL
    op: str
    target: HttpTarget | HttpFanoutTarget
    cluster: Cluster
    procs: int | None = None  # load processes and connections, if not the run's
    conns: int | None = None
    rounds: list[LoadResult] = field(default_factory=list)
    node_cpu: list[float] = field(default_factory=list)  # per node, summed over the windows
    forwards: list[int] = field(default_factory=list)  # per node, over warm-ups and windows
    served: list[int] = field(default_factory=list)  # per node, requests of this action
    switches: tuple[int, int] = (0, 0)  # the nodes' (voluntary, involuntary), in the windows
    expected_forwards: float = 0.0  # from the ring, per client request

    @property
    def label(self) -> str:
        return f"N={self.size} {self.path} {self.op}"

    @property
    def path_label(self) -> str:
        if self.path == CONTROL and self.procs and self.conns:
            return f"{CONTROL}: {self.procs * self.conns} in flight"
        return self.path

    @property
    def result(self) -> LoadResult:
        return LoadResult.merge(self.rounds)

    @property
    def client_requests(self) -> int:
        """Requests the load generator sent, counted by the nodes (internal calls are counted
        under their own names, so every served request of this action is a client's)."""
        return sum(self.served)

    def round_cpu(self) -> list[float]:
        """CPU ms per 1,000 ops (per 1,000 keys x 100 for batches) of each round."""
        return [1e6 * r.server_cpu_s / r.ops for r in self.rounds if r.ops and r.server_cpu_s]

    def switches_per_op(self) -> tuple[float, float]:
        ops = self.result.ops
        return (self.switches[0] / ops, self.switches[1] / ops) if ops else (0.0, 0.0)

    @property
    def forwards_per_request(self) -> float | None:
        n = self.client_requests
        return sum(self.forwards) / n if n > 0 else None


@dataclass
class ClientRow:
    """The real Python client (cacheapi.client.CacheClient) from this one process."""

    name: str
    ops: int
    keys_per_op: int
    duration: float
    latencies: list[float]
    client_cpu_s: float
    server_cpu_s: float
    forwards: int
    wrong: int

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.duration if self.duration else 0.0

    def pct(self, q: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("nan")
        return 1000 * values[min(len(values) - 1, round(q * (len(values) - 1)))]


@dataclass
class Check:
    size: int
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Profile:
    """py-spy samples of every node of a cluster during one load, sorted into categories."""

    label: str
    item: Item
    ops: int
    node_cpu: list[float]  # per node, in the window
    shares: list[dict[str, float]]  # per node: category -> share of that node's samples
    samples: list[int]

    def ms_per_1k(self, nodes: list[int], category: str) -> float:
        """CPU ms per 1,000 client ops that ``nodes`` spent in ``category`` (approximate)."""
        if not self.ops:
            return 0.0
        return sum(
            1e6 * self.node_cpu[i] * self.shares[i].get(category, 0.0) / self.ops for i in nodes
        )


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def categorize(raw: Path) -> tuple[dict[str, float], int]:
    """py-spy ``--format raw`` (one ``frame;frame;... count`` line per stack) -> shares."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    text = raw.read_text(errors="replace") if raw.exists() else ""
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        for name, markers in PROFILE_RULES:
            if any(m in stack for m in markers):
                counts[name] += int(n)
                break
        else:
            counts[PROFILE_OTHER] += int(n)
    return ({k: v / total for k, v in counts.items()} if total else {}), total


class ClusterBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = make_dataset(args.keys)
        self.keys = [k for k, _ in self.data]
        self.expected = dict(self.data)
        self.key_batches = batches(self.keys, 500, BATCH_KEYS)
        self.clusters: list[Cluster] = []
        self.items: list[Item] = []
        self.client_rows: list[ClientRow] = []
        self.checks: list[Check] = []
        self.profiles: list[Profile] = []
        self.redis_ref: redis_cluster.Reference | None = None
        self.redis_note = ""
        self.profile_note = ""
        self.bar: tqdm[Any] | None = None
        self.waited = 0.0
        self.setup_s = 0.0

    # -- clusters --------------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Start the 1-, 2- and 3-node clusters (all nodes at once), stop them on the way out."""
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            for size in SIZES:
                # One copy per key: this measures forwarding (replication: --only replication).
                registry = Registry(CACHE_REPLICAS="1")
                stack.callback(registry.remove)
                nodes = [Node(registry, f"n{i}") for i in range(1, size + 1)]
                for node in nodes:
                    stack.callback(node.stop)  # stop() is safe on a node that never started
                self.clusters.append(Cluster(size, registry, nodes))
            # Runs first on the way out: every node gets SIGINT at once, so that the stop()
            # calls above wait for their graceful shutdowns in parallel, not one after another.
            stack.callback(self._terminate_all)
            self._describe("start nodes")
            for c in self.clusters:
                for node in c.nodes:
                    node.start()
            for c in self.clusters:
                for node in c.nodes:
                    node.wait_ready(timeout=60)
            for c in self.clusters:
                self._describe(f"N={c.size}: wait for the ring")
                c.wait_ring()
                self._describe(f"N={c.size}: preload {len(self.data):,} keys via n1")
                stored = batch_set(c.nodes[0], c.api_key, self.data)
                if stored != len(self.data):
                    raise RuntimeError(f"N={c.size}: preload stored {stored} of {len(self.data)}")
                self._describe(f"N={c.size}: correctness checks")
                self.verify(c)
            self.setup_s = time.perf_counter() - started
            yield

    def _terminate_all(self) -> None:
        for c in self.clusters:
            for node in c.nodes:
                if node.proc is not None and node.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(node.proc.pid, signal.SIGINT)  # quick stop, no hand-off

    def _describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    # -- correctness -------------------------------------------------------------------------
    def check(self, c: Cluster, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(c.size, what, bool(ok), detail))

    def verify(self, c: Cluster, final: bool = False) -> None:
        """Placement, values read back on both paths, and exact forward counts."""
        assert c.ring is not None
        rng = random.Random(1000 + c.size + (7 if final else 0))
        s = requests.Session()
        s.headers["X-API-Key"] = c.api_key
        n1 = c.nodes[0]
        owned = collections.Counter(c.owner(k) for k in self.keys)
        items = [st["items"] for st in c.stats()]
        self.check(
            c,
            ("after the load: " if final else "")
            + "every node holds exactly the keys the benchmark's ring gives it",
            items == [owned[i] for i in range(c.size)],
            f"items per node {items}, ring says {[owned[i] for i in range(c.size)]}",
        )
        if final:
            bad_lines = [
                f"{node.name}: {line.strip()[:160]}"
                for node in c.nodes
                for line in node.log().splitlines()
                if any(w in line for w in ("Traceback", "ERROR", "WARNING", "CRITICAL"))
            ]
            self.check(
                c,
                "after the load: no error or warning in any node's log",
                not bad_lines,
                f"{len(bad_lines)} lines" + (f", first: `{bad_lines[0]}`" if bad_lines else ""),
            )
            sample = rng.sample(self.keys, SPOT)
            bad = 0
            for k in sample:
                r = s.get(f"{c.nodes[c.owner(k)].url}/api/v1/keys/{k}", timeout=5)
                bad += r.status_code != 200 or r.json()["value"] != self.expected[k]
            self.check(
                c, f"after the load: {SPOT} values read back from their owners", bad == 0, f"{bad}"
            )
            s.close()
            return

        def forwards() -> int:
            return sum(st["forwards"] for st in c.stats())

        sample = rng.sample(self.keys, SPOT)
        remote = sum(c.owner(k) != 0 for k in sample)
        for via_owner in (True, False):
            if c.size == 1 and not via_owner:
                continue
            f0 = forwards()
            bad_status = bad_value = 0
            for k in sample:
                node = c.nodes[c.owner(k)] if via_owner else n1
                r = s.get(f"{node.url}/api/v1/keys/{k}", timeout=5)
                bad_status += r.status_code != 200
                bad_value += r.status_code == 200 and r.json()["value"] != self.expected[k]
            # SET the same value back (so the data set stays as preloaded), then read it again.
            for k in sample[:10]:
                node = c.nodes[c.owner(k)] if via_owner else n1
                r = s.put(
                    f"{node.url}/api/v1/keys/{k}", json={"value": self.expected[k]}, timeout=5
                )
                bad_status += r.status_code != 200
                r = s.get(f"{c.nodes[c.owner(k)].url}/api/v1/keys/{k}", timeout=5)
                bad_value += r.status_code != 200 or r.json()["value"] != self.expected[k]
            want = (0 if via_owner else remote) + (
                0 if via_owner else sum(c.owner(k) != 0 for k in sample[:10])
            )
            got = forwards() - f0
            name = "via the owners (smart)" if via_owner else "via n1"
            if c.size == 1:
                name = "on the one node"
            self.check(
                c,
                f"{SPOT} GETs + 10 SETs {name}: all 200, values right",
                bad_status == 0 and bad_value == 0,
                f"non-200: {bad_status}, wrong values: {bad_value}",
            )
            self.check(
                c,
                f"forwards counted by the nodes for those requests {name} = {want}",
                got == want,
                f"counted {got}",
            )
            # One batch of 100: to the client's coordinator, split per owner, or whole via n1.
            batch = self.key_batches[0]
            groups = c.ring.group_by_owner(batch)  # type: ignore[union-attr]
            if via_owner:
                plan = [(node.name, part) for node, part in batch_plan(c.ring, batch)]
                ways = [(f"{name}, one request to the majority owner", plan)]
                if c.size > 1:  # on one node the split is the same single request
                    ways.append((f"{name}, {SPLIT}", list(groups.items())))
            else:
                ways = [(name, [(n1.name, batch)])]
            for way, parts in ways:
                f0 = forwards()
                found: dict[str, Any] = {}
                problems = 0
                for node_name, group in parts:
                    node = c.nodes[c.index[node_name]]
                    r = s.post(f"{node.url}/api/v1/batch/get", json={"keys": group}, timeout=10)
                    if r.status_code != 200:
                        problems += 1
                        continue
                    body = r.json()
                    problems += len(body["missing"]) + len(body["failed"])
                    found.update(body["values"])
                wrong = sum(found.get(k) != self.expected[k] for k in batch)
                got = forwards() - f0
                # A node asked for keys it does not own calls each of their owners once.
                want = sum(
                    owner != node_name
                    for node_name, group in parts
                    for owner in c.ring.group_by_owner(group)
                )
                self.check(
                    c,
                    f"batch get of {BATCH_KEYS} keys {way} ({len(parts)} request(s)): "
                    f"all found and right; forwards = {want}",
                    problems == 0 and wrong == 0 and got == want,
                    f"missing/failed/non-200: {problems}, wrong: {wrong}, forwards counted {got}",
                )
        s.close()

    # -- targets -----------------------------------------------------------------------------
    def build_items(self) -> None:
        json_headers = {"Content-Type": "application/json"}
        for c in self.clusters:
            assert c.ring is not None
            auth = {"X-API-Key": c.api_key}
            hosts = [f"{h}:{p}" for h, p in c.endpoints]
            owner = {k: c.owner(k) for k in self.keys}
            remote_share = sum(owner[k] != 0 for k in self.keys) / len(self.keys)

            def get(
                k: str, ep: int, auth: dict[str, str] = auth, hosts: list[str] = hosts
            ) -> bytes:
                return http_request("GET", f"/api/v1/keys/{k}", host=hosts[ep], headers=auth)

            def put(
                k: str, v: Any, ep: int, auth: dict[str, str] = auth, hosts: list[str] = hosts
            ) -> bytes:
                return http_request(
                    "PUT",
                    f"/api/v1/keys/{k}",
                    host=hosts[ep],
                    headers={**auth, **json_headers},
                    body=orjson.dumps({"value": v}),
                )

            def bget(
                keys: list[str], ep: int, auth: dict[str, str] = auth, hosts: list[str] = hosts
            ) -> bytes:
                return http_request(
                    "POST",
                    "/api/v1/batch/get",
                    host=hosts[ep],
                    headers={**auth, **json_headers},
                    body=orjson.dumps({"keys": keys}),
                )

            n1 = [c.endpoints[0]]
            fwd = {
                "GET": HttpTarget(n1, [get(k, 0) for k in self.keys]),
                "SET": HttpTarget(n1, [put(k, v, 0) for k, v in self.data]),
                OPS[2]: HttpTarget(
                    n1, [bget(b, 0) for b in self.key_batches], keys_per_op=BATCH_KEYS
                ),
            }
            # Per batch, the other owners that n1 (forwarding) or the client's coordinator
            # (smart) calls: one forward each.
            fwd_calls, smart_calls = [], []
            plan_ops, fanout_ops = [], []
            for b in self.key_batches:
                groups = c.ring.group_by_owner(b)
                fwd_calls.append(sum(1 for name in groups if c.index[name] != 0))
                plan = batch_plan(c.ring, b)
                if len(plan) != 1:
                    raise RuntimeError(f"CacheClient would send {len(plan)} requests per batch")
                (node, part) = plan[0]
                smart_calls.append(sum(1 for name in groups if name != node.name))
                plan_ops.append((c.index[node.name], bget(part, c.index[node.name])))
                fanout_ops.append(
                    [(c.index[name], bget(g, c.index[name])) for name, g in groups.items()]
                )
            smart = {
                "GET": HttpTarget(c.endpoints, [(owner[k], get(k, owner[k])) for k in self.keys]),
                "SET": HttpTarget(
                    c.endpoints, [(owner[k], put(k, v, owner[k])) for k, v in self.data]
                ),
                OPS[2]: HttpTarget(c.endpoints, plan_ops, keys_per_op=BATCH_KEYS),
            }
            split = HttpFanoutTarget(c.endpoints, fanout_ops, keys_per_op=BATCH_KEYS)
            for op in OPS:
                if c.size == 1:
                    self.items.append(Item(1, ONE, op, fwd[op], c))
                    if op != OPS[2] and self.args.control:
                        # The smart client's lanes spread over N nodes: each node of the largest
                        # cluster sees about procs x conns / N requests in flight. The lone node
                        # at that concurrency tells what lower load per node costs by itself.
                        in_flight = max(1, round(self.args.procs * self.args.conns / max(SIZES)))
                        self.items.append(
                            Item(1, CONTROL, op, fwd[op], c, procs=1, conns=in_flight)
                        )
                    continue
                batch = op == OPS[2]
                expected = sum(smart_calls) / len(smart_calls) if batch else 0.0
                self.items.append(Item(c.size, SMART, op, smart[op], c, expected_forwards=expected))
                if batch:
                    self.items.append(Item(c.size, SPLIT, op, split, c))
                expected = sum(fwd_calls) / len(fwd_calls) if batch else remote_share
                self.items.append(Item(c.size, FORWARD, op, fwd[op], c, expected_forwards=expected))

    # -- load ----------------------------------------------------------------------------------
    def all_nodes_cpu(self) -> float:
        return sum(c.cpu_seconds() for c in self.clusters)

    def measure(self, item: Item, duration: float, suffix: str) -> None:
        a = self.args
        bar = self.bar
        label = item.label + suffix
        base = bar.n if bar is not None else 0.0
        budget = a.quiet_wait_total - self.waited
        if budget > 0:
            self._describe(f"{label} (waiting for a quiet machine)")
            waited, _ = wait_for_quiet(
                self.all_nodes_cpu, max_wait=min(a.quiet_wait, budget), threshold_pct=NOISY_PCT
            )
            self.waited += waited
        self._describe(label)

        def progress(elapsed: float) -> None:
            if bar is not None:
                bar.n = round(base + max(0.0, elapsed), 1)
                bar.refresh()

        c = item.cluster
        action = ACTION[item.op]
        fwd0, served0 = c.counters(action)
        probe = CpuProbe(c.nodes)
        result = run_load(
            item.target,
            duration=duration,
            warmup=a.warmup,
            procs=item.procs or a.procs,
            conns=item.conns or a.conns,
            server_cpu=probe,
            progress=progress,
        )
        fwd1, served1 = c.counters(action)
        window = probe.window()

        def add(acc: list[Any], values: list[Any]) -> list[Any]:
            return [x + y for x, y in zip(acc, values, strict=True)] if acc else list(values)

        item.rounds.append(result)
        item.node_cpu = add(item.node_cpu, window)
        vol, invol = probe.window_switches()
        item.switches = (item.switches[0] + vol, item.switches[1] + invol)
        item.forwards = add(item.forwards, [y - x for x, y in zip(fwd0, fwd1, strict=True)])
        item.served = add(item.served, [y - x for x, y in zip(served0, served1, strict=True)])
        if bar is not None:
            bar.n = round(base + a.warmup + duration, 1)
            per = result.keys_per_s if item.op == OPS[2] else result.ops_per_s
            bar.set_postfix_str(f"{label}: {per:,.0f} {'keys' if item.op == OPS[2] else 'ops'}/s")

    def run_items(self) -> None:
        """Every item in ``--rounds`` rounds of duration / rounds; in a round, the items of one
        op follow each other (N=1, then N=2 smart and forwarding, then N=3)."""
        rounds = self.args.rounds
        part = self.args.cluster_duration / rounds
        for r in range(rounds):
            for op in OPS:
                for item in self.items:
                    if item.op == op:
                        self.measure(item, part, f" {r + 1}/{rounds}" if rounds > 1 else "")

    def run_client(self) -> None:
        """The real Python client (one process, one thread) on the 3-node cluster."""
        c = self.clusters[-1]
        duration = self.args.client_duration
        rng = random.Random(5)
        client = CacheClient([c.nodes[0].url], api_key=c.api_key)
        n1 = client.ring.node(c.nodes[0].name)
        assert n1 is not None

        def via_n1(keys: list[str]) -> dict[str, Any]:
            """The same batch as one frame on the client's stream to n1, whatever it owns:
            n1 serves its keys and calls the other owners (the fixed-node comparison)."""
            body = {"keys": keys}
            # The client's own frame, sent to a fixed node.
            reply = client._request(
                "POST", None, "/api/v1/batch/get", body, node=n1, frame=("get_many", body, b"")
            )
            assert reply is not None
            assert reply.stream
            found = orjson.loads(reply.data)["values"]
            return {k: client_decode(v) for k, v in found.items()}

        try:
            for name in CLIENT_CALLS:
                self._describe(f"CacheClient {name} on N={c.size}")
                many = name != "GET"
                fixed = name.endswith("via n1")

                def one(
                    client: CacheClient = client, many: bool = many, fixed: bool = fixed
                ) -> int:
                    if many:
                        keys = self.key_batches[rng.randrange(len(self.key_batches))]
                        got = via_n1(keys) if fixed else client.get_many(keys)
                        return sum(got.get(k) != self.expected[k] for k in keys)
                    k = self.keys[rng.randrange(len(self.keys))]
                    return int(client.get(k) != self.expected[k])

                warm_end = time.perf_counter() + min(1.0, self.args.warmup)
                while time.perf_counter() < warm_end:
                    one()
                fwd0 = sum(st["forwards"] for st in c.stats())
                cpu0, own0 = c.cpu_seconds(), time.process_time()
                lat: list[float] = []
                wrong = 0
                t0 = time.perf_counter()
                end = t0 + duration
                while (now := time.perf_counter()) < end:
                    wrong += one()
                    lat.append(time.perf_counter() - now)
                elapsed = time.perf_counter() - t0
                cpu1, own1 = c.cpu_seconds(), time.process_time()
                fwd1 = sum(st["forwards"] for st in c.stats())
                self.client_rows.append(
                    ClientRow(
                        name=name,
                        ops=len(lat),
                        keys_per_op=BATCH_KEYS if many else 1,
                        duration=elapsed,
                        latencies=lat,
                        client_cpu_s=own1 - own0,
                        server_cpu_s=cpu1 - cpu0,
                        forwards=fwd1 - fwd0,
                        wrong=wrong,
                    )
                )
                if self.bar is not None:
                    self.bar.n = round(self.bar.n + duration + min(1.0, self.args.warmup), 1)
                    self.bar.refresh()
        finally:
            client.close()

    def profiled_items(self) -> list[tuple[str, Item]]:
        top = max(SIZES)
        plan = [(SMART, "GET"), (FORWARD, "GET"), (FORWARD, OPS[2])]
        return [
            (f"{path} {op}", item)
            for path, op in plan
            if (item := find(self, top, path, op)) is not None
        ]

    def run_profiles(self) -> None:
        """Load three items again with py-spy sampling every node (not the measured rows:
        sampling costs CPU). Shares of samples x the nodes' CPU = where the CPU goes."""
        a = self.args
        tool = py_spy()
        if tool is None:
            self.profile_note = "skipped: py-spy not found"
            return
        for label, item in self.profiled_items():
            self._describe(f"profile N={item.size} {label} (py-spy)")
            c = item.cluster
            outs, spies = [], []
            seconds = max(1, round(a.warmup + a.profile_duration))
            try:
                for node in c.nodes:
                    procs = node.processes()
                    out = c.registry.dir / f"profile-{node.name}-{len(self.profiles)}.txt"
                    outs.append(out)
                    if len(procs) < 2:
                        continue
                    argv = [tool, "record", "-p", str(procs[-1].pid), "-d", str(seconds)]
                    argv += ["-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"]
                    spies.append(
                        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    )
                time.sleep(0.3)  # py-spy attaches
                probe = CpuProbe(c.nodes)
                result = run_load(
                    item.target,
                    duration=a.profile_duration,
                    warmup=a.warmup,
                    procs=a.procs,
                    conns=a.conns,
                    server_cpu=probe,
                )
                for spy in spies:
                    try:
                        spy.wait(timeout=seconds + 20)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        spy.wait(timeout=5)
            finally:
                for spy in spies:
                    if spy.poll() is None:
                        spy.kill()
                        spy.wait(timeout=5)
            parsed = [categorize(out) for out in outs]
            self.profiles.append(
                Profile(
                    label=label,
                    item=item,
                    ops=result.ops,
                    node_cpu=probe.window(),
                    shares=[shares for shares, _ in parsed],
                    samples=[n for _, n in parsed],
                )
            )
            if self.bar is not None:
                self.bar.n = round(self.bar.n + a.warmup + a.profile_duration, 1)
                self.bar.refresh()
        if not any(sum(p.samples) for p in self.profiles):
            self.profile_note = "py-spy recorded no samples (no permission to attach?)"

    def planned_seconds(self) -> float:
        a = self.args
        items = sum(len(OPS) * (1 if n == 1 else 2) + (n > 1) for n in SIZES)
        items += 2 if a.control else 0
        client = len(CLIENT_CALLS) * (a.client_duration + min(1.0, a.warmup))
        profile = 3 * (a.warmup + a.profile_duration) if a.profile else 0.0
        return items * (a.cluster_duration + a.rounds * a.warmup) + client + profile

    def run_redis_reference(self) -> None:
        """The same batches on one Redis and on a 3-node Redis Cluster (bench/redis_cluster.py)."""
        reason = "skipped (--no-redis)" if self.args.no_redis else redis_cluster.missing()
        if reason:
            self.redis_note = reason
            return
        self._describe("reference: one Redis vs a 3-node Redis Cluster")
        seconds = 1.0 if self.args.quick else 4.0
        try:
            self.redis_ref = redis_cluster.measure(self.keys, self.key_batches, seconds)
        except Exception as exc:  # a reference row must not cost the whole run
            self.redis_note = f"failed: {type(exc).__name__}: {str(exc)[:300]}"

    def run(self) -> None:
        with tqdm(
            total=round(self.planned_seconds(), 1),
            unit="s",
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s load [{elapsed}<{remaining}]{postfix}",
        ) as bar:
            self.bar = bar
            with self.running():
                self.build_items()
                self.run_items()
                self.run_client()
                self.run_redis_reference()
                if self.args.profile:
                    self.run_profiles()
                for c in self.clusters:
                    self._describe(f"N={c.size}: checks after the load")
                    self.verify(c, final=True)
            bar.set_description("done")
            self.bar = None


# --------------------------------------------------------------------------- numbers


def find(bench: ClusterBench, size: int, path: str, op: str) -> Item | None:
    """The item of that size, path and op; with one node, the ONE item serves both paths."""
    for item in bench.items:
        if item.size != size or item.op != op:
            continue
        if item.path == path or (item.path == ONE and path != CONTROL):
            return item
    return None


def cpu_ms(item: Item | None, per: str = "op") -> float | None:
    """Server CPU milliseconds per 1,000 ops, keys or client requests (all nodes summed)."""
    if item is None:
        return None
    r = item.result
    if r.server_cpu_s is None:
        return None
    count = {"op": r.ops, "key": r.ops * r.keys_per_op, "request": r.requests_sent}[per]
    return 1e6 * r.server_cpu_s / count if count else None


def cpu_ratio(bench: ClusterBench, item: Item) -> float | None:
    base = find(bench, 1, ONE, item.op)
    a, b = cpu_ms(item, "key"), cpu_ms(base, "key")
    return a / b if a is not None and b else None


def target_base(bench: ClusterBench, path: str, op: str) -> Item | None:
    """What an N=3 item is held against: the lone node, except the smart client's single keys,
    held against the control (the lone node at the concurrency each smart-client node gets),
    when it was measured."""
    if path == SMART and op != OPS[2] and (ctrl := find(bench, 1, CONTROL, op)) is not None:
        return ctrl
    return find(bench, 1, path, op)


def target_ratio(bench: ClusterBench, path: str, op: str) -> float | None:
    """CPU per op of the N=3 item over that of its ``target_base``."""
    a, b = cpu_ms(find(bench, max(SIZES), path, op)), cpu_ms(target_base(bench, path, op))
    return a / b if a is not None and b else None


def batch_ratio(bench: ClusterBench, path: str) -> float | None:
    """CPU per batch of ``path`` over that of forwarding via n1, on N=3 (all nodes summed)."""
    top = max(SIZES)
    a, b = cpu_ms(find(bench, top, path, OPS[2])), cpu_ms(find(bench, top, FORWARD, OPS[2]))
    return a / b if a is not None and b else None


def round_range(item: Item | None, base: Item | None) -> str:
    if item is None or base is None:
        return "-"
    pairs = [a / b for a, b in zip(item.round_cpu(), base.round_cpu(), strict=False) if b]
    if not pairs:
        return "-"
    return f"{min(pairs):.2f}-{max(pairs):.2f}" if len(pairs) > 1 else f"{pairs[0]:.2f}"


def rate(item: Item) -> float:
    r = item.result
    return r.keys_per_s if item.op == OPS[2] else r.ops_per_s


def rate_ratio(bench: ClusterBench, item: Item) -> float | None:
    base = find(bench, 1, ONE, item.op)
    return rate(item) / rate(base) if base is not None and rate(base) else None


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "**met**" if value <= limit else "**not met**"


def machine_pct(r: LoadResult) -> float:
    """Share of all cores busy in the window (servers, clients and everything else)."""
    cores = os.cpu_count() or 1
    busy = r.machine_cpu_s
    if busy is None:
        busy = (r.server_cpu_s or 0.0) + r.client_cpu_s
    return 100.0 * busy / (r.duration * cores) if r.duration else 0.0


# --------------------------------------------------------------------------- report


def report(
    bench: ClusterBench, command: str, started: dt.datetime, load_before: str, load_after: str
) -> str:
    a = bench.args
    out: list[str] = []
    w = out.append
    w("# Cluster benchmark: smart client vs forwarding on 1, 2 and 3 nodes\n")
    w(f"Command: `{command}` (`make bench` runs the foundation and this benchmark)\n")
    out += machine_table(started, load_before, load_after)
    facts = machine_facts()
    w("")
    avg = sum(len(orjson.dumps(v)) for v in bench.expected.values()) / max(1, len(bench.data))
    w(
        f"Setup: three clusters side by side, of 1, 2 and 3 nodes; each a fresh SQLite registry "
        "with `manage.py runnode` nodes (gevent, one worker process each) that registered "
        "themselves; the benchmark waited until every node's `GET /api/v1/cluster/ring` listed "
        "all N nodes `up` with one version, then preloaded "
        f"{len(bench.data):,} keys (compact JSON values of about {avg:.0f} bytes) through "
        "`POST /api/v1/batch/set` on n1 and built `nodes.ring.Ring.from_dict(ring)` from that "
        f"JSON. Load: {a.procs} client processes x {a.conns} keep-alive connections "
        f"({a.procs * a.conns} operations in flight), closed loop, pre-built requests on raw "
        f"sockets; every item measured for {a.cluster_duration:g} s in {a.rounds} rounds of "
        f"{a.cluster_duration / a.rounds:g} s, each after {a.warmup:g} s of warm-up, the "
        f"{len(bench.items)} items taking turns (idle clusters cost nothing). Random keys; batch "
        "rows ask for "
        f"{BATCH_KEYS} random distinct keys. Setup (starting 6 nodes, preloads, checks) took "
        f"{bench.setup_s:.0f} s.\n"
    )
    w(
        f"- **{SMART}**: each GET/SET goes straight to the key's primary (the ring computed "
        "here, as `cacheapi.client.CacheClient` does); a batch get goes as one request to the "
        "node `cacheapi.client.batch_plan` names, the client's own choice: the owner of most of "
        "the batch's keys, which serves those and fetches the rest from the other owners over "
        "its peer streams.\n"
        f"- **{SPLIT}** (batch only, not a target): the batch split per owner, the parts sent at "
        "once, one request per owner, no node calling another; the batch's latency is its "
        "slowest part.\n"
        f"- **{FORWARD}**: every request goes to n1, which serves its own keys and forwards the "
        "others to their owners over its peer streams, and fans a batch out to the other "
        "owners in parallel.\n"
        f"- **{ONE}** (N=1): every path is the same requests to the one node; measured once and "
        "the baseline of all.\n"
        + (
            f"- **{CONTROL}** (not a target): the one node again, with only as many requests in "
            f"flight as each node of the {max(SIZES)}-node cluster sees from the smart client "
            f"(about {a.procs * a.conns}/{max(SIZES)}); it separates the cost of a less loaded "
            "node (fewer requests per event-loop wake-up) from the cost of the cluster, and is "
            f"the baseline of the {SMART}'s single-key targets.\n"
            if a.control
            else ""
        )
    )

    w("## Results\n")
    w(
        "| N | path | op | ops/s | keys/s | p50 ms | p99 ms | errors | server CPU ms / 1k ops "
        "| ratio vs N=1 (CPU/op) | CPU ms / 1k keys | CPU ms / 1k requests | requests / op "
        "| throughput vs N=1 | forwards / client request | server CPU | client CPU | other CPU "
        "| machine busy |"
    )
    w("| ---: | --- | --- |" + " ---: |" * 16)
    for item in bench.items:
        r = item.result
        fwd = item.forwards_per_request
        w(
            f"| {item.size} | {item.path_label} | {item.op} | {fmt(r.ops_per_s)} "
            f"| {fmt(r.keys_per_s)} "
            f"| {fmt(r.p50_ms, '.2f')} | {fmt(r.p99_ms, '.2f')} | {r.errors} "
            f"| {fmt(cpu_ms(item), ',.0f')} | {fmt(cpu_ratio(bench, item), '.2f')} "
            f"| {fmt(cpu_ms(item, 'key'), ',.1f')} | {fmt(cpu_ms(item, 'request'), ',.0f')} "
            f"| {r.requests_sent / r.ops if r.ops else 0:.2f} "
            f"| {fmt(rate_ratio(bench, item), '.2f')} | {fmt(fwd, '.3f')} "
            f"| {fmt(r.server_cpu_pct, '.0f')}% | {fmt(r.client_cpu_pct, '.0f')}% "
            f"| {fmt(r.other_cpu_pct, '.0f')}% | {machine_pct(r):.0f}% |"
        )
    w("")
    w(
        "Units: **ops** are client operations: one GET, one SET, or one batch get of "
        f"{BATCH_KEYS} keys (keys/s = ops/s x {BATCH_KEYS} for batches). **Requests** are the "
        f"HTTP requests the client sent to the nodes: one per op, except the {SPLIT} batch, "
        "which sends one per owner (the requests / op column). **Server CPU** is the sum of user "
        "+ system CPU seconds of every node process of the cluster under test (gunicorn masters "
        "and workers, psutil) in the measured window; internal (forwarded) requests are served "
        "by those same processes, so they are included. The ratio vs N=1 divides CPU per op "
        "(per key for batches: the same thing, 100 keys an op) by that of the one-node cluster "
        "for the same op. Forwards / client request: the nodes' own `forwards` counters "
        "(`/api/v1/stats`) over the whole item (warm-ups included), divided by the client "
        "requests the nodes served in that time (internal calls are counted apart, as "
        "`internal_<op>`); a forwarded batch counts one forward per other owner. CPU columns "
        f"are percent of one core ({facts['nproc']} cores = {100 * (os.cpu_count() or 1)}%); "
        "machine busy is the share of all cores in use (everything, from `/proc/stat`)."
    )
    noisy = [i.label for i in bench.items if (i.result.other_cpu_pct or 0.0) >= NOISY_PCT]
    w(
        f"Before each round of each item the run waited (at most {a.quiet_wait:g} s, "
        f"{a.quiet_wait_total:g} s in all) for other processes to use less than {NOISY_PCT:g}% "
        f"of a core; it waited {bench.waited:.0f} s in all. "
        + (
            f"Items measured while other processes still used >= {NOISY_PCT:g}% of a core: "
            f"{', '.join(noisy)}."
            if noisy
            else "No item was disturbed by other processes."
        )
    )
    w("")

    top = max(SIZES)
    w(f"## Targets (CPU per op on {top} nodes / on one node, same op)\n")
    w(
        f"| path | op | baseline (N=1) | baseline CPU ms / 1k ops | N={top} CPU ms / 1k ops "
        "| ratio | target | verdict | ratio from single rounds (min-max) |"
    )
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for path, limit in TARGETS.items():
        for op in OPS:
            item, base = find(bench, top, path, op), target_base(bench, path, op)
            ratio = target_ratio(bench, path, op)
            w(
                f"| {path} | {op} | {base.path_label if base else '-'} "
                f"| {fmt(cpu_ms(base), ',.0f')} | {fmt(cpu_ms(item), ',.0f')} "
                f"| {fmt(ratio, '.3f')} | <= {limit:g}x | {verdict(ratio, limit)} "
                f"| {round_range(item, base)} |"
            )
    w("")
    fwd_batch = find(bench, top, FORWARD, OPS[2])
    w(f"## Target: a batch on {top} nodes, against forwarding via n1\n")
    w(
        f"| path | CPU ms / 1k batches | {FORWARD} CPU ms / 1k batches | ratio | target "
        "| verdict | ratio from single rounds (min-max) |"
    )
    w("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    for path in (SMART, SPLIT):
        item, ratio = find(bench, top, path, OPS[2]), batch_ratio(bench, path)
        goal = f"<= {BATCH_TARGET:g}x" if path == SMART else "(reference)"
        w(
            f"| {path} | {fmt(cpu_ms(item), ',.0f')} | {fmt(cpu_ms(fwd_batch), ',.0f')} "
            f"| {fmt(ratio, '.3f')} | {goal} "
            f"| {verdict(ratio, BATCH_TARGET) if path == SMART else '-'} "
            f"| {round_range(item, fwd_batch)} |"
        )
    w("")
    w(
        f"Smart-client batch CPU per batch / forwarding-via-n1 batch CPU per batch on {top} "
        f"nodes: {fmt(batch_ratio(bench, SMART), '.3f')} (target <= {BATCH_TARGET:g}): "
        f"{verdict(batch_ratio(bench, SMART), BATCH_TARGET)}. Server CPU is every node's of the "
        "cluster, the coordinator's peer calls and the owners' internal answers included.\n"
    )
    w(
        "The last columns pair each round of the N=3 item with the same round of its baseline "
        "(measured a few seconds apart); their spread shows how much of a difference is noise. "
        + (
            f"The {SMART}'s GET and SET are held against the control: each of its {top} nodes "
            f"sees about {a.procs * a.conns}/{top} requests in flight, as the control does."
            if a.control
            else f"Without the control (`--no-control`), the {SMART}'s GET and SET are held "
            "against the lone node at full concurrency."
        )
    )
    w("")
    w(redis_section(bench))

    w("## Forwards (the nodes' counters)\n")
    w(
        "| N | path | op | forwards counted | client requests served | forwards / request "
        "| expected from the ring | verdict |"
    )
    w("| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for item in bench.items:
        if item.path in (ONE, CONTROL):
            continue
        got = item.forwards_per_request
        want = item.expected_forwards
        ok = got is not None and (
            sum(item.forwards) == 0 if want == 0 else abs(got - want) <= 0.05 * max(1, want)
        )
        w(
            f"| {item.size} | {item.path} | {item.op} | {sum(item.forwards):,} "
            f"| {item.client_requests:,} | {fmt(got, '.3f')} | {want:.3f} "
            f"| {'ok' if ok else '**unexpected**'} |"
        )
    w("")
    w(
        f"Expected: zero for the smart client's single keys and for the {SPLIT}; for the smart "
        "client's batch, the mean number of owners other than the node it was sent to; via n1, "
        "the share of keys n1 does not own for single keys (about (N-1)/N; the exact share of "
        "the data set under this ring), and for batches the mean number of owners other than "
        "n1. A batch touches N-1 other owners either way (100 random keys practically always "
        "touch every node). Exact per-request counts are also checked below."
    )
    w("")

    w(f"## Where the CPU goes on {max(SIZES)} nodes (per 1k client ops, split by node)\n")
    w("| path | op | n1 (entry) ms / 1k ops | other nodes ms / 1k ops | total | ratio vs N=1 |")
    w("| --- | --- | ---: | ---: | ---: | ---: |")
    for path in (SMART, SPLIT, FORWARD):
        for op in OPS:
            item = find(bench, max(SIZES), path, op)
            if item is None or item.path != path or not item.node_cpu:
                continue
            ops = item.result.ops
            n1 = 1e6 * item.node_cpu[0] / ops if ops else None
            rest = 1e6 * sum(item.node_cpu[1:]) / ops if ops else None
            w(
                f"| {path} | {op} | {fmt(n1, ',.0f')} | {fmt(rest, ',.0f')} "
                f"| {fmt(cpu_ms(item), ',.0f')} | {fmt(cpu_ratio(bench, item), '.2f')} |"
            )
    w("")

    w("## Scheduling (the nodes' context switches, psutil, in the measured windows)\n")
    w(
        "| N | path | op | server CPU ms / 1k ops | voluntary switches / op "
        "| involuntary switches / op | server CPU | machine busy |"
    )
    w("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for item in bench.items:
        vol, invol = item.switches_per_op()
        r = item.result
        w(
            f"| {item.size} | {item.path_label} | {item.op} | {fmt(cpu_ms(item), ',.0f')} "
            f"| {vol:.2f} | {invol:.2f} | {fmt(r.server_cpu_pct, '.0f')}% "
            f"| {machine_pct(r):.0f}% |"
        )
    w("")
    w(
        "Voluntary: a node process went to sleep (nothing to do, waiting for the next request); "
        "involuntary: the kernel took its core away (more runnable processes than cores)."
    )
    w("")

    if bench.args.profile:
        w(profile_section(bench))

    if bench.client_rows:
        c = bench.clusters[-1]
        w(f"## Sanity: the real Python client on {c.size} nodes (one process, one thread)\n")
        w(
            "| call | ops/s | keys/s | p50 ms | p99 ms | client CPU | server CPU ms / 1k ops "
            "| forwards | wrong values |"
        )
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in bench.client_rows:
            w(
                f"| `CacheClient.{row.name.split()[0].lower()}` "
                f"{'(' + str(row.keys_per_op) + ' keys)' if row.keys_per_op > 1 else ''} "
                f"{'as one frame to n1' if row.name.endswith('via n1') else ''} "
                f"| {fmt(row.ops_per_s)} | {fmt(row.ops_per_s * row.keys_per_op)} "
                f"| {row.pct(0.5):.2f} | {row.pct(0.99):.2f} "
                f"| {100 * row.client_cpu_s / row.duration:.0f}% "
                f"| {fmt(1e6 * row.server_cpu_s / row.ops if row.ops else None, ',.0f')} "
                f"| {row.forwards} | {row.wrong} |"
            )
        w("")
        w(
            "One synchronous caller on client streams: it is bound by its own CPU and the round "
            "trip, so these ops/s are for information, not the cluster's capacity. Every value "
            "read was compared with the preloaded one."
        )
        w("")
        ratio = client_batch_ratio(bench)
        w(
            "Smart-client batches (issue 13): `CacheClient.get_many` sends each owner its keys "
            "as one frame, all at once; the row below it sends the same batches as one frame to "
            "n1, which serves its keys and calls the other owners. Server CPU per batch, the "
            f"client's way over the fixed node's: {fmt(ratio, '.2f')} (target <= "
            f"{BATCH_TARGET:g}: {verdict(ratio, BATCH_TARGET)})."
        )
        w("")

    w("## Correctness checks\n")
    w("| N | check | result | detail |")
    w("| ---: | --- | --- | --- |")
    for ch in bench.checks:
        w(f"| {ch.size} | {ch.what} | {'ok' if ch.ok else '**FAILED**'} | {ch.detail} |")
    errors = sum(i.result.errors for i in bench.items)
    w(
        f"| all | no non-200 answer during the measured load (`ok_status`: 200) "
        f"| {'ok' if errors == 0 else '**FAILED**'} | {errors} errors |"
    )
    w("")

    w("## Observations (computed from this run)\n")
    for line in observations(bench):
        w(f"- {line}")
    w("")
    w("## Notes and limits\n")
    w(
        f"- {facts['nproc']} cores for up to 3 node processes and 2 load processes: with 2 or 3 "
        "nodes the machine, not one node, is the limit (see machine busy), so ops/s cannot grow "
        "with N here. CPU per op is what scaling out costs, and what would carry over to one "
        "node per core on more machines."
    )
    w(
        "- The load generator's smart client is the ideal one (ring computed once, requests "
        "pre-built); the real `CacheClient` row shows what one Python caller does."
    )
    w(
        f"- Latency is per operation under a closed loop with {a.procs * a.conns} operations in "
        "flight, so it includes queueing at saturated nodes; gevent serves connections unevenly "
        "(see the foundation's p99), so compare p50s."
    )
    w("- Raw data: `bench/results/cluster.json`.")
    return "\n".join(out) + "\n"


def redis_section(bench: ClusterBench) -> str:
    out = [f"## Reference: a batch of {BATCH_KEYS} keys on Redis, one node vs a 3-node cluster\n"]
    ref = bench.redis_ref
    if ref is None:
        out.append(f"Not measured: {bench.redis_note}.\n")
        return "\n".join(out)
    ours = {path: find(bench, 3, path, OPS[2]) for path in (SMART, SPLIT)}
    out += [
        "| system | how a batch is sent | server CPU us / batch | ratio vs one node |",
        "| --- | --- | ---: | ---: |",
        f"| Redis {ref.version}, one node | one `MGET` of {BATCH_KEYS} keys "
        f"| {ref.one_node_us:,.1f} | 1.00 |",
        f"| Redis {ref.version}, 3-node Redis Cluster | redis-py `mget_nonatomic`: grouped by "
        f"slot, one pipeline per node | {ref.cluster_us:,.1f} | {ref.ratio:.2f} |",
        *(
            f"| this cache, 3 nodes | {how} | {fmt(cpu_ms(item), ',.0f')} "
            f"| {fmt(cpu_ratio(bench, item) if item else None, '.2f')} |"
            for how, item in (
                (f"{SMART}: one request to the majority owner", ours[SMART]),
                (f"{SPLIT}: one request per owner", ours[SPLIT]),
            )
        ),
        "",
        "Both Redis servers were started by the benchmark (private `redis-server` processes, no "
        "persistence), loaded with the same keys and asked for the same batches by one "
        "redis-py client; CPU is the servers' (psutil). Redis Cluster cannot answer a batch "
        "across slots in one command, so its clients split it as the split-per-owner reference "
        "does, and its servers pay for the split the same way: a batch costs several times its "
        "one-node cost because each part pays a fixed cost per request (or per command) that "
        "the one `MGET` paid once.\n",
    ]
    return "\n".join(out)


def profile_section(bench: ClusterBench) -> str:
    top = max(SIZES)
    out = [f"## Profile: where the CPU goes on {top} nodes (py-spy, a separate pass)\n"]
    if not bench.profiles:
        out.append(f"Not profiled: {bench.profile_note or 'no profile'}.\n")
        return "\n".join(out)
    cols: list[tuple[str, Profile, list[int]]] = []
    for prof in bench.profiles:
        if prof.item.path == SMART:
            cols.append((f"{prof.label}: all nodes", prof, list(range(top))))
        else:
            cols.append((f"{prof.label}: n1", prof, [0]))
            cols.append((f"{prof.label}: n2..n{top}", prof, list(range(1, top))))
    out.append("| CPU ms per 1k client ops in | " + " | ".join(c[0] for c in cols) + " |")
    out.append("| --- |" + " ---: |" * len(cols))
    for name in [r[0] for r in PROFILE_RULES] + [PROFILE_OTHER]:
        cells = [f"{prof.ms_per_1k(nodes, name):,.0f}" for _, prof, nodes in cols]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [
        f"**{sum(1e6 * prof.node_cpu[i] for i in nodes) / prof.ops:,.0f}**" if prof.ops else "-"
        for _, prof, nodes in cols
    ]
    out.append("| **total (the nodes' CPU in the window)** | " + " | ".join(totals) + " |")
    out.append("")
    out.append(
        f"The items above loaded again for {bench.args.profile_duration:g} s each with py-spy "
        "(`record --nonblocking -r 200 -f raw`) on every node's worker; each sample goes to the "
        "first category with a matching frame (a peer call made from a view counts as the peer "
        "call), and a node's CPU in the window is split by its shares of samples. Approximate "
        "(sampling, and py-spy's own CPU competes on the 2 cores); the measured rows above "
        f"ran without it. Samples per node: "
        + "; ".join(f"{p.label}: {p.samples}" for p in bench.profiles)
        + ".\n"
    )
    return "\n".join(out)


def observations(bench: ClusterBench) -> list[str]:
    lines: list[str] = []
    top = max(SIZES)
    for path, limit in TARGETS.items():
        parts = []
        for op in OPS:
            base = target_base(bench, path, op)
            ratio = target_ratio(bench, path, op)
            parts.append(f"{op} {fmt(ratio, '.2f')}x (vs {base.path_label if base else '-'})")
        met = all(
            (r := target_ratio(bench, path, op)) is not None and r <= limit
            for op in OPS
            if find(bench, top, path, op) is not None
        )
        lines.append(
            f"{path}: CPU per op on {top} nodes vs 1 node: {', '.join(parts)} "
            f"(target <= {limit:g}x): {'met for every op' if met else 'not met for every op'}."
        )
    smart_b, split_b = batch_ratio(bench, SMART), batch_ratio(bench, SPLIT)
    lines.append(
        f"Batch get {BATCH_KEYS} on {top} nodes, CPU per batch against {FORWARD}: {SMART} "
        f"(one request to the majority owner) {fmt(smart_b, '.2f')}x (target <= "
        f"{BATCH_TARGET:g}x: {verdict(smart_b, BATCH_TARGET)}); {SPLIT} {fmt(split_b, '.2f')}x."
    )
    for op in OPS[:2]:
        smart, fwd = find(bench, top, SMART, op), find(bench, top, FORWARD, op)
        base = find(bench, 1, ONE, op)
        if smart is None or fwd is None or base is None or not fwd.node_cpu:
            continue
        ops = fwd.result.ops
        n1 = 1e3 * fwd.node_cpu[0] / ops
        rest = 1e3 * sum(fwd.node_cpu[1:]) / ops
        f = fwd.forwards_per_request or 0.0
        base_ms = (cpu_ms(base) or 0.0) / 1e3
        if f:
            coord = (n1 - base_ms) / f
            owner = rest / f
            lines.append(
                f"Where forwarding's CPU goes ({op}, {top} nodes, {f:.2f} forwards per request): "
                f"n1 spends {n1:.3f} ms per client op against {base_ms:.3f} ms on a lone node, "
                f"i.e. {coord:.3f} ms more per forward (making the outbound HTTP call and reading "
                f"the peer's answer); the owners spend {owner:.3f} ms per forwarded "
                f"request, i.e. {owner / base_ms:.2f}x a client request on a lone node (an "
                "internal call is served by `cacheapi.peer.server`, not Django/DRF). Per forwarded "
                f"op that is {coord + owner:.3f} ms on top of the {base_ms:.3f} ms a direct "
                "request costs."
            )
    for op in OPS[:2]:
        ctrl, base = find(bench, 1, CONTROL, op), find(bench, 1, ONE, op)
        smart = find(bench, top, SMART, op)
        if ctrl is None or base is None or smart is None:
            continue
        c_ms, b_ms, s_ms = cpu_ms(ctrl), cpu_ms(base), cpu_ms(smart)
        if not (c_ms and b_ms and s_ms):
            continue
        sv, si = smart.switches_per_op()
        bv, bi = base.switches_per_op()
        lines.append(
            f"Control, {op}: the lone node with {ctrl.path_label.split(': ')[-1]} (what each of "
            f"the {top} smart-client nodes gets) costs {c_ms:,.0f} ms / 1k ops, "
            f"{c_ms / b_ms:.2f}x the lone node with {bench.args.procs * bench.args.conns}, and "
            f"is still {ctrl.result.server_cpu_pct or 0:.0f}% busy: fewer requests in flight per "
            f"node do not explain the smart client's {s_ms / b_ms:.2f}x. What differs is "
            f"scheduling: on {top} nodes the nodes use {smart.result.server_cpu_pct or 0:.0f}% "
            f"of a core together ({(smart.result.server_cpu_pct or 0) / top:.0f}% each) with "
            f"the machine {machine_pct(smart.result):.0f}% busy, and switch context "
            f"{sv:.2f} + {si:.2f} times per op (voluntary + involuntary) against "
            f"{bv:.2f} + {bi:.2f} on the lone node: each node sleeps and is woken, or loses its "
            "core, around every request, which costs CPU that a saturated node never pays."
        )
    b3 = find(bench, top, SPLIT, OPS[2])
    if b3 is not None and b3.path == SPLIT:
        req = b3.result.requests_sent / b3.result.ops if b3.result.ops else 0
        lines.append(
            f"The {SPLIT} on {top} nodes sends {req:.2f} requests per batch of {BATCH_KEYS}, so "
            f"the fixed per-request cost is paid {req:.2f} times: CPU per key "
            f"{fmt(cpu_ms(b3, 'key'), '.1f')} ms / 1k keys against "
            f"{fmt(cpu_ms(find(bench, 1, ONE, OPS[2]), 'key'), '.1f')} on one node; per "
            f"request the CPU is {fmt(cpu_ms(b3, 'request'), ',.0f')} ms / 1k."
        )
        one_get, one_batch = find(bench, 1, ONE, OPS[0]), find(bench, 1, ONE, OPS[2])
        fixed, whole = cpu_ms(one_get), cpu_ms(one_batch)
        if fixed is not None and whole is not None and whole > fixed:
            work = whole - fixed  # the batch's own work: what a batch costs beyond a GET
            floor = (req * fixed + work) / whole
            lines.append(
                f"Even with no cluster overhead at all, {req:.0f} requests per batch cost at "
                f"least {req:.0f} x the fixed cost of a request ({fixed:,.0f} ms / 1k, a lone "
                f"node's GET) plus the batch's own work ({work:,.0f}): {floor:.2f}x a lone "
                f"node's batch. A split at {TARGETS[SMART]:g}x would need a fixed cost per "
                f"request under {work * (TARGETS[SMART] - 1) / (req - TARGETS[SMART]):,.0f} us: "
                "the range of what Redis spends on a whole command, not of an HTTP request "
                "served by Python. Hence the smart client's one request per batch."
            )
        if bench.redis_ref is not None:
            smart3 = find(bench, top, SMART, OPS[2])
            lines.append(
                f"Redis Cluster pays the same: the same batches cost its 3 servers "
                f"{bench.redis_ref.ratio:.2f}x the CPU of one Redis answering them with one MGET "
                f"(this cache's {SPLIT}: {fmt(cpu_ratio(bench, b3), '.2f')}x, its smart client: "
                f"{fmt(cpu_ratio(bench, smart3) if smart3 else None, '.2f')}x)."
            )
    for op in OPS:
        smart, fwd = find(bench, top, SMART, op), find(bench, top, FORWARD, op)
        if smart is None or fwd is None:
            continue
        lines.append(
            f"{op} on {top} nodes: smart {rate(smart):,.0f} vs forwarding {rate(fwd):,.0f} "
            f"{'keys' if op == OPS[2] else 'ops'}/s ({rate(smart) / rate(fwd):.2f}x); p50 "
            f"{smart.result.p50_ms:.2f} vs {fwd.result.p50_ms:.2f} ms; machine busy "
            f"{machine_pct(smart.result):.0f}% vs {machine_pct(fwd.result):.0f}%."
        )
    for prof in bench.profiles:
        if prof.item.path != FORWARD or not prof.ops:
            continue
        n1_total = 1e6 * prof.node_cpu[0] / prof.ops
        peer = prof.ms_per_1k([0], PROFILE_RULES[0][0])
        decode = prof.ms_per_1k([0], PROFILE_RULES[1][0])
        rest_nodes = list(range(1, len(prof.node_cpu)))
        rest_total = sum(1e6 * prof.node_cpu[i] for i in rest_nodes) / prof.ops
        stack = sum(prof.ms_per_1k(rest_nodes, r[0]) for r in PROFILE_RULES[4:8])
        lines.append(
            f"Profile of {prof.label} on {top} nodes: n1 spends {peer:,.0f} of its "
            f"{n1_total:,.0f} ms / 1k ops in outbound peer calls and {decode:,.0f} in "
            f"`values.loads`; the owners spend {stack:,.0f} of their {rest_total:,.0f} ms / 1k "
            "ops in gunicorn, Django/DRF and the internal app around the store (the store itself: "
            f"{prof.ms_per_1k(rest_nodes, PROFILE_RULES[3][0]):,.0f})."
        )
    errors = sum(i.result.errors for i in bench.items)
    failed = [ch for ch in bench.checks if not ch.ok]
    lines.append(
        f"Correctness: {errors} non-200 answers under load; {len(bench.checks) - len(failed)} of "
        f"{len(bench.checks)} checks passed"
        + (
            ": " + "; ".join(f"N={ch.size} {ch.what} ({ch.detail})" for ch in failed)
            if failed
            else "."
        )
    )
    ratio = client_batch_ratio(bench)
    if ratio is not None:
        lines.append(
            f"CacheClient batch get {BATCH_KEYS} on streams (a frame per owner) against the same "
            f"batch as one frame to n1: {ratio:.2f}x the server CPU per batch (target <= "
            f"{BATCH_TARGET:g}x: {verdict(ratio, BATCH_TARGET)})."
        )
    for row in bench.client_rows:
        lines.append(
            f"CacheClient {row.name}: {row.ops_per_s:,.0f} ops/s from one thread, client at "
            f"{100 * row.client_cpu_s / row.duration:.0f}% of a core, {row.forwards} forwards, "
            f"{row.wrong} wrong values."
        )
    return lines


def client_batch_ratio(bench: Any) -> float | None:
    """Server CPU per batch of the real client's ``get_many`` over the same batches sent as one
    frame to n1 (rows of ``run_client``); None without both rows."""
    per = {
        row.name: row.server_cpu_s / row.ops
        for row in bench.client_rows
        if row.keys_per_op > 1 and row.ops
    }
    mine, fixed = per.get(f"get_many {BATCH_KEYS}"), per.get(f"get_many {BATCH_KEYS} via n1")
    return mine / fixed if mine is not None and fixed else None


# --------------------------------------------------------------------------- plot, json


def plot(bench: ClusterBench, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(2, len(OPS), figsize=(5 * len(OPS), 8.5))
    fig.suptitle(
        f"Cluster benchmark: smart client vs forwarding via n1 ({os.cpu_count()} cores, "
        f"{bench.args.procs}x{bench.args.conns} connections, "
        f"{bench.args.cluster_duration:g} s per point)"
    )
    colors = {SMART: "tab:blue", SPLIT: "tab:purple", FORWARD: "tab:orange"}
    for col, op in enumerate(OPS):
        per = "key" if op == OPS[2] else "op"
        ax = axes[0][col]
        paths = (SMART, SPLIT, FORWARD) if op == OPS[2] else (SMART, FORWARD)
        for path in paths:
            xs, ys = [], []
            for n in SIZES:
                item = find(bench, n, path, op)
                value = cpu_ms(item, per)
                if value is not None:
                    xs.append(n)
                    ys.append(value)
            ax.plot(xs, ys, marker="o", color=colors[path], label=path)
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(
                    f"{y:,.{1 if per == 'key' else 0}f}",
                    (x, y),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
            base = target_base(bench, path, op)
            base_cpu = cpu_ms(base, per)
            if base is not None and base_cpu is not None and path in TARGETS:
                limit = TARGETS[path]
                against = "control" if base.path == CONTROL else "N=1"
                ax.axhline(
                    base_cpu * limit,
                    color=colors[path],
                    linestyle="--",
                    linewidth=0.8,
                    label=f"target {path}: {limit:g}x {against}",
                )
        ctrl = find(bench, 1, CONTROL, op)
        if ctrl is not None and (value := cpu_ms(ctrl, per)) is not None:
            ax.plot(
                [1],
                [value],
                marker="*",
                markersize=10,
                linestyle="",
                color="tab:green",
                label=f"control: 1 node, {ctrl.path_label.split(': ')[-1]}",
            )
        ax.set_title(f"{op}: server CPU per 1,000 {'keys' if per == 'key' else 'ops'}")
        ax.set_xlabel("nodes")
        ax.set_ylabel(f"CPU ms / 1k {per}s (all nodes)")
        ax.set_xticks(list(SIZES))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

        ax = axes[1][col]
        for path in paths:
            xs, ys = [], []
            for n in SIZES:
                item = find(bench, n, path, op)
                if item is not None:
                    xs.append(n)
                    ys.append(rate(item))
            ax.plot(xs, ys, marker="o", color=colors[path], label=path)
        ax.set_title(f"{op}: throughput ({'keys' if op == OPS[2] else 'ops'}/s)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("nodes")
        ax.set_xticks(list(SIZES))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)


def write_json(bench: ClusterBench, path: Path, meta: dict[str, Any]) -> None:
    rows = []
    for item in bench.items:
        r = item.result
        rows.append(
            {
                "nodes": item.size,
                "path": item.path_label,
                "procs": item.procs or bench.args.procs,
                "conns": item.conns or bench.args.conns,
                "op": item.op,
                "request": REQUEST[item.op],
                "ops": r.ops,
                "requests": r.requests_sent,
                "errors": r.errors,
                "duration_s": r.duration,
                "ops_per_s": r.ops_per_s,
                "keys_per_s": r.keys_per_s,
                "p50_ms": r.p50_ms,
                "mean_ms": r.mean_ms,
                "p99_ms": r.p99_ms,
                "server_cpu_s": r.server_cpu_s,
                "server_cpu_s_per_node": item.node_cpu,
                "client_cpu_s": r.client_cpu_s,
                "machine_cpu_s": r.machine_cpu_s,
                "other_cpu_pct": r.other_cpu_pct,
                "cpu_ms_per_1k_ops": cpu_ms(item),
                "cpu_ms_per_1k_keys": cpu_ms(item, "key"),
                "cpu_ms_per_1k_requests": cpu_ms(item, "request"),
                "cpu_ratio_vs_1_node": cpu_ratio(bench, item),
                "forwards_per_node": item.forwards,
                "served_per_node": item.served,
                "forwards_per_request": item.forwards_per_request,
                "expected_forwards_per_request": item.expected_forwards,
                "rounds": len(item.rounds),
                "error_samples": r.error_samples,
            }
        )
    client = [
        {
            "call": row.name,
            "ops": row.ops,
            "ops_per_s": row.ops_per_s,
            "p50_ms": row.pct(0.5),
            "p99_ms": row.pct(0.99),
            "client_cpu_s": row.client_cpu_s,
            "server_cpu_s": row.server_cpu_s,
            "forwards": row.forwards,
            "wrong": row.wrong,
        }
        for row in bench.client_rows
    ]
    checks = [ch.__dict__ for ch in bench.checks]
    write_bytes(
        path,
        orjson.dumps(
            {
                **meta,
                "rows": rows,
                "client": client,
                "checks": checks,
                "redis_cluster_reference": (
                    dataclasses.asdict(bench.redis_ref) if bench.redis_ref else bench.redis_note
                ),
            },
            option=orjson.OPT_INDENT_2,
        ),
    )


# --------------------------------------------------------------------------- entry point


def main(args: argparse.Namespace, command: str) -> int:
    """Run the cluster benchmark with every node stopped on the way out (also on Ctrl-C) and
    write its results; 1 if a correctness check failed."""
    bench = ClusterBench(args)
    measured = run_measured(bench.run, "node")
    if measured is None:
        return 130
    _, started, (load_before, load_after) = measured
    publish(
        args.out,
        "cluster",
        lambda png: plot(bench, png),
        lambda png: report(bench, command, started, load_before, load_after),
    )
    meta = {"command": command, "date": started.isoformat(), **machine_facts()}
    write_json(bench, args.out / "cluster.json", meta)
    print(f"wrote {shown(args.out / 'cluster.md')}, cluster.png, cluster.json", file=sys.stderr)
    failed = [ch for ch in bench.checks if not ch.ok]
    errors = sum(i.result.errors for i in bench.items)
    if failed or errors:
        print(
            f"cluster benchmark: {len(failed)} correctness checks failed, {errors} errors",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    argv = ["--only", "cluster", *sys.argv[1:]]
    sys.exit(main(parse_args(argv, __doc__), command_line("bench/run.py", argv)))
