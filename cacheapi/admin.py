"""API keys in the admin: created with a form, shown once, revocable."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from cacheapi.api.auth import key_cache
from cacheapi.models import SCOPES, ApiKey


class ApiKeyForm(forms.ModelForm):
    scope_choices = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["read", "write"],
        label="Scopes",
    )

    class Meta:
        model = ApiKey
        fields = ["name"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["scope_choices"].initial = sorted(self.instance.scope_set)

    def save(self, commit: bool = True) -> ApiKey:
        key = super().save(commit=False)
        chosen = self.cleaned_data["scope_choices"]
        key.scopes = ",".join(s for s in SCOPES if s in chosen)
        if commit:
            key.save()
        return key


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "prefix", "scopes", "created_at", "revoked_at", "active"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "revoked_at"]
    actions = ["revoke"]

    @admin.display(boolean=True)
    def active(self, obj: ApiKey) -> bool:
        return obj.is_active

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            obj._raw_key = obj.set_new_secret()  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)
        key_cache.clear()

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: Any = None
    ) -> HttpResponse:
        # Show the raw key on this one page only: it is not stored and never shown again.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": obj,
            "raw_key": getattr(obj, "_raw_key", ""),
            "title": "API key created",
        }
        return TemplateResponse(request, "admin/cacheapi/apikey/created.html", context)

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key.revoke()
            count += 1
        key_cache.clear()
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)

    def delete_model(self, request: HttpRequest, obj: ApiKey) -> None:
        super().delete_model(request, obj)
        key_cache.clear()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        super().delete_queryset(request, queryset)
        key_cache.clear()
