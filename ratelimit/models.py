"""Rules operators edit in the admin, picked up by every process without a restart.

``RateLimitRule`` rows join ``RATELIMIT["RULES"]`` in the middleware. Every save and delete
bumps ``RuleVersion`` (one row) in the same transaction; the middleware reads that one number
at most once every ``RULES_RELOAD_SECONDS`` and reloads the rules only when it moved (as the
nodes watch ``nodes.models.RingVersion``). If the database cannot be read, the last rules stay.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F

from ratelimit import algorithms, keys
from ratelimit.rates import parse_rate


class RuleVersion(models.Model):
    version = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "rule version"

    def __str__(self) -> str:
        return f"rule version {self.version}"

    @classmethod
    def current(cls) -> int:
        return cls.objects.filter(pk=1).values_list("version", flat=True).first() or 0

    @classmethod
    def bump(cls) -> None:
        with transaction.atomic():
            if not cls.objects.filter(pk=1).update(version=F("version") + 1):
                try:
                    with transaction.atomic():
                        cls.objects.create(pk=1, version=1)
                except IntegrityError:
                    cls.objects.filter(pk=1).update(version=F("version") + 1)


class RuleQuerySet(models.QuerySet["RateLimitRule"]):
    def delete(self) -> tuple[int, dict[str, int]]:
        with transaction.atomic():
            result = super().delete()
            RuleVersion.bump()
            return result

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def update(self, **kwargs: Any) -> int:
        with transaction.atomic():
            changed = super().update(**kwargs)
            if changed:
                RuleVersion.bump()
            return changed


class RateLimitRule(models.Model):
    ALGORITHMS = [(name, name.replace("_", " ")) for name in sorted(algorithms.ALGORITHMS)]

    name = models.CharField(max_length=100, help_text="What it protects; also its counter group.")
    path = models.CharField(max_length=200, default="/", help_text="Paths starting with this.")
    method = models.CharField(
        max_length=50, blank=True, help_text="Only these methods (comma-separated); all if blank."
    )
    rate = models.CharField(max_length=30, help_text='e.g. "100/m", "5/10s", "1000/h".')
    algorithm = models.CharField(max_length=20, choices=ALGORITHMS, default="fixed_window")
    key = models.CharField(
        max_length=200,
        default="ip",
        help_text="ip, user, user_or_ip, api_key, header:<name>, or a dotted path.",
    )
    burst = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Token bucket size (1 or more; blank: the rate's count).",
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RuleQuerySet.as_manager()

    class Meta:
        ordering = ["path", "name"]
        verbose_name = "rate limit rule"

    def __str__(self) -> str:
        return f"{self.name}: {self.rate} on {self.path}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            super().save(*args, **kwargs)
            RuleVersion.bump()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        with transaction.atomic():
            result = super().delete(*args, **kwargs)
            RuleVersion.bump()
        return result

    def clean(self) -> None:
        problems = {}
        for field, check in (
            ("rate", parse_rate),
            ("algorithm", algorithms.get),
            ("key", keys.check_key),
        ):
            try:
                check(getattr(self, field))
            except ValueError as exc:
                problems[field] = str(exc)
        if problems:
            raise ValidationError(problems)

    def as_rule(self) -> dict[str, Any]:
        """The rule as ``RATELIMIT["RULES"]`` spells one."""
        methods = [m.strip() for m in self.method.split(",") if m.strip()]
        return {
            "path": self.path,
            "rate": self.rate,
            "algorithm": self.algorithm,
            "key": self.key,
            "method": methods or None,
            "burst": self.burst,
            "group": f"admin:{self.pk}",
        }
