"""The heartbeat: probe every node, record what it saw, and move failed nodes out of the ring.

One round (``Heartbeat.beat``) probes every node that is not ``disabled`` at once (each probe
bounded by the timeout), then writes, per node, in the registry:

- an answer (``/health`` 200, or 503 from a draining node): ``last_heartbeat``, failures
  reset to 0, ``last_stats`` from the node's stats (an internal call with the cluster secret);
  a ``down`` node that answers again goes ``joining`` (the node itself goes ``up`` once it
  pulled its keys: ``nodes.migration``);
- no answer: ``consecutive_failures`` + 1, and after ``failures`` in a row an ``up``,
  ``joining`` or ``draining`` node goes ``down`` (a node killed while draining leaves).

Status moves are conditional updates (``filter(pk=..., status=<what this round saw>)``) that
bump the ring version in the same transaction, so several heartbeats may run at once: the
second one to act on the same observation changes nothing, and none undoes another's move
with a stale view. The prober is injectable, so tests drive rounds without sockets where they
want to.

When the registry cannot be reached, a round is skipped and logged; nodes go on with their
last ring (``nodes.membership``), and the heartbeat catches up when the database returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import urllib3
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from cacheapi.peer.client import PeerClient, Pending
from nodes.models import Node

log = logging.getLogger(__name__)

Status = Node.Status


@dataclass(frozen=True)
class Probe:
    """What one probe of one node saw."""

    alive: bool
    draining: bool = False
    stats: dict[str, Any] | None = None
    error: str = ""


Prober = Callable[[list[Node]], list[Probe]]


@dataclass
class Round:
    """What one round did: the nodes it probed and the status moves it made."""

    probed: list[str] = field(default_factory=list)
    alive: list[str] = field(default_factory=list)
    moves: list[tuple[str, str, str]] = field(default_factory=list)  # (node, from, to)


class HttpProber:
    """Probes nodes over HTTP(S): ``GET /health`` (TLS verified against ``ca_certs``, or the
    system's CAs), then the node's stats as an internal call with the cluster secret."""

    def __init__(self, *, timeout: float, secret: str, ca_certs: str | None = None) -> None:
        self.timeout = timeout
        self.http = urllib3.PoolManager(
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or None,
        )
        self.peers = PeerClient(secret=secret, timeout=timeout, ca_certs=ca_certs or None)

    def __call__(self, nodes: list[Node]) -> list[Probe]:
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
            probes = list(pool.map(self._health, nodes))
        # Every stats call is sent before any answer is read, so they take one timeout in all.
        calls = [
            self._ask_stats(n) if p.alive else None for n, p in zip(nodes, probes, strict=True)
        ]
        return [
            self._with_stats(n, p, call) for n, p, call in zip(nodes, probes, calls, strict=True)
        ]

    def _health(self, node: Node) -> Probe:
        try:
            r = self.http.request("GET", node.url.rstrip("/") + "/health")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Probe(alive=False, error=str(exc))
        if r.status == 200:
            return Probe(alive=True)
        if r.status == 503 and _says_draining(r.data):
            return Probe(alive=True, draining=True)
        return Probe(alive=False, error=f"/health answered {r.status}")

    def _ask_stats(self, node: Node) -> Pending[dict[str, Any]] | None:
        try:
            return self.peers.start_stats(node.ring_node())
        except Exception as exc:  # stats are a bonus: a live node stays alive without them
            log.info("stats of %s: %s", node.name, exc)
            return None

    @staticmethod
    def _with_stats(node: Node, probe: Probe, call: Pending[dict[str, Any]] | None) -> Probe:
        if call is None:
            return probe
        try:
            stats = call.result()
        except Exception as exc:  # as in _ask_stats
            log.info("stats of %s: %s", node.name, exc)
            return probe
        return Probe(alive=True, draining=probe.draining, stats=stats)

    def close(self) -> None:
        self.http.clear()
        self.peers.close()


def _says_draining(body: bytes) -> bool:
    try:
        return orjson.loads(body).get("status") == "draining"
    except (orjson.JSONDecodeError, AttributeError):
        return False


class Heartbeat:
    def __init__(self, *, prober: Prober, failures: int = 3) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures!r}.")
        self.prober = prober
        self.failures = failures

    def beat(self) -> Round:
        """One round: probe every node not disabled, then record and move statuses."""
        done = Round()
        nodes = list(Node.objects.exclude(status=Status.DISABLED))
        probes = self.prober(nodes)
        now = timezone.now()
        for node, probe in zip(nodes, probes, strict=True):
            done.probed.append(node.name)
            if probe.alive:
                done.alive.append(node.name)
                self._answered(node, probe, now, done)
            else:
                self._missed(node, probe, done)
        return done

    def run(
        self,
        interval: float,
        stop: threading.Event,
        on_round: Callable[[Round], None] | None = None,
    ) -> None:
        """Beat every ``interval`` seconds until ``stop`` is set; a round that fails on the
        registry is logged and the next one tries again."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                done = self.beat()
            except DatabaseError as exc:
                log.warning("heartbeat round skipped, registry unreachable: %s", exc)
            else:
                if on_round is not None:
                    on_round(done)
            # Rounds start every ``interval`` (a slow round shortens the wait, never below 0).
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _answered(self, node: Node, probe: Probe, now: Any, done: Round) -> None:
        fields: dict[str, Any] = {"last_heartbeat": now, "consecutive_failures": 0}
        if probe.stats is not None:
            fields["last_stats"] = probe.stats
        Node.objects.filter(pk=node.pk).update(**fields)
        if node.status == Status.DOWN:
            self._move(node, Status.DOWN, Status.JOINING, done)

    def _missed(self, node: Node, probe: Probe, done: Round) -> None:
        with transaction.atomic():
            Node.objects.filter(pk=node.pk).update(
                consecutive_failures=F("consecutive_failures") + 1
            )
            failures = (
                Node.objects.filter(pk=node.pk)
                .values_list("consecutive_failures", flat=True)
                .first()
            )
        log.info("%s did not answer (%s): %s in a row", node.name, probe.error, failures)
        down = failures is not None and failures >= self.failures
        if down and node.status in (Status.UP, Status.JOINING, Status.DRAINING):
            self._move(node, node.status, Status.DOWN, done)

    @staticmethod
    def _move(node: Node, seen: str, to: str, done: Round) -> None:
        """Move ``node`` from the status this round saw to ``to``, unless it changed meanwhile
        (another heartbeat, an operator): then this round's view is stale and it does nothing."""
        if Node.objects.filter(pk=node.pk, status=seen).set_status(to):
            log.warning("node %s: %s -> %s", node.name, seen, to)
            done.moves.append((node.name, seen, to))
