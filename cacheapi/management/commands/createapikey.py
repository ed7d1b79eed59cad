"""``manage.py createapikey --name N --scopes read,write,admin``: prints the new key once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cacheapi.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key and print it once (only its salted hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", default="read,write", help="comma-separated: read,write,admin"
        )
        parser.add_argument("--quiet", action="store_true", help="print only the key")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key, raw = ApiKey.create_key(options["name"], options["scopes"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["quiet"]:
            self.stdout.write(raw)
            return
        self.stdout.write(f"API key {key.name!r} with scopes {key.scopes}:")
        self.stdout.write(f"  {raw}")
        self.stdout.write("Store it now: it is not shown again.")
