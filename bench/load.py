"""A cheap closed-loop load generator: worker processes, each driving several connections.

``run_load(target, ...)`` forks ``procs`` worker processes. Each opens ``conns`` lanes, and all
lanes of a process are driven by one loop (:func:`_drive`, one ``selectors`` selector, one
thread): a lane sends an operation, waits for the whole answer, records the latency
(``time.perf_counter``) and sends the next one at once (closed loop, one operation in flight per
lane). Everything is bounded: a warm-up, a measured window of ``duration`` seconds, and a hard
deadline after it. A lane whose connection is lost counts an error and is replaced.

Every target uses that one loop; a target only says how to build its operations
(``operations()``, once per worker) and how a lane sends one and reads its answer
(``connect()`` -> :class:`Lane`):

- :class:`HttpTarget`: raw sockets sending pre-built HTTP/1.1 request bytes over keep-alive
  connections; the answer is framed by ``Content-Length`` and only its status is looked at (a
  few microseconds of client CPU per request, so the server is the bottleneck). A request may
  name which endpoint it goes to, so a smart client that routes each key to its owner node is
  a list of ``(endpoint, bytes)`` pairs.
- :class:`HttpFanoutTarget`: like :class:`HttpTarget`, but one operation is several requests
  to distinct endpoints sent at once on the lane's connections, done when the last answer is
  in: a smart client's batch split per owner node (latency = the slowest part).
- :class:`RedisTarget`: one redis-py ``Connection`` per lane; commands are packed once with
  redis-py and answers are parsed by redis-py (``read_response``) when the socket is readable.

A :class:`LoadResult` carries ops/s, keys/s, p50/p99 latency, errors, the client's CPU seconds
in the window and, when a ``server_cpu`` probe is given (e.g. ``Node.cpu_seconds``), the
server's CPU seconds in the same window: the cluster benchmark's CPU per 1,000 operations.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import selectors
import socket
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

HARD_TIMEOUT = 10.0  # seconds past the window before unanswered requests count as errors
NOISY_PCT = 25.0  # other processes using more than this much of a core make a row noisy
_RECV = 262_144


class LaneClosed(Exception):
    """The server closed a lane's connection (or it failed): the loop reconnects the lane."""


class Lane:
    """One closed-loop lane of a worker: its connections and the one operation in flight.

    A target's lane knows how to send an operation and how to read its answer; the loop
    (:func:`_drive`) does everything else: the selector, the clock, counting, reconnecting.
    """

    __slots__ = ("failure", "parts", "sent_at", "socks")

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks  # watched by the loop; receive() gets the index of the ready one
        self.parts = 1  # requests the operation in flight sent (a fan-out sends several)
        self.failure = ""  # why the last operation failed, for the error samples
        self.sent_at = 0.0

    def send(self, op: Any) -> None:
        raise NotImplementedError

    def receive(self, index: int) -> bool | None:
        """Read what ``socks[index]`` has: None while the operation is not complete, else
        whether it succeeded. Raises :class:`LaneClosed` if the connection is gone."""
        raise NotImplementedError

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class HttpTarget:
    """Pre-built HTTP/1.1 requests. ``requests``: bytes (to endpoint 0) or (endpoint, bytes)."""

    endpoints: Sequence[tuple[str, int]]
    requests: Sequence[bytes] | Sequence[tuple[int, bytes]]
    keys_per_op: int = 1
    ok_status: frozenset[int] = frozenset({200})

    def operations(self) -> list[list[tuple[int, bytes]]]:
        return [
            [r if isinstance(r, tuple) else (0, r)]
            for r in self.requests  # type: ignore[misc]
        ]

    def connect(self) -> Lane:
        return _HttpLane(self.endpoints, self.ok_status)


@dataclass
class HttpFanoutTarget:
    """Each operation is a group of ``(endpoint, bytes)`` requests to distinct endpoints, sent
    together; the operation ends when every part is answered (all parts must be ok)."""

    endpoints: Sequence[tuple[str, int]]
    ops: Sequence[Sequence[tuple[int, bytes]]]
    keys_per_op: int = 1
    ok_status: frozenset[int] = frozenset({200})

    def __post_init__(self) -> None:
        for parts in self.ops:
            eps = [ep for ep, _ in parts]
            if not eps or len(set(eps)) != len(eps):
                raise ValueError("a fan-out operation needs parts on distinct endpoints")

    def operations(self) -> list[list[tuple[int, bytes]]]:
        return [list(parts) for parts in self.ops]

    def connect(self) -> Lane:
        return _HttpLane(self.endpoints, self.ok_status)


