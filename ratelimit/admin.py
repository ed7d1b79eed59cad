"""Rate limit rules in the Django admin: changes reach every process within about a second."""

from __future__ import annotations

from django.contrib import admin

from ratelimit.models import RateLimitRule


@admin.register(RateLimitRule)
class RateLimitRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "path", "method", "rate", "algorithm", "key", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["enabled", "algorithm"]
    search_fields = ["name", "path"]
