"""The node registry: which nodes form the ring, and a version that changes with it.

Every change that affects the ring (a node added, removed, re-weighted, moved between statuses,
or given a new URL) bumps ``RingVersion`` in the same transaction, so a node that sees a new
version is guaranteed to read the membership that goes with it. Heartbeat bookkeeping (last
heartbeat, failures, stats) does not bump it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Self

from django.core.validators import RegexValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F

from nodes.ring import Ring, RingNode

RING_FIELDS = ("name", "url", "status", "weight")


class RingVersion(models.Model):
    """A single row (pk=1) whose ``version`` every node polls; cheap to read."""

    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "ring version"

    def __str__(self) -> str:
        return f"ring version {self.version}"

    @classmethod
    def current(cls) -> int:
        return cls.objects.filter(pk=1).values_list("version", flat=True).first() or 0

    @classmethod
    def bump(cls) -> int:
        """Increment the version; call inside the transaction that changes the membership."""
        with transaction.atomic():
            if not cls.objects.filter(pk=1).update(version=F("version") + 1):
                try:  # the row is made by a migration; this is for a registry emptied by hand
                    with transaction.atomic():
                        cls.objects.create(pk=1, version=1)
                except IntegrityError:  # another process created it meanwhile
                    cls.objects.filter(pk=1).update(version=F("version") + 1)
            return cls.current()


class NodeQuerySet(models.QuerySet["Node"]):
    def set_status(self, status: str) -> int:
        """Move every node in the queryset to ``status``; one version bump for all."""
        with transaction.atomic():
            changed = self.exclude(status=status).update(status=status)
            if changed:
                RingVersion.bump()
            return changed

    def delete(self) -> tuple[int, dict[str, int]]:
        """Bulk delete (the admin's "delete selected" action) bumps the version too."""
        with transaction.atomic():
            deleted, per_model = super().delete()
            if deleted:
                RingVersion.bump()
            return deleted, per_model

    # As on QuerySet.delete: never copied to the manager (no ``Node.objects.delete()``).
    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


class Node(models.Model):
    class Status(models.TextChoices):
        JOINING = "joining", "joining"
        UP = "up", "up"
        DRAINING = "draining", "draining"
        DOWN = "down", "down"
        DISABLED = "disabled", "disabled"

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", "letters, digits, _ . -")],
    )
    url = models.URLField(max_length=200, help_text="How clients and peers reach the node.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UP)
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of the ring relative to other nodes (0 = owns nothing)."
    )
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_stats = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            bump = self._state.adding or self.ring_changed()
            super().save(*args, **kwargs)
            if bump:
                RingVersion.bump()
        self._ring_state = self._current_ring_state()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        with transaction.atomic():
            result = super().delete(*args, **kwargs)
            RingVersion.bump()
        return result

    @classmethod
    def from_db(
        cls,
        db: str | None,
        field_names: Collection[str],
        values: Collection[Any],
        **kwargs: Any,
    ) -> Self:
        # **kwargs: newer Django adds keyword-only arguments (fetch_mode); pass them through.
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._ring_state = instance._current_ring_state()
        return instance

    def _current_ring_state(self) -> tuple[Any, ...]:
        # __dict__, not getattr: reading a deferred field would load it, and loading calls
        # from_db again (infinite recursion under .only(), .defer(), refresh_from_db(fields=)).
        return tuple(self.__dict__.get(f) for f in RING_FIELDS)

    def ring_changed(self) -> bool:
        return getattr(self, "_ring_state", None) != self._current_ring_state()

    def ring_node(self) -> RingNode:
        return RingNode(name=self.name, url=self.url, weight=self.weight, status=self.status)

    @classmethod
    def register(cls, name: str, url: str) -> Node:
        """A starting node adds itself, or updates its row, as ``joining``: it owns keys it
        does not have yet, and goes ``up`` itself once it pulled them (``nodes.migration``).
        A disabled node stays disabled."""
        with transaction.atomic():
            node: Node | None = cls.objects.select_for_update().filter(name=name).first()
            if node is None:
                node = cls(name=name, url=url, status=cls.Status.JOINING)
            else:
                node.url = url
                if node.status != cls.Status.DISABLED:
                    node.status = cls.Status.JOINING
                node.consecutive_failures = 0
            node.save()
        return node


def build_ring(nodes: Iterable[Node], *, version: int, vnodes: int, replicas: int) -> Ring:
    return Ring([n.ring_node() for n in nodes], vnodes=vnodes, replicas=replicas, version=version)


def load_ring(*, vnodes: int, replicas: int) -> Ring:
    """Read the version, then the membership (in that order, no transaction needed).

    A change committed between the two reads gives nodes newer than the version they are
    labelled with; the next poll sees a newer version and reloads, so the view converges. The
    other order could label old nodes with a new version and never reload."""
    version = RingVersion.current()
    return build_ring(Node.objects.all(), version=version, vnodes=vnodes, replicas=replicas)
