"""The node registry: ring version bumps, registration, ``load_ring``, the admin and the
cluster API views that read it.

Every membership change must bump ``RingVersion`` in the same transaction as the change, so a
node that sees a new version always reads the membership that goes with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import SUCCESS
from django.db import DatabaseError, transaction
from django.test import Client

from cacheapi import node as this_node
from cacheapi.settings import cluster_settings
from nodes.models import Node, RingVersion, load_ring
from nodes.ring import Ring, RingNode

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/nodes/node/"


class Boom(Exception):
    """Raised on purpose inside a transaction to prove what it rolls back."""


def make(name: str, **fields: Any) -> Node:
    fields.setdefault("url", f"http://{name}.example:8001")
    return Node.objects.create(name=name, **fields)


@pytest.fixture
def trio() -> list[Node]:
    """Three up nodes, a, b and c."""
    return [make(name) for name in ("a", "b", "c")]


def version() -> int:
    return RingVersion.current()


# -- RingVersion bumps with every membership change -------------------------------------------


def test_empty_registry_is_version_zero() -> None:
    assert version() == 0
    assert RingVersion.bump() == 1
    assert RingVersion.bump() == 2
    assert RingVersion.objects.count() == 1


def test_the_version_row_exists_after_migrate_so_bumps_only_update() -> None:
    # Nodes registering at once on a new PostgreSQL registry raced to create it (pk=1).
    assert RingVersion.objects.filter(pk=1, version=0).exists()


def test_a_bump_that_loses_the_race_to_create_the_row_still_counts(monkeypatch) -> None:
    from django.db.models import QuerySet

    # Another process created the row just after this one's update found none.
    RingVersion.objects.filter(pk=1).update(version=1)
    real_update = QuerySet.update
    calls = []

    def update_before_the_other_commit(self, **kwargs):
        calls.append(kwargs)
        return 0 if len(calls) == 1 else real_update(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", update_before_the_other_commit)
    assert RingVersion.bump() == 2  # the create fails (IntegrityError), the retry updates
    assert len(calls) == 2
    assert RingVersion.objects.count() == 1


def test_creating_a_node_bumps() -> None:
    make("a")
    assert version() == 1
    Node(name="b", url="http://b").save()
    assert version() == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("weight", 3),
        ("status", Node.Status.DOWN),
        ("status", Node.Status.DRAINING),
        ("status", Node.Status.JOINING),
        ("status", Node.Status.DISABLED),
        ("url", "http://elsewhere.example:9000"),
        ("name", "renamed"),
    ],
)
def test_changing_a_ring_field_bumps_once(field: str, value: Any) -> None:
    node = make("a")
    before = version()
    setattr(node, field, value)
    node.save()
    assert version() == before + 1
    assert getattr(Node.objects.get(pk=node.pk), field) == value
    node.save()  # saving again changes nothing
    assert version() == before + 1


def test_saving_a_reloaded_node_unchanged_does_not_bump() -> None:
    make("a", weight=2)
    before = version()
    node = Node.objects.get(name="a")
    node.weight = 2  # same value
    node.save()
    assert version() == before


def test_deleting_a_node_bumps() -> None:
    node = make("a")
    make("b")
    before = version()
    node.delete()
    assert version() == before + 1
    assert list(Node.objects.values_list("name", flat=True)) == ["b"]


def test_bulk_delete_bumps_once_and_only_when_rows_go() -> None:
    make("a")
    make("b")
    make("c")
    before = version()
    deleted, _ = Node.objects.filter(name__in=["a", "b"]).delete()
    assert deleted == 2
    assert version() == before + 1
    Node.objects.filter(name="nobody").delete()
    assert version() == before + 1
    assert not hasattr(Node.objects, "delete")  # no accidental Node.objects.delete()


def test_set_status_bumps_once_for_several_nodes(trio: list[Node]) -> None:
    before = version()
    changed = Node.objects.filter(name__in=["a", "b"]).set_status(Node.Status.DOWN)
    assert changed == 2
    assert version() == before + 1
    statuses = dict(Node.objects.values_list("name", "status"))
    assert statuses == {"a": "down", "b": "down", "c": "up"}


def test_set_status_skips_nodes_already_there(trio: list[Node]) -> None:
    Node.objects.filter(name="a").set_status(Node.Status.DOWN)
    before = version()
    assert Node.objects.all().set_status(Node.Status.DOWN) == 2  # b and c only
    assert version() == before + 1


def test_set_status_without_a_change_does_not_bump(trio: list[Node]) -> None:
    before = version()
    assert Node.objects.all().set_status(Node.Status.UP) == 0
    assert Node.objects.none().set_status(Node.Status.DOWN) == 0
    assert Node.objects.filter(name="nobody").set_status(Node.Status.DOWN) == 0
    assert version() == before


def test_heartbeat_bookkeeping_does_not_bump() -> None:
    node = make("a")
    before = version()
    node.last_heartbeat = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    node.consecutive_failures = 2
    node.last_stats = {"hits": 10, "misses": 1}
    node.save()
    node.consecutive_failures = 3
    node.save(update_fields=["last_heartbeat", "consecutive_failures", "last_stats"])
    assert version() == before
    stored = Node.objects.get(pk=node.pk)
    assert stored.consecutive_failures == 3
    assert stored.last_stats == {"hits": 10, "misses": 1}
    assert stored.last_heartbeat == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_heartbeat_on_a_partly_loaded_node_does_not_bump() -> None:
    """``.only()`` and ``refresh_from_db(fields=...)`` load a node with deferred fields."""
    make("a", weight=2)
    before = version()
    node = Node.objects.only("pk", "consecutive_failures").get(name="a")
    node.consecutive_failures = 4
    node.save(update_fields=["consecutive_failures"])
    node.refresh_from_db(fields=["weight"])
    assert node.weight == 2
    assert version() == before
    assert Node.objects.get(name="a").consecutive_failures == 4


def test_a_partly_loaded_node_still_bumps_on_a_ring_change() -> None:
    make("a")
    before = version()
    node = Node.objects.only("pk", "weight").get(name="a")
    node.weight = 5
    node.save(update_fields=["weight"])
    assert version() == before + 1


# -- "same transaction": the row and the version commit or roll back together ----------------


def test_a_rolled_back_weight_change_rolls_back_the_version() -> None:
    node = make("a")
    before = version()
    inside: list[int] = []

    def change_then_fail() -> None:
        with transaction.atomic():
            node.weight = 7
            node.save()
            inside.append(version())
            raise Boom

    with pytest.raises(Boom):
        change_then_fail()
    assert inside == [before + 1]  # bumped inside the transaction ...
    assert version() == before  # ... and rolled back with it
    assert Node.objects.get(pk=node.pk).weight == 1


def test_a_failed_bump_rolls_back_the_change(monkeypatch: pytest.MonkeyPatch) -> None:
    node = make("a")
    before = version()

    def broken_bump() -> int:
        raise DatabaseError("version row locked")

    monkeypatch.setattr(RingVersion, "bump", broken_bump)
    node.status = Node.Status.DOWN
    with pytest.raises(DatabaseError):
        node.save()
    with pytest.raises(DatabaseError):
        make("b")
    with pytest.raises(DatabaseError):
        Node.objects.filter(pk=node.pk).set_status(Node.Status.DISABLED)
    with pytest.raises(DatabaseError):
        node.delete()
    with pytest.raises(DatabaseError):
        Node.objects.all().delete()
    monkeypatch.undo()
    assert list(Node.objects.values_list("name", "status")) == [("a", "up")]
    assert version() == before


def test_rolled_back_create_set_status_and_delete() -> None:
    node = make("a")
    before = version()
    inside: list[int] = []

    def change_then_fail() -> None:
        with transaction.atomic():
            make("b")
            Node.objects.all().set_status(Node.Status.DRAINING)
            node.delete()
            inside.append(version())
            raise Boom

    with pytest.raises(Boom):
        change_then_fail()
    assert inside == [before + 3]
    assert version() == before
    assert list(Node.objects.values_list("name", "status")) == [("a", "up")]


# -- Node.register -----------------------------------------------------------------------------


def test_register_creates_a_joining_node() -> None:
    node = Node.register("n1", "http://127.0.0.1:8001")
    stored = Node.objects.get(name="n1")
    assert (stored.url, stored.status, stored.weight) == ("http://127.0.0.1:8001", "joining", 1)
    assert node.pk == stored.pk
    assert version() == 1


def test_register_updates_the_url_and_keeps_the_weight() -> None:
    make("n1", url="http://127.0.0.1:8001", weight=3)
    before = version()
    Node.register("n1", "http://10.0.0.5:8001")
    stored = Node.objects.get(name="n1")
    assert (stored.url, stored.status, stored.weight) == ("http://10.0.0.5:8001", "joining", 3)
    assert Node.objects.count() == 1
    assert version() == before + 1


def test_register_of_an_unchanged_joining_node_does_not_bump() -> None:
    make("n1", url="http://127.0.0.1:8001", status=Node.Status.JOINING)
    before = version()
    Node.register("n1", "http://127.0.0.1:8001")
    assert version() == before


def test_register_keeps_a_disabled_node_disabled() -> None:
    make("n1", url="http://127.0.0.1:8001", status=Node.Status.DISABLED, consecutive_failures=5)
    Node.register("n1", "http://127.0.0.1:8002")
    stored = Node.objects.get(name="n1")
    assert (stored.status, stored.url, stored.consecutive_failures) == (
        "disabled",
        "http://127.0.0.1:8002",
        0,
    )


@pytest.mark.parametrize("status", [Node.Status.DOWN, Node.Status.DRAINING, Node.Status.UP])
def test_register_brings_a_node_back_as_joining_and_resets_failures(status: str) -> None:
    # A (re)started node has an empty store: it joins, and goes up once it has its keys.
    make("n1", url="http://127.0.0.1:8001", status=status, consecutive_failures=4)
    before = version()
    Node.register("n1", "http://127.0.0.1:8001")
    stored = Node.objects.get(name="n1")
    assert (stored.status, stored.consecutive_failures) == ("joining", 0)
    assert version() == before + 1


# -- load_ring -----------------------------------------------------------------------------------


def test_load_ring_of_an_empty_registry() -> None:
    ring = load_ring(vnodes=16, replicas=2)
    assert (ring.version, ring.nodes, len(ring)) == (0, (), 0)


def test_load_ring_has_the_registry_version_members_and_weights() -> None:
    make("a", weight=1)
    make("b", weight=3, status=Node.Status.JOINING)
    make("c", status=Node.Status.DOWN)
    make("d", status=Node.Status.DRAINING)
    make("e", status=Node.Status.DISABLED)
    make("f", weight=0)
    ring = load_ring(vnodes=64, replicas=2)

    assert ring.version == version() == 6
    assert (ring.vnodes, ring.replicas) == (64, 2)
    assert [n.name for n in ring.nodes] == ["a", "b", "c", "d", "e", "f"]
    assert [n.name for n in ring.members] == ["a", "b"]
    assert ring.node("b") == RingNode("b", "http://b.example:8001", weight=3, status="joining")
    shares = ring.shares()
    assert set(shares) == {"a", "b"}
    assert shares["b"] == pytest.approx(0.75, abs=0.1)  # weight 3 of 4

    # The same placement as a ring built by hand from the same rows.
    expected = Ring(
        [RingNode("a", "http://a.example:8001"), RingNode("b", "http://b.example:8001", 3)],
        vnodes=64,
        replicas=2,
    )
    for i in range(200):
        key = f"key-{i}"
        assert [n.name for n in ring.owners(key)] == [n.name for n in expected.owners(key)]


def test_load_ring_follows_a_weight_change() -> None:
    make("a")
    node = make("b")
    before = load_ring(vnodes=32, replicas=1)
    node.weight = 4
    node.save()
    after = load_ring(vnodes=32, replicas=1)
    assert after.version == before.version + 1
    assert after.shares()["b"] > before.shares()["b"]


# -- the admin -----------------------------------------------------------------------------------


@pytest.fixture
def admin(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-unused")
    client.force_login(user)
    return client


def action(admin: Client, name: str, nodes: list[Node]) -> Any:
    return admin.post(
        CHANGELIST,
        {"action": name, "_selected_action": [n.pk for n in nodes], "index": "0"},
        follow=True,
    )


def messages_of(response: Any) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in response.context["messages"]]


def test_changelist_lists_nodes_with_status_weight_and_ring_version(admin: Client) -> None:
    make("alpha", weight=2)
    make("beta", status=Node.Status.DRAINING, weight=5)
    response = admin.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    rows = {n.name: (n.status, n.weight) for n in response.context["cl"].result_list}
    assert rows == {"alpha": ("up", 2), "beta": ("draining", 5)}
    assert re.search(r'<td class="field-status">draining</td>', html)
    assert re.search(r'name="form-\d-weight" value="5"', html)  # list_editable weight
    match = re.search(r'id="ring-version">Ring version <strong>(\d+)</strong>', html)
    assert match is not None
    assert int(match.group(1)) == version() == 2


def test_changelist_filters_by_status(admin: Client) -> None:
    make("a")
    make("b", status=Node.Status.DOWN)
    make("c", status=Node.Status.DOWN)
    make("d", status=Node.Status.DISABLED)
    response = admin.get(CHANGELIST, {"status__exact": "down"})
    assert response.status_code == 200
    assert [n.name for n in response.context["cl"].result_list] == ["b", "c"]


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        ("drain", Node.Status.UP, Node.Status.DRAINING),
        ("disable", Node.Status.UP, Node.Status.DISABLED),
        ("enable", Node.Status.DISABLED, Node.Status.JOINING),
    ],
)
def test_actions_move_nodes_and_bump_once(admin: Client, name: str, start: str, end: str) -> None:
    chosen = [make("a", status=start), make("b", status=start)]
    make("c", status=start)
    before = version()
    response = action(admin, name, chosen)
    assert response.status_code == 200
    assert dict(Node.objects.values_list("name", "status")) == {"a": end, "b": end, "c": start}
    assert version() == before + 1
    [(level, text)] = messages_of(response)
    assert level == SUCCESS
    assert "2 node(s)" in text
    assert f"ring version is now {before + 1}" in text


def test_drain_says_what_it_does(admin: Client) -> None:
    """Draining hands the keys off, then disables the node (nodes.migration)."""
    make("a")
    html = admin.get(CHANGELIST).content.decode()
    match = re.search(r'<option value="drain">([^<]*)</option>', html)
    assert match is not None, html
    description = match.group(1)
    assert "hand their keys" in description
    assert "disable" in description


def test_enable_brings_down_nodes_back_and_leaves_up_ones(admin: Client) -> None:
    nodes = [make("a"), make("b", status=Node.Status.DOWN)]
    before = version()
    response = action(admin, "enable", nodes)
    # Back in as joining: up once it pulled its keys (nodes.migration).
    assert dict(Node.objects.values_list("name", "status")) == {"a": "up", "b": "joining"}
    assert version() == before + 1
    assert "1 node(s)" in messages_of(response)[0][1]


def test_action_without_a_change_does_not_bump(admin: Client) -> None:
    nodes = [make("a", status=Node.Status.DRAINING)]
    before = version()
    response = action(admin, "drain", nodes)
    assert version() == before
    assert "0 node(s)" in messages_of(response)[0][1]


def test_admin_delete_selected_bumps(admin: Client) -> None:
    nodes = [make("a"), make("b")]
    make("c")
    before = version()
    response = admin.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [n.pk for n in nodes],
            "index": "0",
            "post": "yes",  # the confirmation page's answer
        },
        follow=True,
    )
    assert response.status_code == 200
    assert list(Node.objects.values_list("name", flat=True)) == ["c"]
    assert version() == before + 1


def change_form(node: Node, **changes: Any) -> dict[str, Any]:
    data = {"name": node.name, "url": node.url, "status": node.status, "weight": node.weight}
    return {**data, **changes, "_save": "Save"}


def test_change_form_weight_bumps(admin: Client) -> None:
    node = make("a")
    before = version()
    response = admin.post(f"{CHANGELIST}{node.pk}/change/", change_form(node, weight=4))
    assert response.status_code == 302, response.content
    assert Node.objects.get(pk=node.pk).weight == 4
    assert version() == before + 1


def test_change_form_without_a_change_does_not_bump(admin: Client) -> None:
    node = make("a", weight=2)
    before = version()
    response = admin.post(f"{CHANGELIST}{node.pk}/change/", change_form(node))
    assert response.status_code == 302, response.content
    assert version() == before


def test_change_form_rejects_a_bad_name(admin: Client) -> None:
    node = make("a")
    before = version()
    response = admin.post(f"{CHANGELIST}{node.pk}/change/", change_form(node, name="bad name"))
    assert response.status_code == 200  # the form again, with the error
    assert response.context["adminform"].form.errors["name"]
    assert Node.objects.get(pk=node.pk).name == "a"
    assert version() == before


def test_add_form_creates_and_bumps(admin: Client) -> None:
    before = version()
    response = admin.post(
        f"{CHANGELIST}add/",
        {"name": "n9", "url": "http://n9.example:8009", "status": "joining", "weight": 2},
    )
    assert response.status_code == 302, response.content
    stored = Node.objects.get(name="n9")
    assert (stored.status, stored.weight) == ("joining", 2)
    assert version() == before + 1


def test_list_editable_weight_saves_and_bumps(admin: Client) -> None:
    a, b, c = make("a"), make("b", weight=2), make("c")
    before = version()
    data = {
        "form-TOTAL_FORMS": "3",
        "form-INITIAL_FORMS": "3",
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for i, (node, weight) in enumerate([(a, 1), (b, 6), (c, 1)]):  # only b changes
        data[f"form-{i}-id"] = str(node.pk)
        data[f"form-{i}-weight"] = str(weight)
    response = admin.post(CHANGELIST, data)
    assert response.status_code == 302, response.content
    assert dict(Node.objects.values_list("name", "weight")) == {"a": 1, "b": 6, "c": 1}
    assert version() == before + 1


def test_ring_version_admin_is_read_only(admin: Client) -> None:
    RingVersion.bump()
    assert admin.get("/admin/nodes/ringversion/add/").status_code == 403
    assert admin.post("/admin/nodes/ringversion/add/", {"version": 9}).status_code == 403
    listing = admin.get("/admin/nodes/ringversion/")
    assert listing.status_code == 200
    assert b"Add ring version" not in listing.content
    assert admin.post("/admin/nodes/ringversion/1/change/", {"version": 9}).status_code == 403
    assert admin.post("/admin/nodes/ringversion/1/delete/", {"post": "yes"}).status_code == 403
    assert version() == 1


# -- the cluster API views read the registry -------------------------------------------------------


@pytest.fixture
def fresh_membership() -> Iterator[None]:
    """The node's ring is loaded lazily from the registry: start and end without one."""
    this_node.reset()
    yield
    this_node.reset()