@dataclass
class RedisTarget:
    """redis-py commands, e.g. ``("GET", key)``; each lane has its own redis-py Connection."""

    host: str
    port: int
    commands: Sequence[tuple[Any, ...]]
    keys_per_op: int = 1
    db: int = 0

    def operations(self) -> list[Any]:
        import redis

        packer = redis.Connection(host=self.host, port=self.port, db=self.db)  # not connected
        return [packer.pack_command(*cmd) for cmd in self.commands]

    def connect(self) -> Lane:
        return _RedisLane(self)


Target = HttpTarget | HttpFanoutTarget | RedisTarget


@dataclass
class LoadResult:
    ops: int
    errors: int
    duration: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    keys_per_op: int
    procs: int
    conns: int
    client_cpu_s: float
    server_cpu_s: float | None = None
    machine_cpu_s: float | None = None
    requests: int | None = None  # HTTP requests (or commands) in the window; None: = ops
    error_samples: list[str] = field(default_factory=list)
    latencies: array[float] = field(default_factory=lambda: array("d"), repr=False)

    @classmethod
    def from_latencies(cls, latencies: array[float], **fields: Any) -> LoadResult:
        values = sorted(latencies)
        return cls(
            p50_ms=1000 * _percentile(values, 0.50),
            p99_ms=1000 * _percentile(values, 0.99),
            mean_ms=1000 * (sum(values) / len(values)) if values else float("nan"),
            latencies=latencies,
            **fields,
        )

    @classmethod
    def merge(cls, results: Sequence[LoadResult]) -> LoadResult:
        """One result from several runs of the same load (e.g. interleaved rounds)."""
        latencies: array[float] = array("d")
        for r in results:
            latencies.extend(r.latencies)

        def total(name: str) -> float | None:
            values = [getattr(r, name) for r in results]
            return None if any(v is None for v in values) else sum(values)

        first = results[0]
        return cls.from_latencies(
            latencies,
            ops=sum(r.ops for r in results),
            errors=sum(r.errors for r in results),
            duration=sum(r.duration for r in results),
            keys_per_op=first.keys_per_op,
            procs=first.procs,
            conns=first.conns,
            client_cpu_s=sum(r.client_cpu_s for r in results),
            server_cpu_s=total("server_cpu_s"),
            machine_cpu_s=total("machine_cpu_s"),
            requests=sum(r.requests_sent for r in results),
            error_samples=[s for r in results for s in r.error_samples][:5],
        )

    @property
    def requests_sent(self) -> int:
        """Requests the servers received from the client in the window (fan-out: every part)."""
        return self.ops if self.requests is None else self.requests

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.duration if self.duration else 0.0

    @property
    def keys_per_s(self) -> float:
        return self.ops_per_s * self.keys_per_op

    @property
    def client_cpu_pct(self) -> float:
        """Client CPU in the window, in percent of one core (2 busy processes: up to 200)."""
        return 100.0 * self.client_cpu_s / self.duration if self.duration else 0.0

    @property
    def server_cpu_pct(self) -> float | None:
        if self.server_cpu_s is None or not self.duration:
            return None
        return 100.0 * self.server_cpu_s / self.duration

    @property
    def other_cpu_pct(self) -> float | None:
        """CPU the rest of the machine used in the window (other processes), percent of a core."""
        if self.machine_cpu_s is None or not self.duration:
            return None
        rest = self.machine_cpu_s - self.client_cpu_s - (self.server_cpu_s or 0.0)
        return max(0.0, 100.0 * rest / self.duration)

    @property
    def server_cpu_per_1k_ops(self) -> float | None:
        if self.server_cpu_s is None or not self.ops:
            return None
        return 1000.0 * self.server_cpu_s / self.ops


# --------------------------------------------------------------------------- worker side


