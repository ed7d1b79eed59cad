from typing import Any

from django.apps import AppConfig


class CacheApiConfig(AppConfig):
    name = "cacheapi"
    verbose_name = "Cache API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import cacheapi.api.schema  # noqa: F401 - registers the OpenAPI extensions
        from cacheapi import checks  # noqa: F401 - registers the system checks
        from cacheapi.metrics import register_collector

        register_collector(_current_node)


def _current_node() -> Any:
    from cacheapi.node import current

    return current()
