"""API keys: stored as a salted hash, scoped, revocable. The raw key is shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import models
from django.utils import timezone

SCOPES = ("read", "write", "admin")
PREFIX_CHARS = 12


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A key is ``<prefix>.<secret>``: the prefix finds the row, the secret is checked against
    a salted SHA-256 (keys are 256-bit random, so a slow password hash would add nothing)."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_CHARS, unique=True, editable=False)
    salt = models.CharField(max_length=32, editable=False)
    hashed = models.CharField(max_length=64, editable=False)
    scopes = models.CharField(
        max_length=50, default="read,write", help_text="Comma-separated: read, write, admin."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.scopes.split(",") if s.strip())

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def set_new_secret(self) -> str:
        """Give the key a fresh prefix and secret; returns the raw key (never stored)."""
        self.prefix = secrets.token_hex(PREFIX_CHARS // 2)
        secret = secrets.token_urlsafe(32)
        self.salt = secrets.token_hex(16)
        self.hashed = _hash(self.salt, secret)
        return f"{self.prefix}.{secret}"

    def check_secret(self, secret: str) -> bool:
        return hmac.compare_digest(self.hashed, _hash(self.salt, secret))

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])

    @classmethod
    def create_key(cls, name: str, scopes: str | list[str] = "read,write") -> tuple[ApiKey, str]:
        if isinstance(scopes, str):
            scopes = [s.strip() for s in scopes.split(",") if s.strip()]
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
        key = cls(name=name, scopes=",".join(s for s in SCOPES if s in scopes))
        raw = key.set_new_secret()
        key.save()
        return key, raw