class _HttpLane(Lane):
    """A connection to every endpoint; an operation is one request or several (a fan-out) on
    distinct endpoints, each answer framed by ``Content-Length`` and judged by its status."""

    __slots__ = ("bufs", "failed", "needs", "ok_status", "pending", "statuses")

    def __init__(self, endpoints: Sequence[tuple[str, int]], ok_status: frozenset[int]) -> None:
        super().__init__([self._connect((ep[0], ep[1])) for ep in endpoints])
        n = len(self.socks)
        self.bufs = [b""] * n
        self.needs = [-1] * n
        self.statuses = [0] * n
        self.ok_status = ok_status
        self.pending = 0
        self.failed = False

    @staticmethod
    def _connect(ep: tuple[str, int]) -> socket.socket:
        # A timeout, not non-blocking: recv() is only called when the selector says readable,
        # and sendall() of a large request may then wait for the socket buffer.
        s = socket.create_connection(ep, timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def send(self, op: list[tuple[int, bytes]]) -> None:
        self.pending = self.parts = len(op)
        self.failed = False
        for ep, data in op:
            self.bufs[ep] = b""
            self.needs[ep] = -1
            self.socks[ep].sendall(data)  # small requests: the socket buffer takes them at once

    def receive(self, ep: int) -> bool | None:
        try:
            chunk = self.socks[ep].recv(_RECV)
        except OSError as exc:
            raise LaneClosed(repr(exc)) from exc
        if not chunk:
            raise LaneClosed("connection closed by the server")
        buf = self.bufs[ep] + chunk if self.bufs[ep] else chunk
        need = self.needs[ep]
        if need < 0:
            h = buf.find(b"\r\n\r\n")
            if h < 0:
                self.bufs[ep] = buf
                return None
            head = buf[:h].lower()
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                raise RuntimeError(f"answer without Content-Length: {bytes(head[:200])!r}")
            j = head.find(b"\r\n", i + 2)
            need = self.needs[ep] = h + 4 + int(head[i + 17 : j if j > 0 else len(head)])
            self.statuses[ep] = int(buf[9:12])
        if len(buf) < need:
            self.bufs[ep] = buf
            return None
        self.bufs[ep] = b""
        if self.statuses[ep] not in self.ok_status:
            self.failed = True
            self.failure = f"HTTP {self.statuses[ep]}: {bytes(buf[-200:])!r}"
        self.pending -= 1
        if self.pending:
            return None
        return not self.failed


class _RedisLane(Lane):
    """One redis-py ``Connection``: commands packed by redis-py, answers parsed by it."""

    __slots__ = ("_redis", "conn")

    def __init__(self, target: RedisTarget) -> None:
        import redis

        self._redis = redis
        self.conn = redis.Connection(
            host=target.host, port=target.port, db=target.db, socket_timeout=5
        )
        self.conn.connect()
        sock = self.conn._sock  # redis-py keeps its socket there
        assert sock is not None
        super().__init__([sock])

    def send(self, op: Any) -> None:
        self.conn.send_packed_command(op, check_health=False)

    def receive(self, index: int) -> bool | None:
        redis = self._redis
        try:
            answer = self.conn.read_response()  # the whole answer is in flight: blocks briefly
        except redis.ConnectionError as exc:
            raise LaneClosed(repr(exc)) from exc
        except redis.RedisError as exc:
            self.failure = repr(exc)
            return False
        if answer is None or (type(answer) is list and None in answer):
            self.failure = "missing key in the answer"
            return False
        return True

    def close(self) -> None:
        self.conn.disconnect()


def _drive(target: Target, conns: int, seed: int, go: Connection) -> dict[str, Any]:
    """The one load loop: ``conns`` lanes of ``target`` driven by one selector, closed loop.

    Every lane keeps one operation in flight; when its answer is complete the latency is
    recorded (inside the measured window) and the next operation is sent at once. A lane whose
    connection is lost counts one error and is replaced (until the window ends). Operations
    still unanswered ``HARD_TIMEOUT`` seconds after the window count as errors.
    """
    ops_list = target.operations()
    order = list(range(len(ops_list)))
    random.Random(seed).shuffle(order)
    n = len(order)

    sel = selectors.DefaultSelector()
    lanes: list[Lane] = []

    def open_lane() -> Lane:
        lane = target.connect()
        for i, s in enumerate(lane.socks):
            sel.register(s, selectors.EVENT_READ, (lane, i))
        lanes.append(lane)
        return lane

    def drop(lane: Lane) -> None:
        for s in lane.socks:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(s)
        lane.close()

    for _ in range(conns):
        open_lane()

    go.send(("ready", None))
    t_start, warmup, duration = go.recv()
    measure_from = t_start + warmup
    end = measure_from + duration
    hard_end = end + HARD_TIMEOUT
    lat = array("d")
    record = lat.append
    perf = time.perf_counter
    ops = errors = requests = 0
    samples: list[str] = []
    cursor = seed % n
    cpu0 = cpu1 = None

    while time.perf_counter() < t_start:
        time.sleep(min(0.005, max(0.0, t_start - time.perf_counter())))

    def send(lane: Lane) -> None:
        nonlocal cursor
        op = ops_list[order[cursor]]
        cursor += 1
        if cursor == n:
            cursor = 0
        lane.sent_at = perf()
        lane.send(op)

    active = set(lanes)
    for lane in lanes:
        send(lane)

    while active:
        now = perf()
        if now >= hard_end:
            errors += len(active)
            samples.append(f"{len(active)} operations unanswered {HARD_TIMEOUT}s after the window")
            break
        if cpu0 is None and now >= measure_from:
            cpu0 = time.process_time()
        if cpu1 is None and now >= end:
            cpu1 = time.process_time()
        for key, _ in sel.select(0.1):
            lane, index = key.data
            if lane not in active:
                continue
            try:
                ok = lane.receive(index)
            except LaneClosed as exc:  # count it, replace the lane, go on
                errors += 1
                if len(samples) < 5:
                    samples.append(str(exc))
                drop(lane)
                active.discard(lane)
                if perf() >= end:
                    continue
                try:
                    fresh = open_lane()
                except OSError as exc2:
                    samples.append(f"reconnect failed: {exc2!r}")
                    continue
                active.add(fresh)
                send(fresh)
                continue
            if ok is None:
                continue
            done = perf()
            if done >= measure_from and done < end:
                ops += 1
                requests += lane.parts
                record(done - lane.sent_at)
                if not ok:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(lane.failure)
            if done < end:
                send(lane)
            else:
                active.discard(lane)

    if cpu0 is None:
        cpu0 = time.process_time()
    if cpu1 is None:
        cpu1 = time.process_time()
    for lane in lanes:
        drop(lane)
    sel.close()
    return {
        "ops": ops,
        "requests": requests,
        "errors": errors,
        "lat": lat.tobytes(),
        "cpu": cpu1 - cpu0,
        "samples": samples,
    }


def _worker_main(target: Target, conns: int, seed: int, go: Connection, cpu: int | None) -> None:
    # Ctrl-C goes to the whole foreground group; the parent decides, workers finish their
    # bounded loop (or are terminated by the parent).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if cpu is not None:
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(0, {cpu})
        go.send(("done", _drive(target, conns, seed, go)))
    except BaseException:  # reported to the parent, which raises it
        with contextlib.suppress(OSError):
            go.send(("error", traceback.format_exc()))
    finally:
        go.close()


# --------------------------------------------------------------------------- parent side


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def run_load(
    target: Target,
    *,
    duration: float = 5.0,
    warmup: float = 1.0,
    procs: int = 2,
    conns: int = 4,
    client_cpus: Sequence[int] | None = None,
    server_cpu: Callable[[], float] | None = None,
    progress: Callable[[float], None] | None = None,
    seed: int = 1,
) -> LoadResult:
    """Run ``procs`` x ``conns`` closed-loop lanes against ``target`` for ``warmup`` +
    ``duration`` seconds and merge what the workers measured.

    ``client_cpus``: pin worker i to CPU ``client_cpus[i % len]`` (None: no pinning).
    ``server_cpu``: called at the window's start and end; the difference is reported.
    ``progress``: called with seconds of load elapsed (for a progress bar).
    """
    ctx = mp.get_context("fork")
    workers: list[tuple[Any, Connection]] = []
    try:
        for i in range(procs):
            parent_end, child_end = ctx.Pipe()
            cpu = client_cpus[i % len(client_cpus)] if client_cpus else None
            p = ctx.Process(
                target=_worker_main,
                args=(target, conns, seed * 7919 + i * 104729, child_end, cpu),
                daemon=True,
            )
            p.start()
            child_end.close()
            workers.append((p, parent_end))
        for _p, pipe in workers:
            if not pipe.poll(30):
                raise TimeoutError("a load worker did not connect within 30 s")
            status, payload = pipe.recv()
            if status != "ready":
                raise RuntimeError(f"load worker failed to start:\n{payload}")

        t_start = time.perf_counter() + 0.05
        for _p, pipe in workers:
            pipe.send((t_start, warmup, duration))
        measure_from = t_start + warmup
        end = measure_from + duration
        # Samples at the window's edges: (machine busy seconds, server CPU seconds).
        edges: list[tuple[float | None, float | None]] = []

        def sample_edge() -> None:
            edges.append((machine_busy_seconds(), server_cpu() if server_cpu else None))

        pending = {pipe: p for p, pipe in workers}
        results: list[dict[str, Any]] = []
        deadline = end + HARD_TIMEOUT + 15
        while pending:
            now = time.perf_counter()
            if (len(edges) == 0 and now >= measure_from) or (len(edges) == 1 and now >= end):
                sample_edge()
            if progress is not None:
                progress(min(now, end) - t_start)
            if now > deadline:
                raise TimeoutError("load workers did not finish in time")
            # Wake at the window's edges so the CPU samples line up with the workers' window.
            upcoming = [t - now for t in (measure_from, end)[len(edges) :] if t > now]
            timeout = min([0.2, *upcoming])
            for pipe in wait(list(pending), timeout=max(0.0, timeout)):
                try:
                    status, payload = pipe.recv()  # type: ignore[union-attr]
                except EOFError:
                    raise RuntimeError("a load worker died without a result") from None
                if status != "done":
                    raise RuntimeError(f"load worker failed:\n{payload}")
                results.append(payload)
                del pending[pipe]  # type: ignore[arg-type]
        while len(edges) < 2:
            sample_edge()
    finally:
        for p, pipe in workers:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            pipe.close()

    lat: array[float] = array("d")
    for r in results:
        lat.frombytes(r["lat"])
    return LoadResult.from_latencies(
        lat,
        ops=sum(r["ops"] for r in results),
        errors=sum(r["errors"] for r in results),
        duration=duration,
        keys_per_op=target.keys_per_op,
        procs=procs,
        conns=conns,
        client_cpu_s=sum(r["cpu"] for r in results),
        server_cpu_s=_delta(edges[0][1], edges[1][1]),
        machine_cpu_s=_delta(edges[0][0], edges[1][0]),
        requests=sum(r["requests"] for r in results),
        error_samples=[s for r in results for s in r["samples"]][:5],
    )


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (all cores, everything but idle/iowait)."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    # guest time is already in user time; steal is the hypervisor running someone else.
    not_busy = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(t) - sum(getattr(t, name, 0.0) for name in not_busy)


def wait_for_quiet(
    server_cpu: Callable[[], float] | None = None,
    *,
    max_wait: float = 10.0,
    threshold_pct: float = NOISY_PCT,
    interval: float = 0.5,
) -> tuple[float, float | None]:
    """Wait (at most ``max_wait`` s) until the rest of the machine, i.e. everything but the
    idle server under test, uses less than ``threshold_pct`` of a core.

    Returns (seconds waited, other CPU % in the last interval); other CPU is None when
    /proc/stat cannot be read. Other people's test runs on a 2-core machine would otherwise
    decide the numbers.
    """
    started = time.perf_counter()
    while True:
        b0, s0 = machine_busy_seconds(), server_cpu() if server_cpu else 0.0
        time.sleep(interval)
        b1, s1 = machine_busy_seconds(), server_cpu() if server_cpu else 0.0
        waited = time.perf_counter() - started
        if b0 is None or b1 is None:
            return waited, None
        other = max(0.0, 100.0 * ((b1 - b0) - (s1 - s0)) / interval)
        if other < threshold_pct or waited >= max_wait:
            return waited, other


# --------------------------------------------------------------------------- request builders


def http_request(
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> bytes:
    """One HTTP/1.1 keep-alive request as bytes (built once, sent many times)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
