"""``manage.py runcluster --nodes 3``: a whole local cluster from one command.

Migrates the registry, starts N ``runnode`` children on consecutive free ports and, once they
answer, a ``heartbeat`` child that marks a node that stops answering down; prints the admin
URL, an admin login and an API key (once), then waits. Ctrl-C or SIGTERM stops every
child; children also get SIGINT if this process dies (PR_SET_PDEATHSIG), so none is orphaned.

Each node runs in a session of its own, so a terminal's Ctrl-C (SIGINT to the whole foreground
process group) reaches only this command, which passes the signal on to each node's gunicorn
master: SIGINT is gunicorn's quick shutdown, SIGTERM its graceful one. Were the nodes in the
terminal's group, each gunicorn worker would get SIGINT from the terminal and SIGQUIT from its
master, and print a gevent traceback while exiting twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import urllib3
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGINT (a quick stop: no hand-off of keys to nodes that
    are stopping too) when the parent exits (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def consecutive_free_ports(host: str, start: int, count: int, tries: int = 200) -> list[int]:
    for base in range(start, start + tries):
        ports = list(range(base, base + count))
        if all(port_free(host, p) for p in ports):
            return ports
    raise CommandError(f"no {count} consecutive free ports from {start}")


class Command(BaseCommand):
    help = "Start a local cluster of N nodes on the SQLite registry; Ctrl-C stops it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--base-port", type=int, default=8001)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--replicas", type=int, default=None)
        parser.add_argument("--admin-user", default="admin")
        parser.add_argument(
            "--tls",
            action="store_true",
            help="serve HTTPS with a development CA and node certificates (manage.py gencerts)",
        )
        parser.add_argument(
            "--certs", default=".certs", help="where --tls keeps its CA and certificates"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["nodes"]
        if count < 1:
            raise CommandError("--nodes must be at least 1")
        host = options["host"]
        call_command("migrate", interactive=False, verbosity=0)
        password = self._admin_login(options["admin_user"])
        api_key = self._api_key()
        ports = consecutive_free_ports(host, options["base_port"], count)
        env = {
            **os.environ,
            "CACHE_SECRET": os.environ.get("CACHE_SECRET") or secrets.token_hex(32),
            # Never the repository's development key: admin sessions are signed with it.
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        }
        if options["replicas"]:
            env["CACHE_REPLICAS"] = str(options["replicas"])
        names = [f"n{i + 1}" for i in range(count)]
        certs: Path | None = None
        if options["tls"]:
            from nodes.management.commands.gencerts import generate

            certs = Path(options["certs"]).resolve()
            generate(certs, names, [host], days=30)
            env["CACHE_CA_BUNDLE"] = str(certs / "ca.pem")
            self.stdout.write(f"TLS: certificates in {certs} (CA: {certs / 'ca.pem'})")
        self._forget_other_nodes(names)

        children: list[subprocess.Popen[bytes]] = []
        heartbeat: subprocess.Popen[bytes] | None = None
        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for i, port in enumerate(ports):
                children.append(self._spawn(f"n{i + 1}", host, port, env, certs))
            scheme = "https" if certs is not None else "http"
            urls = [f"{scheme}://{host}:{p}" for p in ports]
            ca = str(certs / "ca.pem") if certs is not None else None
            if not self._wait_healthy(urls, children, lambda: stopping, ca):
                return  # Ctrl-C during start-up: the finally below stops what started
            heartbeat = self._spawn_heartbeat(env)
            self.stdout.write(self.style.SUCCESS(f"cluster of {count} nodes is up:"))
            for i, url in enumerate(urls):
                self.stdout.write(f"  n{i + 1}  {url}")
            self.stdout.write(
                f"admin:    {urls[0]}/admin/  (user {options['admin_user']!r}, "
                f"password {password!r})"
            )
            self.stdout.write(f"API key:  {api_key}   (shown once; read,write,admin)")
            self.stdout.write(
                f"try:      curl {'' if ca is None else f'--cacert {ca} '}"
                f"-H 'X-API-Key: {api_key}' {urls[0]}/api/v1/cluster/ring"
            )
            self.stdout.write("Ctrl-C stops the cluster.")
            self.stdout.flush()
            while not stopping:
                dead = [c for c in children if c.poll() is not None]
                if dead:
                    raise CommandError(f"a node exited with code {dead[0].returncode}")
                if heartbeat.poll() is not None:
                    raise CommandError(f"the heartbeat exited with code {heartbeat.returncode}")
                time.sleep(0.2)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            # The heartbeat first: nodes stopping together must not be marked down one by one.
            self._stop_all([heartbeat] if heartbeat is not None else [], signal.SIGTERM)
            # SIGINT is gunicorn's quick stop: SIGTERM would make every node hand its keys to
            # the others, which are stopping too.
            self._stop_all(children, signal.SIGINT)
            self.stdout.write("cluster stopped")

    def _spawn(
        self, name: str, host: str, port: int, env: dict[str, str], certs: Path | None = None
    ) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "manage.py",
            "runnode",
            "--name",
            name,
            "--host",
            host,
            "--port",
            str(port),
        ]
        if certs is not None:
            argv += [
                "--certfile",
                str(certs / f"{name}.pem"),
                "--keyfile",
                str(certs / f"{name}.key"),
            ]
        return subprocess.Popen(
            argv,
            cwd=Path(settings.BASE_DIR),
            env=env,
            start_new_session=True,  # out of the terminal's reach: see the module docstring
            preexec_fn=_die_with_parent,
        )

    def _spawn_heartbeat(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """``manage.py heartbeat`` beside the nodes: it marks a node that stops answering down."""
        return subprocess.Popen(
            [sys.executable, "manage.py", "heartbeat"],
            cwd=Path(settings.BASE_DIR),
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _wait_healthy(
        self,
        urls: list[str],
        children: list[subprocess.Popen[bytes]],
        stop_requested: Callable[[], bool],
        ca_certs: str | None = None,
    ) -> bool:
        """Wait until every node answers /health (over verified TLS with ``ca_certs``); False
        if a stop was requested first."""
        http = urllib3.PoolManager(retries=False, timeout=1.0, ca_certs=ca_certs)
        deadline = time.monotonic() + 60
        pending = set(urls)
        while pending:
            if stop_requested():
                return False
            if time.monotonic() > deadline:
                raise CommandError(f"nodes did not become healthy: {sorted(pending)}")
            if any(c.poll() is not None for c in children):
                raise CommandError("a node exited during start-up (see its output above)")
            for url in list(pending):
                try:
                    if http.request("GET", f"{url}/health").status == 200:
                        pending.discard(url)
                except (urllib3.exceptions.HTTPError, OSError):
                    pass
            time.sleep(0.1)
        return True

    @staticmethod
    def _stop_all(children: list[subprocess.Popen[bytes]], signum: signal.Signals) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)

    @staticmethod
    def _admin_login(username: str) -> str:
        from django.contrib.auth import get_user_model

        user_model = get_user_model()
        password = secrets.token_urlsafe(12)
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user_model.objects.create_superuser(username=username, email="", password=password)
        else:
            user.set_password(password)
            user.is_staff = user.is_superuser = user.is_active = True
            user.save()
        return password

    @staticmethod
    def _api_key() -> str:
        from cacheapi.models import ApiKey

        return ApiKey.create_key(f"runcluster-{int(time.time())}", "read,write,admin")[1]

    @staticmethod
    def _forget_other_nodes(names: list[str]) -> None:
        """Nodes of an earlier, larger local run would stay in the ring as dead members: mark
        them down (not deleted: an operator may still want their rows)."""
        from nodes.models import Node

        Node.objects.exclude(name__in=names).exclude(status=Node.Status.DISABLED).set_status(
            Node.Status.DOWN
        )
