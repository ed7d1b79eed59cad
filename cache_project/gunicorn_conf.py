"""gunicorn configuration of a node (``manage.py runnode`` passes it with ``-c``).

A node is one worker process: the store lives inside it, so a second worker would be a second
cache that disagrees with the first. Anything asking for more (``--workers``, ``WEB_CONCURRENCY``,
``GUNICORN_CMD_ARGS``) is refused at start with a clear error.
"""

import gc
import math
import os
import signal

from cache_project.workers import raise_open_files_limit

bind = os.environ.get("CACHE_BIND", "127.0.0.1:8001")
workers = 1
# gunicorn's own workers, hardened (JSON errors; gevent: connection limits and timeouts).
WORKER_CLASSES = {
    "gevent": "cache_project.workers.GeventWorker",
    "gthread": "cache_project.workers.ThreadWorker",
}
worker_class = os.environ.get("CACHE_WORKER_CLASS", "gevent")
worker_class = WORKER_CLASSES.get(worker_class, worker_class)
threads = int(os.environ.get("CACHE_THREADS", "4"))
# runnode passes the node's settings (cacheapi.settings) in CACHE_* variables: the master does
# not load Django (nor asyncio, which must wait for the gevent worker to patch the process).
worker_connections = int(os.environ.get("CACHE_WORKER_CONNECTIONS", "16384"))
# Every connection is a file descriptor: room for the clients, the peers' slots, and the
# node's own files and outgoing connections.
OPEN_FILES_NEEDED = worker_connections + int(os.environ.get("CACHE_PEER_CONNECTIONS", "256")) + 1024
keepalive = 30
timeout = 60
# Requests finish in milliseconds; what graceful shutdown would wait for is mostly idle
# keep-alive connections that peers hold open, so a short grace keeps stops fast.
# SIGTERM first hands the node's keys off (up to DRAIN_TIMEOUT, cache_project.workers), so the
# master waits that long on top before it kills the worker.
graceful_timeout = int(os.environ.get("CACHE_GRACEFUL_TIMEOUT", "3")) + math.ceil(
    float(os.environ.get("CACHE_DRAIN_TIMEOUT", "0"))
)
accesslog = os.environ.get("CACHE_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = f"cache-node-{os.environ.get('CACHE_NODE_NAME', 'n1')}"
# gunicorn's control socket (gunicornc) defaults to one path per user, so several nodes on one
# machine would take it from each other (and log errors); it can also change the worker count,
# which a node must not do. Nodes are managed through the registry and signals instead.
control_socket_disable = True
certfile = os.environ.get("CACHE_TLS_CERTFILE") or None
keyfile = os.environ.get("CACHE_TLS_KEYFILE") or None


def on_starting(server):
    if server.cfg.workers != 1:
        raise SystemExit(
            f"refusing to start a cache node with {server.cfg.workers} workers: the store lives "
            "in the worker process, so it must be exactly 1 (scale by adding nodes instead)"
        )
    soft, hard = raise_open_files_limit(OPEN_FILES_NEEDED)
    if soft < OPEN_FILES_NEEDED:
        server.log.warning(
            "open files limit is %s (hard limit %s), below the %s that WORKER_CONNECTIONS and "
            "PEER_CONNECTIONS need: raise the hard limit (ulimit -Hn) or lower them",
            soft,
            hard,
            OPEN_FILES_NEEDED,
        )


def nworkers_changed(server, new_value, old_value):
    # TTIN/TTOU would add workers (separate caches); keep exactly one.
    if new_value != 1:
        server.log.error(
            "a cache node runs exactly one worker; ignoring the change to %s", new_value
        )
        server.num_workers = 1


def post_worker_init(worker):
    # A terminal's Ctrl-C sends SIGINT to the master and the worker alike; the master answers it
    # with SIGQUIT to the worker, which would then exit twice and print gevent's "failed with
    # SystemExit" traceback. The master alone decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Every API request leaves reference cycles (DRF's view <-> request <-> parser_context)
    # holding its parsed body; those alive across a gen-1 collection reach the oldest
    # generation, which CPython collects only once it grew by a quarter of the ~100k
    # objects the loaded app keeps: RSS grew ~1 MiB per 50,000 batch-set items, unbounded
    # in practice. Freezing the app's objects leaves the oldest generation small, so full
    # collections run often and stay cheap; the collect() resets CPython's count of it.
    gc.freeze()
    gc.collect()