def test_cluster_nodes_lists_every_node(api: Client, fresh_membership: None) -> None:
    beat = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
    make("a", weight=1, last_heartbeat=beat, last_stats={"hits": 3})
    make("b", weight=3, consecutive_failures=1)
    make("c", status=Node.Status.DOWN, consecutive_failures=3)
    response = api.get("/api/v1/cluster/nodes")
    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["version"] == version() == 3
    rows = {row["name"]: row for row in body["nodes"]}
    assert list(rows) == ["a", "b", "c"]
    assert rows["a"] == {
        "name": "a",
        "url": "http://a.example:8001",
        "status": "up",
        "weight": 1,
        "share": pytest.approx(0.25, abs=0.1),
        "last_heartbeat": beat.isoformat(),
        "consecutive_failures": 0,
        "stats": {"hits": 3},
    }
    assert rows["b"]["share"] == pytest.approx(0.75, abs=0.1)
    assert rows["a"]["share"] + rows["b"]["share"] == pytest.approx(1.0, abs=0.001)
    assert (rows["c"]["status"], rows["c"]["share"], rows["c"]["consecutive_failures"]) == (
        "down",
        0.0,
        3,
    )
    assert (rows["b"]["last_heartbeat"], rows["b"]["stats"]) == (None, {})


def test_cluster_ring_is_the_registry_ring(api: Client, fresh_membership: None) -> None:
    make("a", weight=2)
    make("b", status=Node.Status.DRAINING)
    response = api.get("/api/v1/cluster/ring")
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "version": 2,
        "replicas": cluster_settings.REPLICAS,
        "vnodes": cluster_settings.VNODES,
        "nodes": [
            {"name": "a", "url": "http://a.example:8001", "weight": 2, "status": "up"},
            {"name": "b", "url": "http://b.example:8001", "weight": 1, "status": "draining"},
        ],
    }
    assert response["X-Ring-Version"] == "2"


def test_cluster_ring_follows_the_registry_after_a_refresh(
    api: Client, fresh_membership: None
) -> None:
    node = make("a")
    assert json.loads(api.get("/api/v1/cluster/ring").content)["version"] == 1
    node.weight = 5
    node.save()
    # Loaded once and cached: the watcher (or a refresh) picks the change up, not each request.
    assert json.loads(api.get("/api/v1/cluster/ring").content)["version"] == 1
    assert this_node.current().membership.refresh() is True
    body = json.loads(api.get("/api/v1/cluster/ring").content)
    assert (body["version"], body["nodes"][0]["weight"]) == (2, 5)


def test_cluster_ring_of_an_empty_registry_is_this_node(
    api: Client, fresh_membership: None
) -> None:
    body = json.loads(api.get("/api/v1/cluster/ring").content)
    assert body["version"] == 0
    assert [n["name"] for n in body["nodes"]] == [cluster_settings.NODE_NAME]
