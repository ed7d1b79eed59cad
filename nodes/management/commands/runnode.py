"""``manage.py runnode --name n1 --port 8001``: serve one cache node with gunicorn.

The command replaces itself with gunicorn (same PID, so a supervisor's signals reach gunicorn's
master directly). Everything the node needs travels in ``CACHE_*`` environment variables, which
``cacheapi.settings`` reads in the worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cacheapi.settings import cluster_settings

CONF = Path(settings.BASE_DIR) / "cache_project" / "gunicorn_conf.py"


class Command(BaseCommand):
    help = "Run one cache node (a single gunicorn worker process) and register it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default=None, help="node name (default NODE_NAME)")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--url", default=None, help="URL peers use (default from host/port)")
        parser.add_argument("--worker-class", default=None, choices=["gevent", "gthread"])
        parser.add_argument("--threads", type=int, default=None, help="threads (gthread only)")
        parser.add_argument(
            "--workers", type=int, default=1, help="must be 1: the store lives in the process"
        )
        parser.add_argument("--certfile", default=None)
        parser.add_argument("--keyfile", default=None)
        parser.add_argument(
            "--no-register", action="store_true", help="do not add this node to the registry"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] != 1:
            raise CommandError(
                f"--workers {options['workers']}: a cache node runs exactly one worker process, "
                "because the store lives in that process. Start more nodes instead."
            )
        # TLS_CERTFILE / TLS_KEYFILE (CACHE_CLUSTER or the environment) when not given here.
        options["certfile"] = options["certfile"] or cluster_settings.TLS_CERTFILE or None
        options["keyfile"] = options["keyfile"] or cluster_settings.TLS_KEYFILE or None
        if bool(options["certfile"]) != bool(options["keyfile"]):
            raise CommandError("--certfile and --keyfile go together")
        name = options["name"] or cluster_settings.NODE_NAME
        scheme = "https" if options["certfile"] else "http"
        url = options["url"] or f"{scheme}://{options['host']}:{options['port']}"
        worker_class = options["worker_class"] or cluster_settings.WORKER_CLASS
        env = dict(os.environ)
        env.update(
            {
                "CACHE_NODE_NAME": name,
                "CACHE_NODE_URL": url,
                "CACHE_BIND": f"{options['host']}:{options['port']}",
                "CACHE_WORKER_CLASS": worker_class,
                "CACHE_THREADS": str(options["threads"] or cluster_settings.THREADS),
                "CACHE_WORKER_CONNECTIONS": str(cluster_settings.WORKER_CONNECTIONS),
                "CACHE_PEER_CONNECTIONS": str(cluster_settings.PEER_CONNECTIONS),
                "CACHE_DRAIN_TIMEOUT": str(cluster_settings.DRAIN_TIMEOUT),
                "DJANGO_SETTINGS_MODULE": os.environ.get(
                    "DJANGO_SETTINGS_MODULE", "cache_project.settings"
                ),
            }
        )
        if options["certfile"]:
            env["CACHE_TLS_CERTFILE"] = str(Path(options["certfile"]).resolve())
            env["CACHE_TLS_KEYFILE"] = str(Path(options["keyfile"]).resolve())
        if not options["no_register"]:
            self._register(name, url)
        self.stdout.write(f"node {name} serving on {url} ({worker_class} worker)")
        self.stdout.flush()
        argv = [sys.executable, "-m", "gunicorn", "-c", str(CONF), "cache_project.wsgi:application"]
        os.chdir(settings.BASE_DIR)
        os.execve(sys.executable, argv, env)

    def _register(self, name: str, url: str) -> None:
        from django.db import DatabaseError

        from nodes.models import Node

        try:
            node = Node.register(name, url)
        except DatabaseError as exc:
            raise CommandError(
                f"could not register node {name} in the registry ({exc}); "
                "run `manage.py migrate` or check DATABASE_URL"
            ) from exc
        self.stdout.write(f"registered {name} ({node.status}, weight {node.weight})")
