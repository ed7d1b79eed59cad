"""The registry in the Django admin: operators add, weight, drain, disable and enable nodes.

Every change that moves the ring bumps the ring version in the same transaction (see
``nodes.models``); nodes pick the new ring up within a second or so.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from nodes.models import Node, RingVersion


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "url", "status", "weight", "last_heartbeat", "consecutive_failures"]
    list_filter = ["status"]
    list_editable = ["weight"]
    search_fields = ["name", "url"]
    readonly_fields = [
        "last_heartbeat",
        "consecutive_failures",
        "last_stats",
        "created_at",
        "updated_at",
    ]
    actions = ["drain", "disable", "enable"]

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "url":
            kwargs["assume_scheme"] = "http"  # local clusters speak http unless TLS is set up
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        extra_context = {**(extra_context or {}), "ring_version": RingVersion.current()}
        return super().changelist_view(request, extra_context)

    def _move(self, request: HttpRequest, queryset: QuerySet[Node], status: str, verb: str) -> None:
        changed = queryset.set_status(status)  # type: ignore[attr-defined]
        self.message_user(
            request,
            f"{verb} {changed} node(s); ring version is now {RingVersion.current()}.",
            messages.SUCCESS,
        )

    @admin.action(
        description="Drain selected nodes (hand their keys to the other nodes, then disable)"
    )
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._move(request, queryset, Node.Status.DRAINING, "Draining")

    @admin.action(description="Disable selected nodes (out of the ring until enabled)")
    def disable(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._move(request, queryset, Node.Status.DISABLED, "Disabled")

    @admin.action(
        description="Enable selected nodes (back into the ring: joining, up once they "
        "pulled their keys)"
    )
    def enable(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        in_ring = [Node.Status.UP, Node.Status.JOINING]
        self._move(request, queryset.exclude(status__in=in_ring), Node.Status.JOINING, "Enabled")


@admin.register(RingVersion)
class RingVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
