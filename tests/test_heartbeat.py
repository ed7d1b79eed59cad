"""The heartbeat: rounds driven by a scripted prober against the registry, the HTTP prober
against a real node, and ``manage.py heartbeat`` marking a killed node down."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.heartbeat import Heartbeat, HttpProber, Probe
from nodes.models import Node, RingVersion
from tests.processes import (
    ROOT,
    NodeProcess,
    Registry,
    free_port,
    manage,
    running_node,
    wait_for,
)

Status = Node.Status
SECRET = "heartbeat-test-secret"
HEARTBEAT = [sys.executable, "manage.py", "heartbeat"]


class Script:
    """A prober that answers from a table: node name -> Probe (default: no answer)."""

    def __init__(self) -> None:
        self.answers: dict[str, Probe] = {}
        self.probed: list[list[str]] = []

    def __call__(self, nodes: list[Node]) -> list[Probe]:
        self.probed.append([n.name for n in nodes])
        return [self.answers.get(n.name, Probe(alive=False, error="scripted")) for n in nodes]


def add(name: str, status: str = Status.UP) -> Node:
    return Node.objects.create(name=name, url=f"http://{name}.invalid", status=status)


def status(name: str) -> str:
    return Node.objects.get(name=name).status


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def heartbeat(script: Script) -> Heartbeat:
    return Heartbeat(prober=script, failures=3)


pytestmark = pytest.mark.django_db


def test_a_node_goes_down_after_k_misses_in_a_row(heartbeat: Heartbeat, script: Script) -> None:
    add("a")
    add("b")
    script.answers["b"] = Probe(alive=True)
    before = RingVersion.current()
    for _ in range(2):
        assert heartbeat.beat().moves == []
    assert status("a") == Status.UP
    assert Node.objects.get(name="a").consecutive_failures == 2
    done = heartbeat.beat()
    assert done.moves == [("a", Status.UP, Status.DOWN)]
    assert status("a") == Status.DOWN
    assert status("b") == Status.UP
    assert RingVersion.current() == before + 1  # the ring changed with the status


def test_an_answer_resets_the_count_and_records_stats(heartbeat: Heartbeat, script: Script) -> None:
    add("a")
    heartbeat.beat()
    heartbeat.beat()
    script.answers["a"] = Probe(alive=True, stats={"items": 7})
    heartbeat.beat()
    node = Node.objects.get(name="a")
    assert node.consecutive_failures == 0
    assert node.last_stats == {"items": 7}
    assert node.last_heartbeat is not None
    version = RingVersion.current()
    del script.answers["a"]
    heartbeat.beat()
    heartbeat.beat()
    assert status("a") == Status.UP  # two misses after the answer: not three in a row
    assert RingVersion.current() == version  # bookkeeping does not change the ring


def test_a_node_that_answers_again_rejoins_and_goes_up_only_by_itself(
    heartbeat: Heartbeat, script: Script
) -> None:
    add("a", Status.DOWN)
    script.answers["a"] = Probe(alive=True)
    assert heartbeat.beat().moves == [("a", Status.DOWN, Status.JOINING)]
    # Up waits for its keys: the node moves itself once it pulled them (nodes.migration).
    assert heartbeat.beat().moves == []
    assert status("a") == Status.JOINING


def test_a_joining_node_that_stops_answering_goes_down(
    heartbeat: Heartbeat, script: Script
) -> None:
    add("a", Status.JOINING)
    for _ in range(3):
        heartbeat.beat()
    assert status("a") == Status.DOWN


def test_a_draining_node_is_alive_until_it_stops_answering(
    heartbeat: Heartbeat, script: Script
) -> None:
    add("a", Status.DRAINING)
    script.answers["a"] = Probe(alive=True, draining=True)
    heartbeat.beat()
    heartbeat.beat()
    assert status("a") == Status.DRAINING
    assert Node.objects.get(name="a").last_heartbeat is not None
    del script.answers["a"]
    heartbeat.beat()
    heartbeat.beat()
    assert status("a") == Status.DRAINING  # two misses: not yet
    heartbeat.beat()
    # Killed mid-drain: down, so that reads stop asking it and a restart rejoins.
    assert status("a") == Status.DOWN


def test_disabled_nodes_are_not_probed(heartbeat: Heartbeat, script: Script) -> None:
    add("a")
    add("off", Status.DISABLED)
    for _ in range(4):
        heartbeat.beat()
    assert all(names == ["a"] for names in script.probed)
    assert status("off") == Status.DISABLED


def test_two_heartbeats_move_a_node_once(script: Script) -> None:
    add("a")
    one, two = Heartbeat(prober=script, failures=2), Heartbeat(prober=script, failures=2)
    before = RingVersion.current()
    moves = [one.beat().moves, two.beat().moves, one.beat().moves, two.beat().moves]
    assert sum(len(m) for m in moves) == 1
    assert status("a") == Status.DOWN
    assert RingVersion.current() == before + 1


def test_a_stale_round_does_not_undo_an_operator(script: Script) -> None:
    add("a")
    heartbeat = Heartbeat(prober=script, failures=1)

    def operator_disables_meanwhile(nodes: list[Node]) -> list[Probe]:
        Node.objects.filter(name="a").set_status(Status.DISABLED)
        return script(nodes)

    heartbeat.prober = operator_disables_meanwhile
    assert heartbeat.beat().moves == []  # it saw "up", the row says "disabled": no move
    assert status("a") == Status.DISABLED


def test_failures_must_be_positive(script: Script) -> None:
    with pytest.raises(ValueError, match="failures"):
        Heartbeat(prober=script, failures=0)


# The HTTP prober and the command, against real node processes.


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    path = tmp_path_factory.mktemp("heartbeat") / "registry.sqlite3"
    return Registry(f"sqlite:///{path}", CACHE_SECRET=SECRET)


@pytest.fixture
def live_node(registry: Registry, tmp_path: Path) -> Iterator[NodeProcess]:
    with running_node(registry, "n1", tmp_path) as proc:
        yield proc


def test_the_http_prober_sees_a_live_node_and_its_stats(live_node: NodeProcess) -> None:
    prober = HttpProber(timeout=2.0, secret=SECRET)
    try:
        alive = Node(name="n1", url=live_node.url, status=Status.UP)
        closed = Node(name="gone", url=f"http://127.0.0.1:{free_port()}", status=Status.UP)
        seen, missed = prober([alive, closed])
    finally:
        prober.close()
    assert seen.alive
    assert not seen.draining
    assert seen.stats is not None
    assert seen.stats["node"] == "n1"
    assert not missed.alive
    assert missed.error


def test_the_http_prober_counts_a_draining_node_alive(live_node: NodeProcess) -> None:
    database = live_node.registry.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE nodes_node SET status = 'draining' WHERE name = 'n1'")
        db.execute("UPDATE nodes_ringversion SET version = version + 1")

    def draining() -> bool:
        import requests

        return requests.get(f"{live_node.url}/health", timeout=2).status_code == 503

    wait_for(draining, timeout=10)
    prober = HttpProber(timeout=2.0, secret=SECRET)
    try:
        (probe,) = prober([Node(name="n1", url=live_node.url, status=Status.DRAINING)])
    finally:
        prober.close()
    assert probe.alive
    assert probe.draining


def test_the_command_marks_a_killed_node_down(registry: Registry, tmp_path: Path) -> None:
    node = NodeProcess(registry, "n9", tmp_path)
    beat: subprocess.Popen[bytes] | None = None
    database = registry.env["DATABASE_URL"].removeprefix("sqlite:///")

    def status_of(name: str) -> str | None:
        with sqlite3.connect(database) as db:
            row = db.execute("SELECT status FROM nodes_node WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    try:
        node.start().wait_ready()
        beat = subprocess.Popen(
            [*HEARTBEAT, "--interval", "0.2", "--timeout", "0.2", "--failures", "3"],
            cwd=ROOT,
            env=registry.env,
            stdout=(tmp_path / "heartbeat.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        # It is alive: the heartbeat records it (the node registered itself without one).
        wait_for(
            lambda: (
                sqlite3.connect(database)
                .execute("SELECT last_heartbeat FROM nodes_node WHERE name = 'n9'")
                .fetchone()[0]
                is not None
            ),
            timeout=15,
        )
        killed = time.monotonic()
        node.kill()
        wait_for(lambda: status_of("n9") == Status.DOWN, timeout=0.2 * 3 + 1 + 2)
        detected = time.monotonic() - killed
        assert detected < 0.2 * 3 + 1 + 2  # interval x K + 1 s, and slack for a loaded CI
    finally:
        node.stop()
        if beat is not None:
            beat.terminate()
            beat.wait(timeout=10)
    assert beat.returncode == 0, (tmp_path / "heartbeat.log").read_text()
    assert "n9: up -> down" in (tmp_path / "heartbeat.log").read_text()


def test_heartbeats_on_a_postgresql_registry_agree(tmp_path: Path) -> None:
    """Two ``heartbeat --once`` runs at a time, on PostgreSQL: a dead node goes down once (one
    ring version bump), a live one stays up."""
    from tests.cluster import postgres_available, postgres_database

    if not postgres_available():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (user postgres)")
    with postgres_database() as url:
        registry = Registry(url, CACHE_SECRET=SECRET)
        with running_node(registry, "live", tmp_path):
            dead = f"http://127.0.0.1:{free_port()}"
            before = _pg_version(url)
            add = f"from nodes.models import Node; Node.objects.create(name='dead', url='{dead}')"
            manage(registry.env, "shell", "-c", add)
            for _ in range(3):  # K = 3 rounds, each run twice at once
                runs = [
                    subprocess.Popen(
                        [*HEARTBEAT, "--once", "--failures", "3", "--timeout", "1"],
                        cwd=ROOT,
                        env=registry.env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                    for _ in range(2)
                ]
                outputs = [r.communicate(timeout=60)[0].decode() for r in runs]
                assert all(r.returncode == 0 for r in runs), outputs
            rows = _pg_rows(url)
            bumps = _pg_version(url) - before
    assert rows["dead"] == (Status.DOWN, 6)  # six misses counted
    assert rows["live"] == (Status.UP, 0)
    assert bumps == 2  # the dead node's row, then one move to down: no flapping


def _pg_rows(url: str) -> dict[str, tuple[str, int]]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT name, status, consecutive_failures FROM nodes_node").fetchall()
    return {name: (status, failures) for name, status, failures in rows}


def _pg_version(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM nodes_ringversion WHERE id = 1").fetchone()
    return int(row[0]) if row else 0
