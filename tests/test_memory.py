"""Memory of a served node: batch writes must not make its RSS creep (a real gunicorn node).

Each API request leaves reference cycles (DRF's view, request and parser context) holding its
parsed body; before ``gunicorn_conf.post_worker_init`` froze the loaded app out of the
collector, those reached the oldest generation and stayed there, and a node rewriting the same
keys grew by ~1 MiB per 50,000 batch-set items without end.
"""

from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest
import requests

from tests.processes import NodeProcess, Registry, running_node

KEYS = 20_000
ITEMS_PER_CALL = 1800  # ~256 KiB bodies: the creep grew with the body size
VALUE = "x" * 98


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    env = {"CACHE_MAX_BYTES": str(2**30), "CACHE_MAX_BATCH_KEYS": "2000"}
    with running_node(registry, "n1", tmp_path, **env) as proc:
        yield proc


def worker_rss(node: NodeProcess) -> int:
    assert node.proc is not None
    children = psutil.Process(node.proc.pid).children(recursive=True)
    return max(children or [psutil.Process(node.proc.pid)], key=lambda p: p.pid).memory_info().rss


def rewrite_all(node: NodeProcess, session: requests.Session) -> None:
    for start in range(0, KEYS, ITEMS_PER_CALL):
        items = [
            {"key": f"k{i:09d}", "value": VALUE}
            for i in range(start, min(start + ITEMS_PER_CALL, KEYS))
        ]
        r = session.post(
            f"{node.url}/api/v1/batch/set",
            data=orjson.dumps({"items": items}),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["failed"] == []


def test_rewriting_the_same_keys_keeps_rss_flat(node: NodeProcess) -> None:
    with requests.Session() as session:
        session.headers["X-API-Key"] = node.registry.api_key
        for _ in range(3):  # the store, the dict and the allocator's pools reach their size
            rewrite_all(node, session)
        rss = []
        for _ in range(12):  # 240,000 more items over the same 20,000 keys
            rewrite_all(node, session)
            rss.append(worker_rss(node))
        stats = session.get(f"{node.url}/api/v1/stats", timeout=10).json()
    assert stats["items"] == KEYS
    # Garbage is collected every few seconds, so RSS may step up early; then it stays. Before
    # the fix it grew ~1.5 MiB with every round (~9 MiB over the last six).
    late = rss[-1] - rss[5]
    mib = [f"{(r - rss[0]) / 2**20:.1f}" for r in rss]
    assert late < 1.5 * 2**20, f"RSS kept growing over the rounds (MiB): {mib}"
