"""``manage.py heartbeat``: probe every node each second and mark failed nodes down.

Run one (or more: their status moves are conditional, so they do not flap) next to the nodes,
against the same registry. ``--once`` runs a single round and prints what it saw, for cron or a
quick look. Defaults come from ``HEARTBEAT_*`` in ``cacheapi.settings``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cacheapi.settings import cluster_settings
from nodes.heartbeat import Heartbeat, HttpProber, Round


class Command(BaseCommand):
    help = "Probe every registered node and move nodes that stop answering to down."

    def add_arguments(self, parser: CommandParser) -> None:
        s = cluster_settings
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help=f"seconds between rounds ({s.HEARTBEAT_INTERVAL})",
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help=f"seconds per probe ({s.HEARTBEAT_TIMEOUT})"
        )
        parser.add_argument(
            "--failures",
            type=int,
            default=None,
            help=f"missed rounds in a row before a node is down ({s.HEARTBEAT_FAILURES})",
        )
        parser.add_argument("--once", action="store_true", help="run one round and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        s = cluster_settings
        interval = _option(options["interval"], s.HEARTBEAT_INTERVAL, "--interval")
        timeout = _option(options["timeout"], s.HEARTBEAT_TIMEOUT, "--timeout")
        failures = options["failures"] if options["failures"] is not None else s.HEARTBEAT_FAILURES
        if int(failures) < 1:
            raise CommandError("--failures must be at least 1")
        prober = HttpProber(timeout=timeout, secret=s.SECRET, ca_certs=s.CA_BUNDLE or None)
        heartbeat = Heartbeat(prober=prober, failures=int(failures))
        try:
            if options["once"]:
                self._report(heartbeat.beat())
                return
            stop = threading.Event()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            previous = {
                sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                self.stdout.write(
                    f"heartbeat: every {interval:g} s, {timeout:g} s per probe, "
                    f"down after {failures} misses"
                )
                self.stdout.flush()
                heartbeat.run(interval, stop, self._report_moves)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        finally:
            prober.close()

    def _report(self, done: Round) -> None:
        for name in done.probed:
            self.stdout.write(f"{name}: {'up' if name in done.alive else 'no answer'}")
        self._report_moves(done)

    def _report_moves(self, done: Round) -> None:
        for name, seen, to in done.moves:
            self.stdout.write(f"{name}: {seen} -> {to}")
        if done.moves:
            self.stdout.flush()


def _option(value: float | None, default: Any, name: str) -> float:
    chosen = float(value if value is not None else default)
    if not chosen > 0:
        raise CommandError(f"{name} must be a positive number of seconds")
    return chosen
